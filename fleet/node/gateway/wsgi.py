"""WSGI entry point for gunicorn: ``gunicorn -c python:fleet.core.serving
fleet.node.gateway.wsgi:app`` (the node's unit), behind the request limits every fleet service has
(:mod:`fleet.core.serving`)."""

from fleet.core.serving import limited
from fleet.node.gateway import create_app

app = limited(create_app())
