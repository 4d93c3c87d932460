"""What every forge client shares: the :class:`Forge` protocol, the records it returns, typed
errors, and :class:`ForgeHttp`, the one place a forge's REST API is called.

:class:`ForgeHttp` holds a ``requests.Session`` and, on every call: a (connect, read) timeout
and a deadline for the whole body;
no redirects (a token header must never follow one to another host); a body read up to
:data:`MAX_ANSWER_BYTES` (one byte more is refused, never kept whole) and parsed by
:func:`bus.strictjson.loads`; rate limits honoured (``Retry-After``, GitHub's
``X-RateLimit-Remaining: 0`` with ``X-RateLimit-Reset``, GitLab's ``RateLimit-Remaining`` /
``RateLimit-Reset``) by waiting at most ``max_wait`` seconds with the injected ``sleep``, else
:class:`ForgeRateLimited` carrying the reset time; pages followed only through next links on the
API's own origin and path, at most ``max_pages``. Every message and log line is masked
(:class:`~fleet.core.masking.Masker`) so the token never leaves in an error or a log.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import requests
import urllib3

from bus.strictjson import loads
from bus.timestamps import utc_timestamp
from fleet.core.errors import FleetError
from fleet.core.masking import Masker

MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""The largest answer body read (a page of 100 issues is well below it)."""
TIMEOUT = (5.0, 30.0)
"""Connect and read timeouts of every call, in seconds."""
DEADLINE_S = 60.0
"""The longest one answer's body may take to arrive whole."""
CHUNK = 64 * 1024
MAX_WAIT_S = 60.0
"""The longest a call waits for a rate limit to reset before raising :class:`ForgeRateLimited`."""
MAX_ATTEMPTS = 3
MAX_PAGES = 50
DEFAULT_BACKOFF_S = 5.0
"""The wait after a 429 that names no reset time."""
MAX_TEXT = 256 * 1024
"""The longest issue title or body kept (longer ones are cut)."""
PR_STATES = ("open", "merged", "closed")
ISSUE_STATES = ("open", "closed")

log = logging.getLogger("fleet.node.work.forges")


class ForgeError(FleetError):
    """A forge's API call failed; the message never holds the token."""

    hint = "Check the forge's api_url, repo and token in the registry's `work:` section."


class ForgeUnreachable(ForgeError):
    """The forge did not answer (connection refused, timed out, ...)."""


class ForgeAuthError(ForgeError):
    """The forge refused the token (401) or its rights (403)."""

    hint = ("The token may be wrong, expired or lack rights on the repository: put a valid one "
            "in the fleet secret the source's `token:` names (`fleet secrets edit`), then "
            "deploy.")


class ForgeNotFound(ForgeError):
    """The forge has no such repository, issue or pull request (404)."""


class ForgeAnswerError(ForgeError):
    """The forge's answer is not what its documentation describes (not JSON, too large, a
    field missing, a next link to another origin)."""


class ForgeRateLimited(ForgeError):
    """The forge's rate limit is spent until ``reset_at`` (Unix time, None when unknown),
    further off than a call may wait."""

    hint = "Intake tries again on its next run; nothing was lost."

    def __init__(self, message: str, reset_at: float | None) -> None:
        super().__init__(message)
        self.reset_at = reset_at


@dataclass(frozen=True)
class Issue:
    """An open or closed issue: its number (GitLab: ``iid``), title, body, web page URL
    (``html_url`` / ``web_url``), label names and state (``open`` or ``closed``)."""

    number: int
    title: str
    body: str
    url: str
    labels: tuple[str, ...]
    state: str


@dataclass(frozen=True)
class PullRequest:
    """A pull request (GitLab: merge request): number (``iid``), web page URL, state
    (``open``, ``merged`` or ``closed``), head and base branch; ``same_repo``: its head branch
    is in the repository itself (not a fork's branch of the same name)."""

    number: int
    url: str
    state: str
    head: str
    base: str
    same_repo: bool = False


class Forge(Protocol):
    """What the work loop asks of a forge, whichever it is."""

    kind: str

    def labelled_issues(self, label: str) -> Iterator[Issue]:
        """Open issues carrying ``label`` (pull requests left out), every page."""
        ...

    def issue_state(self, number: int) -> str:
        """``open`` or ``closed``."""
        ...

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> PullRequest:
        """The open pull request from branch ``head`` into ``base``: the one already open,
        else a new one (never two for one branch)."""
        ...

    def pull_request_state(self, number: int) -> str:
        """``open``, ``merged`` or ``closed``."""
        ...

    def has_comment(self, issue_number: int, body: str) -> bool:
        """Whether the issue has a comment reading exactly ``body``."""
        ...

    def comment(self, issue_number: int, body: str) -> int:
        """Comment on the issue; the comment's id."""
        ...

    def default_branch(self) -> str:
        """The repository's default branch."""
        ...


@dataclass(frozen=True)
class Answer:
    """One answer of the API: status, headers, parsed JSON body, and its URL."""

    status: int
    headers: Mapping[str, str]
    data: Any
    url: str
    links: Mapping[str, Mapping[str, str]]


class ForgeHttp:
    """Calls one forge's REST API at ``api_url`` with ``auth`` headers (see the module
    docstring for the bounds); ``clock`` and ``sleep`` are injected so tests never sleep."""

    def __init__(self, kind: str, api_url: str, token: str, auth: Mapping[str, str], *,
                 session: requests.Session | None = None,
                 timeout: tuple[float, float] = TIMEOUT, deadline: float = DEADLINE_S,
                 max_wait: float = MAX_WAIT_S,
                 max_pages: int = MAX_PAGES, max_bytes: int = MAX_ANSWER_BYTES,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.kind = kind
        self.api_url = api_url.rstrip("/")
        self.auth = dict(auth)
        self.session = session or requests.Session()
        self.timeout = timeout
        self.deadline = deadline
        self.max_wait = max_wait
        self.max_pages = max_pages
        self.max_bytes = max_bytes
        self.clock = clock
        self.sleep = sleep
        self.mask = Masker([token])
        self.blocked_until: float | None = None  # a limit spent on an earlier answer

    def url(self, path: str) -> str:
        """The full URL of an API ``path`` (``/repos/...``)."""
        return f"{self.api_url}{path}"

    def call(self, method: str, path: str, params: Mapping[str, Any] | None = None,
             body: Mapping[str, Any] | None = None, ok: tuple[int, ...] = (200,),
             full_url: str | None = None) -> Answer:
        """One call, within the rate limits; :class:`ForgeError` (a subclass) unless the
        status is in ``ok``."""
        url = full_url or self.url(path)
        for _attempt in range(MAX_ATTEMPTS):
            self.wait_for_limit(url)
            answer = self.send(method, url, params, body)
            wait = self.limit_wait(answer)
            if wait is None:
                break
            self.blocked_until = self.clock() + wait
        else:
            raise self.limited(url)
        if answer.status not in ok:
            raise self.failure(method, answer)
        return answer

    def send(self, method: str, url: str, params: Mapping[str, Any] | None,
             body: Mapping[str, Any] | None) -> Answer:
        """One request and its whole answer, read within the bounds."""
        shown = self.mask(url)
        started = time.monotonic()  # real time: a deadline the injected clock cannot stretch
        try:
            with self.session.request(method, url, params=params, json=body,
                                      headers=self.auth, timeout=self.timeout,
                                      allow_redirects=False, stream=True) as response:
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise ForgeAnswerError(f"{self.kind}: {method} {shown}: answer over "
                                           f"{self.max_bytes} bytes")
                raw = self.body(response, started + self.deadline, f"{method} {shown}")
                status, headers = response.status_code, response.headers
                final, links = response.url, response.links
        except requests.RequestException as exc:
            raise ForgeUnreachable(f"{self.kind}: {method} {shown}: unreachable "
                                   f"({type(exc).__name__})") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # a body that does not decode
            raise ForgeAnswerError(f"{self.kind}: {method} {shown}: the answer could not be "
                                   f"read ({type(exc).__name__})") from None
        log.debug("%s %s -> %s", method, self.mask(final), status)
        if len(raw) > self.max_bytes:
            raise ForgeAnswerError(f"{self.kind}: {method} {shown}: answer over "
                                   f"{self.max_bytes} bytes")
        data: Any = None
        if raw.strip():
            try:
                data = loads(raw)
            except (ValueError, RecursionError):
                if 200 <= status < 300:
                    raise ForgeAnswerError(f"{self.kind}: {method} {shown}: the answer is not "
                                           "JSON") from None
        return Answer(status, headers, data, final, links)

    def body(self, response: requests.Response, deadline: float, what: str) -> bytes:
        """The answer's body, read as it arrives up to one byte over ``max_bytes`` and only
        until ``deadline`` (``time.monotonic``): an answer dripping a byte at a time within
        the read timeout ends there."""
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_bytes:
            if time.monotonic() > deadline:
                raise ForgeUnreachable(f"{self.kind}: {what}: timed out (the answer was not "
                                       f"whole within {self.deadline:.0f} s)")
            chunk = response.raw.read1(min(CHUNK, self.max_bytes + 1 - size),
                                       decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def wait_for_limit(self, url: str) -> None:
        """Wait out a limit an earlier answer spent, or raise when it is too far off."""
        if self.blocked_until is None:
            return
        wait = self.blocked_until - self.clock()
        if wait > self.max_wait:
            raise self.limited(url)
        if wait > 0:
            log.info("%s rate limit: waiting %.1f s", self.kind, wait)
            self.sleep(wait)
        self.blocked_until = None

    def limit_wait(self, answer: Answer) -> float | None:
        """Seconds to wait before calling again (None: go on): the answer is a rate-limit
        refusal (429, or 403 with no calls remaining), or it spent the last call."""
        headers = answer.headers
        now = self.clock()
        retry_after = _retry_after(headers.get("Retry-After"), now)
        remaining = headers.get("X-RateLimit-Remaining", headers.get("RateLimit-Remaining"))
        reset = _epoch(headers.get("X-RateLimit-Reset", headers.get("RateLimit-Reset")))
        spent = remaining is not None and remaining.strip() == "0"
        refused = answer.status == 429 or (answer.status == 403 and
                                           (spent or retry_after is not None))
        if refused:
            if retry_after is not None:
                return retry_after
            if reset is not None:
                return max(0.0, reset - now)
            return DEFAULT_BACKOFF_S
        if spent and reset is not None and reset > now:
            self.blocked_until = reset  # this answer counts; the next call waits
        return None

    def limited(self, url: str) -> ForgeRateLimited:
        reset_at = self.blocked_until
        try:
            when = utc_timestamp(reset_at) if reset_at is not None else "an unknown time"
        except (ValueError, OverflowError, OSError):  # a reset past the calendar's end
            when = "a time past any calendar"
        return ForgeRateLimited(f"{self.kind}: {self.mask(url)}: rate limited until {when} "
                                f"(longer than the {self.max_wait:.0f} s a call waits)", reset_at)

    def failure(self, method: str, answer: Answer) -> ForgeError:
        """The typed error for an answer whose status was not expected."""
        detail = _message(answer.data)
        where = f"{self.kind}: {method} {self.mask(answer.url)}: HTTP {answer.status}"
        text = self.mask(f"{where}{': ' + detail if detail else ''}")
        if answer.status == 401:
            return ForgeAuthError(f"{text} (the token was refused)")
        if answer.status == 403:
            return ForgeAuthError(f"{text} (the token lacks the rights)")
        if answer.status == 404:
            return ForgeNotFound(text)
        if 300 <= answer.status < 400:
            return ForgeAnswerError(f"{text} (a redirect: point api_url at the API itself)")
        return ForgeError(text)

    def pages(self, path: str, params: Mapping[str, Any],
              next_url: Callable[[Answer], str | None] | None = None) -> Iterator[Any]:
        """Every item of a paged list, following the answer's next link (``Link: <...>;
        rel="next"``, or ``next_url(answer)``) only on the API's own origin and path; stops
        after ``max_pages`` pages."""
        answer = self.call("GET", path, params)
        for page in range(1, self.max_pages + 1):
            if not isinstance(answer.data, list):
                raise ForgeAnswerError(f"{self.kind}: {self.mask(answer.url)}: the answer is "
                                       "not a list")
            yield from answer.data
            link = answer.links.get("next", {}).get("url") or (next_url and next_url(answer))
            if not link:
                return
            if not self.same_origin(link):
                raise ForgeAnswerError(f"{self.kind}: {self.mask(answer.url)}: the next page "
                                       f"link {self.mask(link)[:200]!r} leaves the API at "
                                       f"{self.api_url}; refused")
            if page == self.max_pages:
                log.warning("%s: %s: more than %d pages; the rest is left for the next run",
                            self.kind, self.mask(self.url(path)), self.max_pages)
                return
            answer = self.call("GET", path, full_url=link)

    def same_origin(self, url: str) -> bool:
        """``url`` is on the API's scheme, host and port, under its path (with no ``.`` or
        ``..`` segment, even percent-encoded, that would climb out of it)."""
        try:
            mine, theirs = urlsplit(self.api_url), urlsplit(url)
            climbs = any(segment in (".", "..")
                         for segment in unquote(theirs.path).replace("\\", "/").split("/"))
            return (mine.scheme, mine.hostname, _port(mine.scheme, mine.port)) == \
                (theirs.scheme, theirs.hostname, _port(theirs.scheme, theirs.port)) \
                and (theirs.path + "/").startswith(mine.path.rstrip("/") + "/") \
                and not theirs.username and not theirs.password and not climbs
        except ValueError:
            return False


def _port(scheme: str, port: int | None) -> int:
    return port or (443 if scheme == "https" else 80)


_DIGITS_RE = re.compile(r"[0-9]{1,12}")


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``Retry-After`` (delay seconds or an HTTP date), None when absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DIGITS_RE.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value[:64])
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _epoch(value: str | None) -> float | None:
    """A reset time in Unix seconds, None when absent or unreadable."""
    if value is None or not _DIGITS_RE.fullmatch(value.strip()):
        return None
    return float(value.strip())


def _message(data: Any) -> str:
    """The forge's own error message, short and on one line."""
    if isinstance(data, dict):
        message = data.get("message") or data.get("error")
        if isinstance(message, list):
            message = "; ".join(str(item) for item in message)
        if message is not None:
            return " ".join(str(message).split())[:200]
    return ""


def text(value: Any, field: str, kind: str, limit: int = MAX_TEXT) -> str:
    """A string field of an answer (``None`` as empty), cut at ``limit``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ForgeAnswerError(f"{kind}: the answer's {field} is not a string")
    return value[:limit]


def number(value: Any, field: str, kind: str) -> int:
    """A positive whole-number field of an answer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ForgeAnswerError(f"{kind}: the answer's {field} is not a positive number")
    return value


def web_url(value: Any, field: str, kind: str) -> str:
    """A web page URL field of an answer (http or https, no space or control character)."""
    if not isinstance(value, str) or len(value) > 2048 or not value.isprintable() \
            or " " in value or urlsplit(value).scheme not in ("http", "https"):
        raise ForgeAnswerError(f"{kind}: the answer's {field} is not a web URL")
    return value


def record(data: Any, kind: str) -> dict[str, Any]:
    """An answer that must be a JSON object."""
    if not isinstance(data, dict):
        raise ForgeAnswerError(f"{kind}: the answer is not a JSON object")
    return data


class ForgeClient:
    """The :class:`Forge` operations over one repository's REST resources, the same on every
    forge; a subclass names its resources and reads its own objects."""

    kind = ""
    pulls = "pulls"
    """The pull requests' resource under the repository (GitLab: ``merge_requests``)."""
    notes = "comments"
    """The comments' resource under an issue (GitLab: ``notes``)."""
    conflict = 422
    """The status a forge answers when a pull request from the branch is open already."""

    def __init__(self, http: ForgeHttp, base: str) -> None:
        self.http = http
        self.base = base

    def issue_params(self, label: str) -> dict[str, Any]:
        """The query of the open issues carrying ``label``, first page."""
        raise NotImplementedError

    def pull_params(self, head: str) -> dict[str, Any]:
        """The query of the open pull requests from branch ``head``, first page."""
        raise NotImplementedError

    def pull_body(self, head: str, base: str, title: str, body: str) -> dict[str, Any]:
        """The body that opens a pull request."""
        raise NotImplementedError

    def parse_issue(self, data: dict[str, Any]) -> Issue | None:
        """An issue object as an :class:`Issue`; None for a pull request listed as one."""
        raise NotImplementedError

    def parse_pull(self, data: dict[str, Any]) -> PullRequest:
        raise NotImplementedError

    def next_page(self, answer: Answer) -> str | None:
        """The next page's URL when the forge does not send ``Link: rel="next"``."""
        return None

    def labelled_issues(self, label: str) -> Iterator[Issue]:
        """Open issues carrying ``label`` (pull requests left out), every page."""
        for item in self.http.pages(f"{self.base}/issues", self.issue_params(label),
                                    self.next_page):
            found = self.parse_issue(record(item, self.kind))
            if found is not None and found.state == "open":
                yield found

    def issue_state(self, number: int) -> str:
        """``open`` or ``closed``."""
        found = self.parse_issue(record(self.http.call(
            "GET", f"{self.base}/issues/{number}").data, self.kind))
        if found is None:
            raise ForgeNotFound(f"{self.kind}: #{number} is a pull request, not an issue")
        return found.state

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> PullRequest:
        """The open pull request from ``head`` into ``base``: the one already open (looked up
        first, and again when the forge answers that one exists), else a new one."""
        existing = self.find_pull_request(head, base)
        if existing is not None:
            return existing
        answer = self.http.call("POST", f"{self.base}/{self.pulls}", ok=(201, self.conflict),
                                body=self.pull_body(head, base, title, body))
        if answer.status == self.conflict:  # opened meanwhile (else a real refusal)
            existing = self.find_pull_request(head, base)
            if existing is None:
                raise self.http.failure("POST", answer)
            return existing
        return self.parse_pull(record(answer.data, self.kind))

    def find_pull_request(self, head: str, base: str | None = None) -> PullRequest | None:
        """The open pull request from the repository's own branch ``head`` (into ``base``,
        when given), if any: one from a fork's branch of the same name is someone else's."""
        for item in self.http.pages(f"{self.base}/{self.pulls}", self.pull_params(head),
                                    self.next_page):
            found = self.parse_pull(record(item, self.kind))
            if (found.head == head and found.state == "open" and found.same_repo
                    and (base is None or found.base == base)):
                return found
        return None

    def pull_request_state(self, number: int) -> str:
        """``open``, ``merged`` or ``closed``."""
        answer = self.http.call("GET", f"{self.base}/{self.pulls}/{number}")
        return self.parse_pull(record(answer.data, self.kind)).state

    page_size = 100

    def comment_params(self) -> dict[str, Any]:
        """The query of an issue's comments, first page."""
        return {"page": 1, "per_page": self.page_size}

    def has_comment(self, issue_number: int, body: str) -> bool:
        """Whether the issue has a comment reading exactly ``body`` (every page, as far as
        the client pages): an attempt resumed after a crash does not comment twice."""
        for item in self.http.pages(f"{self.base}/issues/{issue_number}/{self.notes}",
                                    self.comment_params(), self.next_page):
            if record(item, self.kind).get("body") == body:
                return True
        return False

    def comment(self, issue_number: int, body: str) -> int:
        """Comment on the issue; the comment's id."""
        answer = self.http.call("POST", f"{self.base}/issues/{issue_number}/{self.notes}",
                                body={"body": body}, ok=(201,))
        return number(record(answer.data, self.kind).get("id"), "id", self.kind)

    def default_branch(self) -> str:
        """The repository's default branch."""
        data = record(self.http.call("GET", self.base).data, self.kind)
        return text(data.get("default_branch"), "default_branch", self.kind, 255)
