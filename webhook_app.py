"""WSGI entry point of the deploy webhook receiver: ``gunicorn -c python:fleet.webhook.serving
webhook_app:app`` (the one server setup, :mod:`fleet.core.serving`).

Settings come from the environment (``FLEET_WEBHOOK_SECRET``, ``FLEET_REPO_URL``, ...) or the
file named by ``FLEET_WEBHOOK_CONFIG``; ``fleet webhook serve`` checks them before starting.
The web workers only enqueue and read runs: the first one to find no dispatcher starts
``fleet webhook dispatch`` (``fleet webhook serve`` starts it itself), which runs the deploys.
"""

from fleet.core.serving import limited
from fleet.webhook import create_app

app = limited(create_app())  # the request limits every HTTP service of the fleet has
