"""A forge's push event reduced to a :class:`Push` record, and the rule that decides a deploy.

Forges differ in field names only: Gitea and GitHub send ``ref``/``before``/``after`` and a
``pusher``; GitLab sends ``checkout_sha`` (the commit a tag points at) and ``user_username``.
A tag is deleted when ``after`` is all zeros; a moved tag (non-zero ``before``) deploys too.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from bus import strictjson

# used with fullmatch: ``$`` would also match before a trailing newline
SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
SHA_PATTERN = r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$"
# git check-ref-format's rules: no control characters, space, ~^:?*[\ anywhere; no "..",
# "@{", "//" or "/."; not ending in "/", "." or ".lock". The webhook's OpenAPI document
# publishes this same pattern for a push's ``ref``.
REF_PATTERN = (r"^(?!.*\.\.)(?!.*@\{)(?!.*//)(?!.*/\.)(?!.*(?:/|\.|\.lock)$)"
               r"refs/[^\x00-\x20\x7f~^:?*\[\\]+$")
REF_RE = re.compile(REF_PATTERN)
TAG_PREFIX = "refs/tags/"
SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


class PayloadError(ValueError):
    """The JSON body is not a push event this receiver can read (answered with 400)."""


@dataclass(frozen=True)
class Push:
    """One push of a ref, whichever forge sent it."""

    forge: str
    delivery_id: str
    event: str
    ref: str
    before: str
    sha: str
    pusher: str
    repository: str

    @property
    def tag(self) -> str | None:
        """The tag name, or ``None`` for a branch push."""
        return self.ref[len(TAG_PREFIX):] if self.ref.startswith(TAG_PREFIX) else None

    @property
    def deleted(self) -> bool:
        """True when the push removed the ref (all-zero new sha)."""
        return not self.sha.strip("0")


def read_payload(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; :class:`PayloadError` for anything else.

    Refused: invalid UTF-8, invalid JSON, ``NaN``/``Infinity``/``1e999``, nesting deeper than
    the parser's recursion limit, lone surrogates (``"\\ud800"``: no UTF-8 encoding, so no
    record could hold them) and any value that is not an object.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8: byte {exc.start} ({exc.reason})") from None
    try:
        payload = strictjson.loads(text)
    except RecursionError:
        raise PayloadError("body is not valid JSON: arrays or objects nested too deeply "
                           "for a push event") from None
    except ValueError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object (a push event)")
    surrogate = _lone_surrogate(payload)
    if surrogate is not None:
        raise PayloadError(f"body is not valid JSON text: a string holds the lone UTF-16 "
                           f"surrogate U+{ord(surrogate):04X} (an unpaired \\u escape)")
    return payload


def parse_push(forge: str, delivery_id: str, event: str, payload: Any) -> Push:
    """Read a push event of ``forge`` (``gitea``, ``github`` or ``gitlab``) into a :class:`Push`."""
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object (a push event)")
    ref = payload.get("ref")
    if not isinstance(ref, str) or not valid_ref(ref):
        raise PayloadError(f"field 'ref' is {ref!r}, expected a ref like 'refs/tags/NAME'")
    if forge == "gitlab":
        checkout = payload.get("checkout_sha")  # null or "" on a tag deletion: use after
        sha = payload.get("after") if checkout is None or checkout == "" else checkout
        pusher = payload.get("user_username") or payload.get("user_name")
        repository = _get(payload, "project", "path_with_namespace")
    else:
        sha = payload.get("after")
        pusher = (_get(payload, "pusher", "login") or _get(payload, "pusher", "username")
                  or _get(payload, "pusher", "name") or _get(payload, "sender", "login"))
        repository = _get(payload, "repository", "full_name")
    if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
        field = "checkout_sha" if forge == "gitlab" else "after"
        raise PayloadError(f"field '{field}' is {sha!r}, expected a 40 or 64 digit hex sha")
    before = payload.get("before")
    if before is not None and not (isinstance(before, str) and SHA_RE.fullmatch(before)):
        raise PayloadError(f"field 'before' is {before!r}, expected a 40 or 64 digit hex sha")
    return Push(forge=forge, delivery_id=delivery_id, event=event, ref=ref,
                before=before or "", sha=sha,
                pusher=str(pusher or "unknown"), repository=str(repository or ""))


def ignore_reason(push: Push, pattern: str) -> str | None:
    """Why ``push`` does not deploy, or ``None`` when it does.

    ``pattern`` is a glob (``PROD``, ``release-*``); several may be given comma-separated.
    """
    tag = push.tag
    if tag is None:
        return f"ref {push.ref!r} is not a tag; only pushes of a tag matching {pattern!r} deploy"
    if not tag_matches(tag, pattern):
        return f"tag {tag!r} does not match the deploy tag {pattern!r}"
    if push.deleted:
        return f"tag {tag!r} was deleted (after is all zeros); deleting a tag does not deploy"
    return None


def valid_ref(ref: str) -> bool:
    """True when ``ref`` is a well-formed ``refs/...`` name (git check-ref-format's rules)."""
    return REF_RE.fullmatch(ref) is not None


def tag_matches(tag: str, pattern: str) -> bool:
    """True when ``tag`` matches one of the comma-separated globs in ``pattern``."""
    globs = [part.strip() for part in pattern.split(",") if part.strip()]
    return any(fnmatch.fnmatchcase(tag, glob) for glob in globs)


def _lone_surrogate(payload: Any) -> str | None:
    """A surrogate code point in any string (key or value), else ``None``.

    Paired ``\\ud83d\\ude00`` escapes are decoded to one character; only lone ones remain.
    """
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if found := SURROGATE_RE.search(item):
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _get(payload: dict[str, Any], key: str, field: str) -> Any:
    """``payload[key][field]`` when ``payload[key]`` is an object, else ``None``."""
    value = payload.get(key)
    return value.get(field) if isinstance(value, dict) else None
