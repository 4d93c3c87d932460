"""HTTP Message Signatures (RFC 9421) with Ed25519, and Content-Digest (RFC 9530).

Every bus request is signed by its sender's own Ed25519 key (:mod:`bus.keys`). A signed
request carries::

    Content-Digest: sha-256=:<base64 SHA-256 of the body>:          # when there is a body
    Signature-Input: fleet=("@method" "@authority" "@path" "@query" "content-digest")\
;created=<unix s>;keyid="<name>:<fingerprint>";alg="ed25519"
    Signature: fleet=:<base64 Ed25519 signature of the signature base>:

The signature base is one line per covered component, ``"<component>": <value>``, then
``"@signature-params": <the Signature-Input value after "fleet=">``, joined by ``\\n``
(docs/bus-signatures.md has a worked example). A gateway accepts one signature (any label)
that covers ``@method``, the target (``@authority`` + ``@path`` + ``@query``, or
``@target-uri``) and, when there is a body, ``content-digest``; whose ``created`` is within
300 s of its clock; whose ``keyid`` is in its keyring. Other covered header fields and the
``expires``, ``nonce`` and ``tag`` parameters are allowed. The verifier parses only this
profile of RFC 9421 (component identifiers without parameters), strictly, with regular
expressions: fast enough for thousands of requests per second on one core.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature

from bus.errors import BusError
from bus.keys import PublicKey, SigningKey

SIGNATURE_INPUT = "Signature-Input"
SIGNATURE = "Signature"
CONTENT_DIGEST = "Content-Digest"
LABEL = "fleet"
ALG = "ed25519"
WINDOW_SECONDS = 300
DIGEST = "content-digest"
DERIVED = ("@method", "@authority", "@path", "@query", "@target-uri", "@scheme",
           "@request-target")
PARAMS = ("created", "expires", "nonce", "alg", "keyid", "tag")
_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
_PARAM = rf"(?:;[a-z*][a-z0-9_.*-]*=(?:-?[0-9]{{1,15}}|{_STRING}))"
INPUT_RE = re.compile(rf"\s*([a-z*][a-z0-9_.*-]*)=\(((?:{_STRING}(?: +{_STRING})*)?)\)"
                      rf"({_PARAM}*)\s*")
PARAM_RE = re.compile(rf";([a-z*][a-z0-9_.*-]*)=(-?[0-9]{{1,15}}|{_STRING})")
COMPONENT_RE = re.compile(r"@[a-z-]+|[a-z0-9!#$%&'*+.^_`|~-]+")
SIGNATURE_RE = re.compile(r"\s*([a-z*][a-z0-9_.*-]*)=:([A-Za-z0-9+/]{86}==):\s*")
DIGEST_RE = re.compile(r"(sha-256|sha-512)=:([A-Za-z0-9+/=]+):")
DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
HINT = "Sign with your bus key as RFC 9421 says (docs/bus-signatures.md, bus.signing.sign)."


# The signature as OpenAPI / A2A security schemes: both headers on every signed call.
SCHEME_DOC = ("RFC 9421 HTTP Message Signature with Ed25519 (alg=\"ed25519\"), covering "
              "@method, @authority, @path, @query (or @target-uri) and, with a body, "
              "content-digest (RFC 9530, sha-256); created within 300 s; keyid "
              "<name>:<fingerprint> of a key this gateway trusts. See docs/bus-signatures.md.")
SECURITY_SCHEMES = {
    "httpSignature": {"type": "apiKey", "in": "header", "name": SIGNATURE,
                      "description": f"{LABEL}=:<base64 Ed25519 signature>: -- {SCHEME_DOC}"},
    "httpSignatureInput": {"type": "apiKey", "in": "header", "name": SIGNATURE_INPUT,
                           "description": f'{LABEL}=("@method" "@authority" "@path" "@query" '
                                          '"content-digest");created=<unix s>;'
                                          'keyid="<name>:<fingerprint>";alg="ed25519"'},
}
SECURITY: list[dict[str, list[str]]] = [{name: [] for name in SECURITY_SCHEMES}]


class AuthError(BusError):
    """A request's signature is missing, wrong or stale (answered with 401)."""


def content_digest(body: bytes) -> str:
    """``sha-256=:<base64>:`` (RFC 9530) of ``body``."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def sf_string(text: str) -> str:
    """``text`` as a Structured Field String (RFC 8941)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def signature_params(components: list[str], params: list[tuple[str, int | str]]) -> str:
    """The ``@signature-params`` value: the inner list of components and its parameters."""
    items = " ".join(sf_string(name) for name in components)
    return f"({items})" + "".join(
        f";{name}={value if isinstance(value, int) else sf_string(value)}"
        for name, value in params)


def signature_base(values: list[tuple[str, str]], params: str) -> bytes:
    """The signature base (RFC 9421 section 2.5): a line per component, then the params."""
    lines = [f"{sf_string(name)}: {value}" for name, value in values]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode()


def authority(netloc: str, scheme: str) -> str:
    """``host[:port]`` lowercased, the scheme's default port left out."""
    host = netloc.lower().rpartition("@")[2]
    default = {"http": ":80", "https": ":443"}.get(scheme.lower())
    return host[:-len(default)] if default and host.endswith(default) else host


def sign(key: SigningKey, method: str, url: str, body: bytes = b"",
         now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The headers that sign a request to ``url`` (an absolute URL, as sent) as ``key``, with
    a fresh random ``nonce`` (unless given): two requests signed alike in the same second
    still differ, so a gateway's replay guard (:mod:`bus.replay`) refuses only a replay."""
    parts = urlsplit(url)
    values = [("@method", method.upper()), ("@authority", authority(parts.netloc, parts.scheme)),
              ("@path", parts.path or "/"), ("@query", f"?{parts.query}")]
    headers: dict[str, str] = {}
    if body:
        headers[CONTENT_DIGEST] = content_digest(body)
        values.append((DIGEST, headers[CONTENT_DIGEST]))
    created = int(time.time() if now is None else now)
    params = signature_params([name for name, _ in values],
                              [("created", created), ("keyid", key.keyid), ("alg", ALG),
                               ("nonce", secrets.token_hex(16) if nonce is None else nonce)])
    signature = key.key.sign(signature_base(values, params))
    headers[SIGNATURE_INPUT] = f"{LABEL}={params}"
    headers[SIGNATURE] = f"{LABEL}=:{base64.b64encode(signature).decode()}:"
    return headers


class Target:
    """What a receiver knows of a request: the derived components and its header fields."""

    def __init__(self, method: str, scheme: str, authority: str, path: str, query: str,
                 header: Callable[[str], str | None]) -> None:
        self.derived = {"@method": method.upper(), "@scheme": scheme.lower(),
                        "@authority": authority, "@path": path or "/", "@query": f"?{query}"}
        self.derived["@target-uri"] = (f"{scheme.lower()}://{authority}{path or '/'}"
                                       + (f"?{query}" if query else ""))
        self.derived["@request-target"] = (path or "/") + (f"?{query}" if query else "")
        self.header = header

    def value(self, component: str) -> str:
        """A covered component's value; :class:`AuthError` when the request lacks it."""
        if component.startswith("@"):
            if component not in self.derived:
                raise AuthError(f"{SIGNATURE_INPUT}: component {component!r} is not supported "
                                f"(supported: {', '.join(DERIVED)} and header fields)")
            return self.derived[component]
        found = self.header(component)
        if found is None:
            raise AuthError(f"{SIGNATURE_INPUT}: covers {component!r}, which the request "
                            "does not have")
        return found.strip()


def _parse_input(text: str) -> tuple[str, list[str], list[tuple[str, int | str]]]:
    match = INPUT_RE.fullmatch(text)
    if match is None:
        raise AuthError(f"{SIGNATURE_INPUT}: not one signature of the form "
                        'label=("@method" ...);created=...;keyid="..."', hint=HINT)
    label, inner, rest = match.groups()
    components = [item[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                  for item in re.findall(_STRING, inner)]
    params: list[tuple[str, int | str]] = []
    for name, value in PARAM_RE.findall(rest):
        params.append((name, value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                       if value.startswith('"') else int(value)))
    return label, components, params


def _check_params(params: dict[str, int | str], now: float) -> None:
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise AuthError(f"{SIGNATURE_INPUT}: unknown parameter {unknown[0]!r} "
                        f"(allowed: {', '.join(PARAMS)})")
    for name in ("created", "expires"):
        if name in params and not isinstance(params[name], int):
            raise AuthError(f"{SIGNATURE_INPUT}: {name} must be an integer (unix seconds)")
    for name in ("keyid", "alg", "nonce", "tag"):
        if name in params and not isinstance(params[name], str):
            raise AuthError(f"{SIGNATURE_INPUT}: {name} must be a string")
    if params.get("alg", ALG) != ALG:
        raise AuthError(f"{SIGNATURE_INPUT}: alg {params['alg']!r} is not {ALG!r}")
    if "keyid" not in params or "created" not in params:
        missing = [name for name in ("created", "keyid") if name not in params]
        raise AuthError(f"{SIGNATURE_INPUT}: missing {' and '.join(missing)}", hint=HINT)
    created = int(params["created"])
    # ``created`` is whole seconds (the signer cut its fraction off), so the skew is counted
    # between whole seconds too: a signer 301 s ahead is 301 s off, never "300 s".
    skew = abs(created - math.floor(now))
    if skew > WINDOW_SECONDS:
        direction = "ahead of" if created > now else "behind"
        raise AuthError(f"{SIGNATURE_INPUT}: created {created} is {skew} s {direction} this "
                        f"gateway's clock ({math.floor(now)}; allowed: up to {WINDOW_SECONDS} s)",
                        hint="Check the clocks (NTP).")
    if "expires" in params and now > int(params["expires"]):
        raise AuthError(f"{SIGNATURE_INPUT}: the signature expired at {params['expires']}")


def _check_coverage(components: list[str], has_body: bool) -> None:
    if len(set(components)) != len(components):
        raise AuthError(f"{SIGNATURE_INPUT}: a component is covered twice")
    for component in components:
        if not COMPONENT_RE.fullmatch(component):
            raise AuthError(f"{SIGNATURE_INPUT}: {component!r} is not a component name")
    covered = set(components)
    target = {"@authority", "@path", "@query"} <= covered or "@target-uri" in covered
    missing = [name for name, ok in (("@method", "@method" in covered),
                                     ("the target (@authority @path @query, or @target-uri)",
                                      target),
                                     (DIGEST, DIGEST in covered or not has_body))
               if not ok]
    if missing:
        raise AuthError(f"{SIGNATURE_INPUT}: the signature must cover {', '.join(missing)}",
                        hint=HINT)


def check_digest(value: str, body: bytes) -> None:
    """:class:`AuthError` unless ``value`` (Content-Digest) has a SHA-256 or SHA-512 digest
    and every such digest matches ``body``."""
    found = [DIGEST_RE.fullmatch(part.strip()) for part in value.split(",")]
    known = [match for match in found if match is not None]
    if not known:
        raise AuthError(f"{CONTENT_DIGEST}: no sha-256=:...: or sha-512=:...: digest")
    for match in known:
        try:
            given = base64.b64decode(match.group(2), validate=True)
        except binascii.Error:
            raise AuthError(f"{CONTENT_DIGEST}: {match.group(1)} is not base64") from None
        if not hmac.compare_digest(given, DIGESTS[match.group(1)](body).digest()):
            raise AuthError(f"{CONTENT_DIGEST}: {match.group(1)} does not match the body")


def verify(target: Target, body: bytes | None, keys: Mapping[str, PublicKey],
           now: float | None = None) -> PublicKey:
    """The key that signed the request, or :class:`AuthError` saying what is wrong.

    ``body=None`` is a body refused unread (over the size limit): the signature must still
    cover a ``Content-Digest``, which is taken as sent, so the answer names only who signed
    the headers, never vouches for the body."""
    given_input, given_signature = target.header("signature-input"), target.header("signature")
    missing = [name for name, value in ((SIGNATURE_INPUT, given_input),
                                        (SIGNATURE, given_signature)) if not value]
    if missing:
        raise AuthError(f"unsigned request: missing {', '.join(missing)}", hint=HINT)
    assert given_input is not None and given_signature is not None
    label, components, param_list = _parse_input(given_input)
    params = dict(param_list)
    if len(params) != len(param_list):
        raise AuthError(f"{SIGNATURE_INPUT}: a parameter is given twice")
    _check_params(params, time.time() if now is None else now)
    digest = target.header("content-digest")
    _check_coverage(components, body is None or bool(body) or digest is not None)
    key = keys.get(str(params["keyid"]))
    if key is None:
        raise AuthError(f"{SIGNATURE_INPUT}: keyid {params['keyid']!r} is not trusted by this "
                        "gateway", hint="Deploy the fleet so every gateway has the key "
                                        "(FLEET_BUS_PUBLIC_KEYS).")
    match = SIGNATURE_RE.fullmatch(given_signature)
    if match is None or match.group(1) != label:
        raise AuthError(f"{SIGNATURE}: not {label}=:<base64 of a 64-byte signature>:",
                        hint=HINT)
    if digest is not None and body is not None:
        check_digest(digest, body)
    values = [(name, target.value(name)) for name in components]
    base = signature_base(values, signature_params(components, param_list))
    try:
        key.key.verify(base64.b64decode(match.group(2)), base)
    except InvalidSignature:
        raise AuthError(f"{SIGNATURE}: does not verify with {key.keyid!r} (the request was "
                        "changed, or signed for another gateway or by another key)") from None
    return key
