"""The job manager (its modules follow, one per documented class)."""

from .managedjobset import IBMQJobManager, ManagedJob, ManagedJobSet, ManagedResults

__all__ = ["IBMQJobManager", "ManagedJob", "ManagedJobSet", "ManagedResults"]
