"""Settings: required variables, checks with messages that name the variable and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet.core.envfile import EnvFileError, format_env, quote
from fleet.core.errors import WebhookError
from fleet.webhook.config import CONFIG_HINT, load_settings, read_config_file

BASE = {"FLEET_WEBHOOK_SECRET": "s" * 32, "FLEET_READ_TOKEN": "r" * 32,
        "FLEET_REPO_URL": "/srv/git/fleet.git", "FLEET_STATE_DIR": "/tmp/x"}


def test_defaults() -> None:
    settings = load_settings(BASE)
    assert settings.deploy_tag == "PROD"
    assert settings.deploy_command == ()
    assert settings.command == (sys.executable, "-m", "fleet", "deploy")
    assert settings.gitlab_token is None
    assert settings.health_check == "fleet"


@pytest.mark.parametrize(("missing", "message"), [
    ("FLEET_REPO_URL", "FLEET_REPO_URL is not set: it names the fleet repository to deploy "
                       "from (URL, path or file://)"),
    ("FLEET_READ_TOKEN", "FLEET_READ_TOKEN is not set: it names the bearer token of the read "
                         "API (GET /runs, /healthz)"),
    ("FLEET_WEBHOOK_SECRET", "FLEET_WEBHOOK_SECRET is not set (nor FLEET_GITLAB_TOKEN): the "
                             "receiver cannot check who sent a push"),
])
def test_missing_required_settings_name_the_variable(missing: str, message: str) -> None:
    env = {key: value for key, value in BASE.items() if key != missing}
    with pytest.raises(WebhookError) as caught:
        load_settings(env)
    assert str(caught.value) == message
    assert caught.value.hint


def test_a_gitlab_token_alone_is_enough() -> None:
    env = {**BASE, "FLEET_GITLAB_TOKEN": "g" * 20}
    del env["FLEET_WEBHOOK_SECRET"]
    settings = load_settings(env)
    assert (settings.webhook_secret, settings.gitlab_token) == (None, "g" * 20)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("FLEET_WEBHOOK_SECRET", "short", "FLEET_WEBHOOK_SECRET is too short (5 characters); use "
                                      "at least 16 random characters"),
    ("FLEET_DEPLOY_TIMEOUT", "soon", "FLEET_DEPLOY_TIMEOUT: 'soon' is not a positive number of "
                                     "seconds"),
    ("FLEET_HEALTH_CHECK", "ssh", "FLEET_HEALTH_CHECK: 'ssh' is not one of fleet, http, off"),
    ("FLEET_DRIFT_INTERVAL", "²", "FLEET_DRIFT_INTERVAL: '²' is not a positive number of seconds"
                                  " (or 0: off)"),
    ("FLEET_DRIFT_INTERVAL", "nan", "FLEET_DRIFT_INTERVAL: 'nan' is not a positive number of "
                                    "seconds (or 0: off)"),
    ("FLEET_DRIFT_INTERVAL", "1e999", "FLEET_DRIFT_INTERVAL: '1e999' is not a positive number "
                                      "of seconds (or 0: off)"),
    ("FLEET_DRIFT_INTERVAL", "-5", "FLEET_DRIFT_INTERVAL: '-5' is not a positive number of "
                                   "seconds (or 0: off)"),
    ("FLEET_DRIFT_HEAL", "yes", "FLEET_DRIFT_HEAL: 'yes' is not one of 0, 1"),
])
def test_bad_values_are_refused(key: str, value: str, message: str) -> None:
    with pytest.raises(WebhookError) as caught:
        load_settings({**BASE, key: value})
    assert str(caught.value) == message


def test_a_config_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "webhook.env"
    config.write_text("# fleet webhook\nFLEET_DEPLOY_TAG=release-*\n"
                      "FLEET_REPO_URL='file:///srv/fleet.git'\nFLEET_READ_TOKEN=" + "f" * 20 + "\n")
    settings = load_settings({**BASE, "FLEET_WEBHOOK_CONFIG": str(config)})
    assert settings.deploy_tag == "release-*"
    assert settings.repo_url == "/srv/git/fleet.git"
    assert settings.read_token == "r" * 32


def test_a_bad_config_file_line_is_named(tmp_path: Path) -> None:
    config = tmp_path / "webhook.env"
    config.write_text("FLEET_DEPLOY_TAG=PROD\nnonsense\n")
    with pytest.raises(WebhookError) as caught:
        load_settings(BASE, config_file=config)
    assert str(caught.value) == f"{config}:2: 'nonsense' is not KEY=value"


def config_file(tmp_path: Path, text: str) -> dict[str, str]:
    """What the receiver reads from a config file holding ``text``."""
    config = tmp_path / "webhook.env"
    config.write_text(text)
    return read_config_file(config)


@pytest.mark.parametrize(("text", "values"), [
    ("; a comment\n# another\nA=1\n  ;B=2\n", {"A": "1"}),
    ("A=x ; not a comment\nB=y # nor this\n", {"A": "x ; not a comment", "B": "y # nor this"}),
    ('A="q\\"\\\\\\$\\`"\nB=a\\ b\\\\c\nC=\'\\n stays\'\n',
     {"A": 'q"\\$`', "B": "a b\\c", "C": "\\n stays"}),
    ('A="one\ntwo\n  three"\nB=\'x\ny\'\nC=1\n', {"A": "one\ntwo\n  three", "B": "x\ny", "C": "1"}),
    ("A=continued \\\nline\n", {"A": "continued line"}),
    ("  A = spaced  \n", {"A": "spaced"}),
    ("\ufeffA=after an editor's byte order mark\r\n", {"A": "after an editor's byte order mark"}),
    ('A="a\\"b"  \n', {"A": 'a"b'}),
])
def test_the_config_file_is_read_as_systemd_reads_it(tmp_path: Path, text: str,
                                                     values: dict[str, str]) -> None:
    assert config_file(tmp_path, text) == values


def test_what_the_deploy_writes_the_receiver_reads_back(tmp_path: Path) -> None:
    env = {"FLEET_WEBHOOK_SECRET": 'a$b\\c"d`e\'f', "FLEET_SECRETS": "/etc/fleet/x y.yaml",
           "FLEET_DEPLOY_COMMAND": "stand-in\n--second-line"}
    assert config_file(tmp_path, format_env(env)) == env


@pytest.mark.parametrize(("text", "message"), [
    ("A=1\n\nnonsense  \n", "3: 'nonsense' is not KEY=value"),
    ("A=1\n2B=x\n", "2: '2B' is not a variable name (letters, digits and '_', not starting "
                    "with a digit)"),
    ('A=1\nFLEET_WEBHOOK_SECRET="sec\nret\n', "2: 'FLEET_WEBHOOK_SECRET' has a value whose "
     "quote is never closed (systemd reads on to the end of the file)"),
    ('FLEET_WEBHOOK_SECRET="secret-one" # rotated\n', "1: 'FLEET_WEBHOOK_SECRET' has text "
     "after its closing quote, which systemd adds to the value"),
])
def test_a_bad_config_entry_names_its_line_and_never_a_value(tmp_path: Path, text: str,
                                                             message: str) -> None:
    config = tmp_path / "webhook.env"
    config.write_text(text)
    with pytest.raises(WebhookError) as caught:
        load_settings(BASE, config_file=config)
    assert str(caught.value) == f"{config}:{message}"
    assert caught.value.hint in (CONFIG_HINT, "Put a comment on a line of its own.")
    assert "sec" not in str(caught.value).replace("SECRET", "")


def test_the_deploy_env_leaves_out_the_receivers_secrets() -> None:
    env = load_settings({**BASE, "FLEET_GITLAB_TOKEN": "g" * 20,
                         "FLEET_SECRETS": "/etc/fleet/secrets.yaml"}).deploy_env()
    assert env["FLEET_SECRETS"] == "/etc/fleet/secrets.yaml"
    assert not {"FLEET_WEBHOOK_SECRET", "FLEET_GITLAB_TOKEN", "FLEET_READ_TOKEN"} & set(env)


def test_an_unsplittable_deploy_command_is_refused() -> None:
    with pytest.raises(WebhookError) as caught:
        load_settings({**BASE, "FLEET_DEPLOY_COMMAND": "pyinfra 'inventory.py"})
    assert str(caught.value) == ("FLEET_DEPLOY_COMMAND: \"pyinfra 'inventory.py\" cannot be split "
                                 "into arguments (No closing quotation)")


@pytest.mark.parametrize(("url", "message"), [
    ("--upload-pack=touch /tmp/pwned", "FLEET_REPO_URL '--upload-pack=touch /tmp/pwned' starts "
                                       "with '-'; git would read it as an option"),
    ("-oProxyCommand=x", "FLEET_REPO_URL '-oProxyCommand=x' starts with '-'; git would read it "
                         "as an option"),
    ("/srv/fleet.git\nFLEET_DEPLOY_TAG=*", "FLEET_REPO_URL '/srv/fleet.git\\nFLEET_DEPLOY_TAG=*' "
                                           "contains a control character (newline, tab, ...)"),
    ("file:///srv/a\tb", "FLEET_REPO_URL 'file:///srv/a\\tb' contains a control character "
                         "(newline, tab, ...)"),
])
def test_a_repo_url_git_could_misread_is_refused(url: str, message: str) -> None:
    with pytest.raises(WebhookError) as caught:
        load_settings({**BASE, "FLEET_REPO_URL": url})
    assert str(caught.value) == message
    assert caught.value.hint


def test_drift_checks_default_to_every_15_minutes_without_healing() -> None:
    settings = load_settings(BASE)
    assert (settings.drift_interval, settings.drift_heal) == (900.0, False)
    settings = load_settings({**BASE, "FLEET_DRIFT_INTERVAL": "0", "FLEET_DRIFT_HEAL": "1"})
    assert (settings.drift_interval, settings.drift_heal) == (0.0, True)


ENV_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


def representable(value: str) -> bool:
    try:
        quote("X", value)
    except EnvFileError:
        return False
    return True


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=st.dictionaries(ENV_NAMES, st.text().filter(representable), max_size=6))
@example(env={"A": "=''"})  # a quoted value holding a quoted value: no text after its quote
@example(env={"A": 'x="y" z'})
def test_every_env_file_the_deploy_can_write_the_receiver_reads_back_exactly(
        tmp_path: Path, env: dict[str, str]) -> None:
    """Whatever values ``format_env`` accepts (quotes, backslashes, ``$``, newlines, ``#``
    and ``;``, spaces at either end, any Unicode it can carry) come back from the receiver's
    config reader as they were: no entry is refused, none altered."""
    assert config_file(tmp_path, format_env(env)) == env
