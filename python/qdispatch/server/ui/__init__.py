"""The web dashboard's assets and its logins: Jinja2 templates (``templates/``), the
stylesheet and the small vanilla scripts the pages load (``static/``), shipped in the
package (no build step), :class:`~qdispatch.server.ui.logins.Logins`, who is logged in
(and :class:`~qdispatch.server.ui.logins.LoginThrottle`, failed logins per address), and
:class:`~qdispatch.server.ui.counts.CountsCache`, the histograms' answers.

The routes are in :mod:`qdispatch.server.routes.ui`; docs/service.md, "The dashboard",
describes what the pages show and how a login is kept.
"""

from __future__ import annotations

from pathlib import Path

#: Where the page templates are.
TEMPLATES = Path(__file__).parent / "templates"
#: Where the stylesheet and scripts are (served under ``/ui/static``).
STATIC = Path(__file__).parent / "static"
