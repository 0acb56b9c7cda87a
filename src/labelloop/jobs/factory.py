"""Choosing the job backend from the settings."""

from __future__ import annotations

from labelloop.jobs.base import JobBackend
from labelloop.runtime import Runtime


def make_backend(rt: Runtime) -> JobBackend:
    """``local`` (embedded default: worker processes beside the API) or ``celery`` (cluster)."""
    # Each backend is imported only when chosen: Celery and kombu stay out of an embedded server,
    # the local process pool out of a cluster's API.
    if rt.settings.jobs == "celery":
        from labelloop.jobs.celery_backend import CeleryJobs

        return CeleryJobs(rt)
    from labelloop.jobs.local import LocalJobs

    return LocalJobs(rt)
