"""WSGI entry point for gunicorn: ``gunicorn fleet.gateway.wsgi:app``."""

from fleet.gateway import create_app

app = create_app()
