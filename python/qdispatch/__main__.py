"""``python -m qdispatch`` is the ``qdispatch`` command."""

import sys

from .cli import main

sys.exit(main())
