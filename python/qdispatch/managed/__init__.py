"""The job manager: ``IBMQJobManager``, ``ManagedJobSet``, ``ManagedJob``, ``ManagedResults``,
one module each (as the IBMQ provider's ``managed`` package has them).

Hand it 100,000 circuits: it splits them into jobs of at most the backend's
``max_circuits`` (and of at most the service's request size), serializes every chunk,
submits the chunks concurrently (the native client releases the GIL; a chunk refused for
the user's active-job limit waits for a job to finish and goes on), follows all jobs on the
one pushed status stream, fetches each result as soon as its job finishes, and presents
them as one result.

**How a set is found again.** Every job of a set carries the tags

- ``qdispatch_jobset:<set id>``,
- ``qdispatch_job:<job index>:<first experiment>:<number of experiments>``,
- ``qdispatch_jobset_size:<number of jobs>:<number of experiments>``,

and is named ``<set name>_<job index>_``. ``retrieve_job_set(set_id, service)`` rebuilds
the set from the service alone, in any process, including chunks that failed or were
cancelled (a chunk that was resubmitted is represented by its newest job).
"""

from .ibmqjobmanager import IBMQJobManager
from .managedjob import ManagedJob
from .managedjobset import ManagedJobSet
from .managedresults import ManagedResults
from .utils import JOB_TAG, SET_TAG, SIZE_TAG

__all__ = [
    "JOB_TAG",
    "SET_TAG",
    "SIZE_TAG",
    "IBMQJobManager",
    "ManagedJob",
    "ManagedJobSet",
    "ManagedResults",
]
