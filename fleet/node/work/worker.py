"""The worker's side of autonomous work: a ``work.item`` from the orchestrator runs the
repository loop (:func:`fleet.node.work.repo_loop.work_on`) in a thread beside the runtime.

The item must come from the registry's orchestrator and be well formed
(:func:`fleet.node.work.messages.read_order`: its ``git_url`` one of the registry's sources);
one item runs at a time, and another offered meanwhile is answered ``busy`` (the orchestrator
keeps it queued). The tests run in the agent's sandbox (:func:`sandbox_tests`), the pull
request is opened through the source's forge client (:class:`ForgeProposals`) with the token
the source's ``token:`` names, read from the agent's environment. Each timeline event goes back
to the orchestrator as a signed ``work.event``, the end as a ``work.outcome``; sending them
through the agent's own gateway makes them durable (its outbox retries delivery).

The item a worker took is kept in its state dir (:data:`CURRENT_FILE`, 0600) until its outcome
is queued: a runtime killed midway (kill -9, a crash, a stop) resumes it when it starts again
(:meth:`Worker.resume`): the next attempt starts from the branch it pushed and finds the pull
request it opened, so an issue never gets two. An item the runtime died on
:data:`MAX_RESUMES` times fails with that reason instead of killing it again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bus.validate import expired
from fleet.core.atomic import write_atomic
from fleet.core.registry import Registry
from fleet.core.work_config import WorkSource
from fleet.node.provider import Provider
from fleet.node.work import sandbox
from fleet.node.work.forges import open_forge
from fleet.node.work.forges.base import Forge, ForgeError
from fleet.node.work.items import WORK_ID_RE
from fleet.node.work.messages import (
    EVENT,
    OUTCOME,
    ItemOrder,
    WorkMessageError,
    event_payload,
    outcome_payload,
    read_order,
)
from fleet.node.work.repo_loop import (
    Bounds,
    Git,
    Outcome,
    RunTests,
    SuiteRun,
    basic_auth_header,
    work_on,
)

log = logging.getLogger("fleet.node.work.worker")
CURRENT_FILE = "work-current.json"
"""The item being worked on: ``{"from", "payload", "resumes"}``, in the agent's state dir."""
MAX_RESUMES = 2
MAX_CURRENT_BYTES = 256 * 1024
"""Read up to this much of :data:`CURRENT_FILE`: more than the largest item
:func:`~fleet.node.work.messages.read_order` lets through, as JSON escapes it (an 8192-character
body outside the BMP takes 12 bytes a character, about 100 KiB)."""


class Sender(Protocol):
    """What the worker needs of a bus client signing as its agent."""

    def send(self, to: str | None, type: str, payload: Any, retries: int = 3,
             **options: Any) -> dict[str, Any]: ...


class ForgeProposals:
    """The repository loop's :class:`~fleet.node.work.repo_loop.Proposals` over a forge
    client: the open pull request of a branch (found before one is opened), issue comments."""

    def __init__(self, forge: Forge) -> None:
        self.forge = forge

    def propose(self, branch: str, base: str, title: str, body: str) -> str:
        return self.forge.open_pull_request(branch, base, title, body).url

    def commented(self, issue_number: int, body: str) -> bool:
        """Whether the issue has ``body`` already; a list the client cannot read (too large,
        not a list) counts as no: the pull request is open, its link is worth a second
        comment rather than a failed item."""
        try:
            return self.forge.has_comment(issue_number, body)
        except ForgeError as exc:
            log.warning("could not list the comments of issue #%d: %s", issue_number, exc)
            return False

    def comment(self, issue_number: int, body: str) -> None:
        self.forge.comment(issue_number, body)


def sandbox_tests(state_dir: Path, agent: str) -> RunTests:
    """Runs the test command of a work tree under ``state_dir`` in ``agent``'s sandbox."""

    def run(tree: Path) -> SuiteRun:
        try:
            result = sandbox.run_tests(str(tree.relative_to(state_dir)), agent=agent)
        except (sandbox.SandboxError, ValueError) as exc:
            return SuiteRun(False, "refused", str(exc))
        return SuiteRun(result.passed, result.status, result.output)

    return run


@dataclass
class Worker:
    """The work items of one agent: at most one at a time, each in a thread of its own."""

    agent: str
    registry: Registry
    state_dir: Path
    provider: Provider
    sender: Callable[[], Sender]
    """A new bus client signing as the agent (the item's thread sends through its own)."""
    env: Mapping[str, str]
    soul: Callable[[], str] = lambda: ""
    run_tests: RunTests | None = None
    """How tests run (default: the agent's sandbox)."""
    forge_options: dict[str, Any] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    current: str | None = None
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def offer(self, message: dict[str, Any]) -> dict[str, Any]:
        """The answer to a ``work.item`` message: ``accepted`` (its loop started), ``busy``
        or ``refused`` with the reason."""
        orchestrators = [agent.name for agent in self.registry.by_role("orchestrator")]
        if message.get("from") not in orchestrators:
            log.warning("work.item from %s refused: only the orchestrator sends work",
                        message.get("from"))
            return {"refused": f"only the orchestrator ({', '.join(orchestrators)}) sends "
                               "work items"}
        if message.get("timestamp") and expired(message):
            return {"refused": f"the work item came too late (ttl {message.get('ttl')} s): "
                               "the orchestrator gave up waiting"}
        try:
            order, source = read_order(message.get("payload"), self.registry.work)
        except WorkMessageError as exc:
            log.warning("work.item from %s refused: %s", message.get("from"), exc)
            return {"refused": str(exc)}
        with self._lock:
            if self.current is not None:
                return {"busy": self.current}
            self.current = order.item
        try:
            self.keep(message["from"], order.payload(), 0)
            return self.start(order, source, str(message["from"]))
        except BaseException:
            with self._lock:
                self.current = None
            raise

    def resume(self) -> str | None:
        """Take up again the item the runtime was working on when it died (the id), or fail
        it after :data:`MAX_RESUMES`; nothing when there was none. Run once, as the runtime
        starts."""
        kept = self.kept()
        if kept is None:
            return None
        sender, payload, resumes = kept
        if sender not in [agent.name for agent in self.registry.by_role("orchestrator")]:
            self.forget()
            return None
        try:
            order, source = read_order(payload, self.registry.work)
        except WorkMessageError as exc:  # the registry changed meanwhile: report why
            item = payload.get("item") if isinstance(payload, dict) else None
            if isinstance(item, str) and WORK_ID_RE.fullmatch(item):
                self.report(sender, item, Outcome("failed", f"not resumed: {exc}"))
            else:
                self.forget()
            return None
        if resumes >= MAX_RESUMES:
            self.report(sender, order.item, Outcome(
                "failed", f"{self.agent}'s runtime stopped {resumes + 1} times during this "
                          "item; it was not resumed again"))
            return order.item
        if not self.env.get(source.token, ""):  # it could not start: say so, not 'resumed'
            self.report(sender, order.item, Outcome("failed",
                                                    f"not resumed: {self.no_token(source)}"))
            return None
        with self._lock:
            if self.current is not None:
                return None
            self.current = order.item
        try:
            self.keep(sender, order.payload(), resumes + 1)
            client = self.sender()
            self.send(client, sender, EVENT, event_payload(order.item, "resumed", {
                "agent": self.agent, "resumes": resumes + 1}))
            self.start(order, source, sender)
        except BaseException:
            with self._lock:
                self.current = None
            raise
        return order.item

    def start(self, order: ItemOrder, source: WorkSource, orchestrator: str) -> dict[str, Any]:
        """Run ``order``'s loop in a thread of its own (the slot is taken already)."""
        token = self.env.get(source.token, "")
        if not token:
            self.forget()
            with self._lock:
                self.current = None
            return {"refused": self.no_token(source)}
        forge = open_forge(source, token, **self.forge_options)
        work = self.registry.work
        assert work is not None  # read_order checked it
        bounds = Bounds(work.max_steps, work.max_minutes)
        git = Git.for_item(self.state_dir, order.item, basic_auth_header(source.forge, token))

        def run() -> None:
            client = self.sender()
            try:
                outcome = work_on(
                    order.task(), self.state_dir, provider=self.provider,
                    proposals=ForgeProposals(forge),
                    run_tests=self.run_tests or sandbox_tests(self.state_dir, self.agent),
                    events=lambda kind, detail: self.send(client, orchestrator, EVENT,
                                                          event_payload(order.item, kind,
                                                                        detail)),
                    bounds=bounds, soul=self.soul(), git=git)
            except WorkerStopped:
                with self._lock:
                    self.current = None
                return  # as a killed worker: no outcome; kept, so the next start resumes it
            except Exception as exc:  # a bug or the bus: the item fails, the runtime lives on
                log.exception("work item %s broke", order.item)
                outcome = Outcome("failed", f"the worker broke: {type(exc).__name__}: {exc}")
            if not self.stop.is_set():
                self.report(orchestrator, order.item, outcome, client)
            with self._lock:
                self.current = None

        self.thread = threading.Thread(target=run, name=f"work-{order.item}", daemon=True)
        self.thread.start()
        return {"accepted": order.item}

    def no_token(self, source: WorkSource) -> str:
        return f"the forge token {source.token} is not in {self.agent}'s environment"

    def report(self, orchestrator: str, item: str, outcome: Outcome,
               client: Sender | None = None) -> None:
        """Queue the item's outcome for the orchestrator, then forget the kept item (kept when
        the outcome could not be queued: the next start resumes the item and reports it)."""
        try:
            queued = self.send(client or self.sender(), orchestrator, OUTCOME, outcome_payload(
                item, outcome.state, outcome.reason, outcome.pr_url))
        except WorkerStopped:
            return  # stopping: kept, the next start resumes it
        if queued:
            self.forget()

    @property
    def current_path(self) -> Path:
        return self.state_dir / CURRENT_FILE

    def keep(self, sender: str, payload: dict[str, Any], resumes: int) -> None:
        """Record the item being worked on (see :meth:`resume`)."""
        write_atomic(self.current_path, json.dumps(
            {"from": sender, "payload": payload, "resumes": resumes}), mode=0o600)

    def kept(self) -> tuple[str, Any, int] | None:
        """The kept item (sender, payload, times resumed), or None; a file that is not one is
        removed."""
        data: Any = None
        try:  # never through a symlink, never waiting on a FIFO's writer
            fd = os.open(self.current_path,
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:
            fd = -1
        if fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a folder ...
            os.close(fd)
        elif fd >= 0:
            with os.fdopen(fd, "rb") as handle:
                try:
                    data = json.loads(handle.read(MAX_CURRENT_BYTES + 1) or b"null")
                except (OSError, ValueError, RecursionError):  # deep nesting: RecursionError
                    data = None
        if (not isinstance(data, dict) or not isinstance(data.get("from"), str)
                or isinstance(data.get("resumes"), bool)
                or not isinstance(data.get("resumes"), int) or data["resumes"] < 0):
            log.warning("%s is not a kept work item; removed", self.current_path)
            self.forget()
            return None
        return data["from"], data.get("payload"), data["resumes"]

    def forget(self) -> None:
        try:
            self.current_path.unlink(missing_ok=True)
        except IsADirectoryError:  # not ours, in the name of ours: keep() could never write
            shutil.rmtree(self.current_path)

    def send(self, client: Sender, to: str, kind: str, payload: dict[str, Any]) -> bool:
        """Queue one message for the orchestrator (whether it was); a bus failure is logged,
        never raised into the loop (the orchestrator resumes an item it hears nothing of)."""
        if self.stop.is_set():
            raise WorkerStopped(f"{self.agent} stopped during {payload.get('item')}")
        try:
            client.send(to, kind, payload)
        except Exception as exc:  # the gateway restarting: this event is lost, the item not
            log.warning("could not send %s of %s: %s", kind, payload.get("item"), exc)
            return False
        return True


class WorkerStopped(BaseException):
    """The runtime stopped while an item ran: its thread ends without an outcome (as a killed
    process would), and the orchestrator resumes the item."""
