"""``webhook_app:app`` (what an operator's own gunicorn serves) has the request limits every
HTTP service of the fleet has (:func:`fleet.core.serving.limited`)."""

from __future__ import annotations

import importlib
import sys

from fleet.webhook.config import Settings


def test_the_webhook_entry_point_answers_an_over_long_request_line_in_json(
        settings: Settings) -> None:
    sys.modules.pop("webhook_app", None)
    webhook_app = importlib.import_module("webhook_app")  # settings from the environment
    response = webhook_app.app.test_client().get("/healthz?x=" + "a" * 5000)
    assert response.status_code == 414
    assert response.get_json()["error"] == "request line is 5024 bytes, over the limit of 4094"
