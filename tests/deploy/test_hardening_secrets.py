"""Secrets on their way to nodes and output: env files in systemd's quoting, masking of every
form a secret travels in, no secret in any error about the secrets file."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from fleet.control.secrets import load_secrets
from fleet.core.envfile import EnvFileError, format_env, parse_env_entries
from fleet.core.errors import SecretsError
from fleet.core.masking import MASK, Masker, mask_env, mask_env_pair

HARD = 'line one\nline "two" \'x\' \\ $HOME `id` ${X}\n  trailing  '
KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAA\n"
       "AAtzc2gtZWQyNTUxOQAAACBvbGQtc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
       "-----END OPENSSH PRIVATE KEY-----\n")


@pytest.mark.parametrize("value", [HARD, "a=b#c;d", "", " ", "\\", "\\\n", "'", '"', "$", "\r\t",
                                   "ünïcödé ✓", KEY])
def test_env_file_values_round_trip_through_systemds_syntax(value: str) -> None:
    text = format_env({"FLEET_AGENT": "a", "SECRET": value, "AFTER": "z"})
    read = {entry.name: entry.value for entry in parse_env_entries(text)}
    assert read == {"FLEET_AGENT": "a", "SECRET": value, "AFTER": "z"}


def test_env_file_quotes_what_systemd_would_interpret() -> None:
    assert format_env({"A": 'q"\\$`\n'}) == 'A="q\\"\\\\\\$\\`\n"\n'


@pytest.mark.parametrize("char", ["\0", "\ufeff", "\ufdd0", "\uffff"])
def test_env_file_refuses_what_it_cannot_hold_naming_only_the_variable(char: str) -> None:
    with pytest.raises(EnvFileError) as caught:
        format_env({"API_KEY": f"secret-{char}-value"})
    assert str(caught.value) == (
        "API_KEY: the value holds a character a systemd environment file cannot carry (NUL, "
        "U+FEFF, a Unicode noncharacter or surrogate)")
    assert "-value" not in str(caught.value) + str(caught.value.hint)


def test_deploy_env_file_is_quoted(tmp_path: Path) -> None:
    from deploys import context
    from fleet.control.secrets import Secrets
    from fleet.core.registry import parse_registry

    registry = parse_registry("wizards:\n  a: {host: 192.0.2.1, role: worker, model: m}\n",
                              tmp_path / "registry.yaml")
    ctx = context.AgentContext(agent=registry.get("a"), registry=registry,
                               soul_source=tmp_path / "soul.md",
                               secrets=Secrets(fleet={"API_KEY": HARD}))
    env = {entry.name: entry.value for entry in parse_env_entries(ctx.env_file())}
    assert env["API_KEY"] == HARD and env["FLEET_AGENT"] == "a"


def test_masker_hides_each_line_of_a_multi_line_secret() -> None:
    mask = Masker([KEY])
    for line in KEY.splitlines():
        assert mask(f"diff: +{line}") == f"diff: +{MASK}"


SECRETS = ["sk-or-v1-0123456789abcdef", "pa ss/wörd+\"&?=x", HARD]


@pytest.mark.parametrize("encode", [
    lambda v: json.dumps(v)[1:-1],
    lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    lambda v: quote(v, safe=""),
    quote,
    quote_plus,
    lambda v: base64.b64encode(v.encode()).decode(),
    lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
], ids=["json", "json-utf8", "url", "url-path", "url-plus", "base64", "base64url"])
@pytest.mark.parametrize("secret", SECRETS, ids=["plain", "specials", "multi-line"])
def test_masker_hides_encoded_forms(encode: Callable[[str], str], secret: str) -> None:
    assert Masker([secret])(f"before {encode(secret)} after") == f"before {MASK} after"


@pytest.mark.parametrize("prefix", ["user:", "xy", "z", ""])
@pytest.mark.parametrize("secret", SECRETS, ids=["plain", "specials", "multi-line"])
def test_masker_hides_a_secret_inside_a_longer_base64_text(prefix: str, secret: str) -> None:
    """``base64(user:SECRET...)`` (HTTP Basic auth): at most the 4-character groups that mix
    the secret with its neighbours stay visible."""
    encoded = base64.b64encode(f"{prefix}{secret}tail".encode()).decode()
    masked = Masker([secret])(encoded)
    assert MASK in masked
    assert len(masked.replace(MASK, "")) <= len(prefix) * 4 // 3 + 4 + 8 + 4


def test_masker_does_not_garble_with_short_derived_forms() -> None:
    mask = Masker(["abcdefgh\nab\n"])  # a 2-character line is not masked on its own
    assert mask("ab cd abcdefgh") == f"ab cd {MASK}"


def test_mask_env_masks_multi_line_values_as_one_line() -> None:
    text = format_env({"FLEET_AGENT": "a", "DEPLOY_KEY": KEY, "PUBLIC": "p"})
    assert mask_env(text, ["FLEET_AGENT", "PUBLIC"]) == (
        f'FLEET_AGENT="a"\nDEPLOY_KEY={MASK}\nPUBLIC="p"\n')
    old, new = mask_env_pair(text, text.replace("old-secret", "new-secret"), ["FLEET_AGENT"])
    assert KEY.splitlines()[1] not in old + new


def test_mask_env_pair_reads_the_old_unquoted_format() -> None:
    old, new = mask_env_pair("FLEET_AGENT=a\nKEY=one-secret\n",
                             format_env({"FLEET_AGENT": "a", "KEY": "two-secret"}),
                             ["FLEET_AGENT"])
    assert (old, new) == (f"FLEET_AGENT=a\nKEY={MASK}\n",
                          f'FLEET_AGENT="a"\nKEY={MASK} (changed)\n')


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("text", "where"), [
    ("fleet:\n  API_KEY: 'short'\n", "fleet.API_KEY"),
    ("agents:\n  a:\n    FLEET_BUS_KEY: 12345\n", "agents.a.FLEET_BUS_KEY"),
    ("fleet:\n  EMPTY: ''\n", "fleet.EMPTY"),
])
def test_secrets_shorter_than_8_characters_are_refused_by_name(tmp_path: Path, text: str,
                                                               where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SecretsError) as caught:
        load_secrets(path)
    assert str(caught.value) == (f"{path}: {where}: the value is shorter than 8 characters "
                                 "(too short to mask in output without garbling it)")
    assert caught.value.hint == "Use a longer, random value, e.g. from `openssl rand -hex 32`."


@pytest.mark.parametrize(("text", "expected"), [
    ("fleet:\n  API_KEY: sk-live-SECRET: oops\n",
     "2:26: YAML syntax error: mapping values are not allowed here"),
    ("fleet:\n  API_KEY: \"sk-live-SECRET\n",
     "3:1: YAML syntax error: found unexpected end of stream"),
    ("fleet:\n  API_KEY: *sk-live-SECRET\n",
     "2:12: YAML syntax error: found undefined alias (text not shown)"),
    ("fleet:\n  API_KEY: sk-live-SECRET\n\tB: x\n",
     "3:1: YAML syntax error: found character (text not shown) that cannot start any token"),
])
def test_yaml_errors_in_the_secrets_file_quote_no_line(tmp_path: Path, text: str,
                                                       expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SecretsError) as caught:
        load_secrets(path)
    assert str(caught.value) == f"{path}:{expected}"
    assert "SECRET" not in str(caught.value) + str(caught.value.hint)


def test_a_variable_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'fleet:\n  "API_KEY\\n": sk-live-0123456789\n')
    with pytest.raises(SecretsError) as caught:
        load_secrets(path)
    assert str(caught.value) == (f"{path}: fleet: 'API_KEY\\n' is not an environment variable "
                                 "name (A-Z, 0-9, _; matched in full)")


def test_the_receivers_secrets_copy_holds_only_the_operators_public_key(
        tmp_path: Path) -> None:
    """The webhook receiver needs the operator's key only to trust it: its copy of the
    secrets file has the public half, which every deploy from it still hands to gateways."""
    import yaml

    from bus.keys import PRIVATE_KEY_ENV, new_private_key
    from fleet.control.secrets import parse_secrets

    operator = new_private_key()
    data = {"fleet": {"OPENROUTER_API_KEY": "sk-or-test-SECRET-1a2b3c4d"},
            "agents": {"a": {PRIVATE_KEY_ENV: new_private_key()}},
            "identities": {"operator": {PRIVATE_KEY_ENV: operator},
                           "receiver": {PRIVATE_KEY_ENV: new_private_key()}}}
    full = parse_secrets(data, tmp_path / "secrets.yaml")
    text = full.receiver_copy()
    assert operator not in text
    assert PRIVATE_KEY_ENV not in yaml.safe_load(text)["identities"]["operator"]
    copy = parse_secrets(yaml.safe_load(text), tmp_path / "copy.yaml")
    assert copy.operator_key() is None
    assert copy.public_keyring() == full.public_keyring()
    assert copy.for_agent("a") == full.for_agent("a")
    assert copy.values() == full.values() - {operator}


def test_plain_pyinfra_diff_masks_secrets_in_any_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """``pyinfra inventory.py deploy.py --dry --diff`` (no ``fleet`` masking its output): a
    secret sitting in a registry ``config:`` value reaches config.json's diff masked, also
    base64- and URL-encoded."""
    import inspect
    from types import SimpleNamespace

    from pyinfra.context import ctx_host, ctx_state

    from deploys import ops
    from deploys.context import AgentContext
    from fleet.core.registry import parse_registry
    from tests.deploy.test_operations import EMPTY_NODE, FakeHost

    secret = "sk-or-test-SECRET/1a2b+3c4d"
    path = tmp_path / "secrets.yaml"
    path.write_text(json.dumps({"fleet": {"OPENROUTER_API_KEY": secret}}))
    path.chmod(0o600)
    monkeypatch.setenv("FLEET_SECRETS", str(path))
    monkeypatch.setenv("FLEET_RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setenv("FLEET_RUN_ID", "masking-test")
    registry = parse_registry("wizards:\n  a: {host: 192.0.2.1, role: worker, model: m}\n",
                              tmp_path / "registry.yaml")
    ctx = AgentContext(agent=registry.get("a"), registry=registry,  # reads $FLEET_SECRETS
                       soul_source=tmp_path / "soul.md")
    encoded = base64.b64encode(secret.encode()).decode()
    content = json.dumps({"config": {"key": secret, "b64": encoded,
                                     "url": quote_plus(secret), "path": quote(secret)}})
    host = FakeHost({"FileContents": ['{"config": {}}']})
    state = SimpleNamespace(is_executing=False, config=SimpleNamespace(DIFF=True))
    body = inspect.unwrap(ops.managed_file)
    node = {**EMPTY_NODE, "paths": {"/etc/fleet/a/config.json": {
        "type": "regular file", "user": "root", "group": "a", "mode": "640", "sha256": "0"}}}
    with ctx_state.use(state), ctx_host.use(host), caplog.at_level("INFO", "pyinfra"):
        list(body(dest="/etc/fleet/a/config.json", content=content, user="root",
                  group="a", mode="640", node=node, diffs=ctx.diffs()))
    shown = "\n".join(record.getMessage() for record in caplog.records)
    assert '"key": "***"' in shown, shown
    for form in (secret, encoded, quote_plus(secret), quote(secret), json.dumps(secret)[1:-1]):
        assert form not in shown
    recorded = (tmp_path / "records" / "masking-test.json").read_text()
    assert secret not in recorded and encoded not in recorded
