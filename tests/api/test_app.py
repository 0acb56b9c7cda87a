"""The app's own settings: how many threads run its sync routes at once."""

from __future__ import annotations

import anyio.to_thread
from fastapi.testclient import TestClient

from labelloop.api.app import create_app
from labelloop.runtime import Runtime


def threads_now() -> float:
    return anyio.to_thread.current_default_thread_limiter().total_tokens


def test_the_routes_run_in_as_many_threads_as_the_settings_say(rt: Runtime) -> None:
    rt.settings.api_threads = 7
    with TestClient(create_app(rt, manage_jobs=False)) as client:
        assert client.portal is not None
        assert client.portal.call(threads_now) == 7
        assert client.get("/health").status_code == 200
