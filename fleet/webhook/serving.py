"""How gunicorn serves the receiver: gevent workers with timeouts, so slow clients cannot stop it.

A gunicorn config module (``gunicorn -c python:fleet.webhook.serving 'fleet.webhook:create_app()'``)
whose settings :data:`OPTIONS` also hands to :class:`fleet.serving.FactoryServer`.

Why gevent: a sync worker serves one connection at a time and a ``gthread`` worker gives each
connection a thread as soon as its first bytes arrive, with no deadline for the rest of the
request; clients that send half a request (slowloris) hold every worker or thread, and
``/healthz`` stops answering. A gevent worker waits for each connection in a greenlet (up to
``worker_connections`` at once per worker) and, with ``keepalive`` set, drops a connection
whose request line and headers are not complete within ``keepalive`` seconds. The web workers
only check, enqueue and read (short SQLite transactions); deploys run in their own process,
never in a web worker (a blocking call there would stall every connection of the worker).

- ``timeout``: a worker whose event loop is stuck this long is killed and replaced;
- ``graceful_timeout``: on restart (``HUP``, a deploy), requests in flight get this long;
- ``keepalive``: the deadline for a request's line and headers, and how long an idle
  keep-alive connection stays open.
"""

from __future__ import annotations

from typing import Any

worker_class = "gevent"
worker_connections = 1000
timeout = 30
graceful_timeout = 20
keepalive = 5

OPTIONS: dict[str, Any] = {
    "worker_class": worker_class,
    "worker_connections": worker_connections,
    "timeout": timeout,
    "graceful_timeout": graceful_timeout,
    "keepalive": keepalive,
}
