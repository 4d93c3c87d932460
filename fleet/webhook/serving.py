"""The receiver is served like every HTTP service of the fleet: :mod:`fleet.core.serving`.

Kept as a gunicorn config module of its own name (``gunicorn -c python:fleet.webhook.serving
webhook_app:app``), re-exporting the one setup's settings.
"""

from __future__ import annotations

from fleet.core.serving import (
    OPTIONS,
    access_log_format,
    graceful_timeout,
    keepalive,
    limit_request_field_size,
    limit_request_fields,
    limit_request_line,
    timeout,
    worker_class,
    worker_connections,
)

__all__ = ["OPTIONS", "access_log_format", "graceful_timeout", "keepalive",
           "limit_request_field_size", "limit_request_fields", "limit_request_line", "timeout",
           "worker_class", "worker_connections"]
