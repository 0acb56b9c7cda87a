"""The HTTP API (FastAPI); routes are thin and call :mod:`labelloop.service`."""
