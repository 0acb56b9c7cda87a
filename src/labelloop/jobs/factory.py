"""Choosing the job backend from the settings."""

from __future__ import annotations

from labelloop.errors import ConfigError
from labelloop.jobs.base import JobBackend
from labelloop.runtime import Runtime


def make_backend(rt: Runtime) -> JobBackend:
    if rt.settings.jobs == "celery":
        raise ConfigError("the celery job backend is not available in this build")
    from labelloop.jobs.local import LocalJobs

    return LocalJobs(rt)
