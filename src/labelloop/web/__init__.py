"""The dashboard and the labelling page: static files served by the app under ``/ui/``."""
