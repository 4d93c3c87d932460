"""A schedule's oneshot service on the agent's node (``python3 -m fleet.node.schedule``,
started by the schedule's timer or by ``fleet work run-now``): posts the schedule's prompt as
a signed ``request`` into the agent's own inbox.

The request goes through the agent's own gateway (its outbox, signed with the agent's bus key
by :class:`bus.client.BusClient`), to the agent itself: its inbox receives it from the agent,
and its runtime answers it like any request. With a capability the payload names it, and the
built-in runtime routes the request to a healthy agent with that capability, never itself
(:meth:`fleet.node.runtime.loop.Runtime.routes`), answering with that agent's answer.

Settings from the unit's environment: ``FLEET_AGENT``, ``FLEET_BUS_PRIVATE_KEY`` (the env
file), ``FLEET_GATEWAY_URL``, ``FLEET_SCHEDULE``, ``FLEET_SCHEDULE_PROMPT`` and optionally
``FLEET_SCHEDULE_CAPABILITY``. The message id is derived from systemd's ``INVOCATION_ID``, so
retries of one run queue one request; a gateway that is restarting is retried for about a
minute.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any

from bus.client import BusClient
from fleet.core.errors import USER_ERRORS, FleetError
from fleet.core.schedules import NAME_FORM, NAME_RE, prompt_problem

SEND_RETRIES = 30  # BusClient.send backs off to 2 s: about a minute in all


def payload(schedule: str, prompt: str, capability: str | None) -> dict[str, Any]:
    """The request's payload: the prompt (what the runtime asks its model), the schedule it
    comes from and, when set, the capability it is routed by."""
    body: dict[str, Any] = {"prompt": prompt, "schedule": schedule}
    if capability:
        body["capability"] = capability
    return body


def message_id(schedule: str, invocation: str | None) -> str:
    """``schedule-NAME-RUN``: RUN is systemd's invocation id of this run (a new UUID
    outside systemd)."""
    run = invocation if invocation and invocation.isalnum() and len(invocation) <= 64 \
        else uuid.uuid4().hex
    return f"schedule-{schedule}-{run}"


def post(env: Mapping[str, str]) -> dict[str, Any]:
    """Queue the schedule's request to the agent itself; the gateway's answer."""
    schedule = env.get("FLEET_SCHEDULE", "")
    prompt = env.get("FLEET_SCHEDULE_PROMPT", "")
    if not NAME_RE.fullmatch(schedule):
        raise FleetError(f"FLEET_SCHEDULE {schedule!r} is not a schedule name ({NAME_FORM})",
                         hint="Run it from the schedule's unit (deployed by `fleet deploy`).")
    problem = prompt_problem(prompt)
    if problem:
        raise FleetError(f"FLEET_SCHEDULE_PROMPT {problem}",
                         hint="Run it from the schedule's unit (deployed by `fleet deploy`).")
    ident = message_id(schedule, env.get("INVOCATION_ID"))
    with BusClient.from_env(env) as me:
        queued = me.send(me.agent, "request",
                         payload(schedule, prompt, env.get("FLEET_SCHEDULE_CAPABILITY") or None),
                         retries=SEND_RETRIES, id=ident, correlation_id=ident,
                         reply_to=me.agent)
    return {**queued, "id": ident, "agent": me.agent}


def main(env: Mapping[str, str] | None = None) -> int:
    """Post the request; one line on stdout (the journal), or the error on stderr and 1."""
    try:
        done = post(os.environ if env is None else env)
    except USER_ERRORS as exc:
        print(f"fleet schedule: {exc}", file=sys.stderr)
        return 1
    print(f"schedule {done['id']}: request queued for {done['agent']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
