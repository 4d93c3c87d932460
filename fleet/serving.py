"""Run a Flask app factory under gunicorn from a ``fleet ... serve`` command."""

from __future__ import annotations

import importlib
from typing import Any

from gunicorn.app.base import BaseApplication


class FactoryServer(BaseApplication):
    """gunicorn calling ``module:factory()`` in each worker.

    No preload: the gateway's bus starts background threads when the app is created, and
    each worker needs its own. ``options`` are gunicorn settings by name; the webhook
    receiver's worker model is :data:`fleet.webhook.serving.OPTIONS`.
    """

    def __init__(self, factory: str, options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        """Hand the options to gunicorn."""
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        """Build the app (in each worker)."""
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)()
