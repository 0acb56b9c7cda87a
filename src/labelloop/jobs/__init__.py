"""One jobs interface, two backends: local worker processes (embedded default) and Celery."""
