"""WSGI entry point for gunicorn: ``gunicorn -c python:fleet.serving fleet.gateway.wsgi:app``
(the node's unit), behind the request limits every fleet service has (:mod:`fleet.serving`)."""

from fleet.gateway import create_app
from fleet.serving import limited

app = limited(create_app())
