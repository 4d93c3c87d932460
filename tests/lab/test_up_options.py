"""``fleet lab up --ssh-user``, ``--release`` and ``--repo-url`` are checked before anything
boots."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fleet.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["--ssh-user", "de ploy"], "Invalid value for '--ssh-user': 'de ploy' is not a user name "
     "(1-32 characters: lowercase letters, digits, '_' and '-', starting with a letter or '_')"),
    (["--repo-url", "--upload-pack=x"], "Invalid value for '--repo-url': '--upload-pack=x' is "
     "not a repository URL (it may not start with '-' or hold a control character)"),
    (["--release", "bezalel=bullseye"], "Invalid value for '--release': 'bullseye' is not a "
     "Debian release the lab boots (bookworm, trixie)"),
    (["--repo-url", "file:///srv/a\nb"], "Invalid value for '--repo-url': 'file:///srv/a\\nb' "
     "is not a repository URL (it may not start with '-' or hold a control character)"),
])
def test_bad_values_are_usage_errors(args: list[str], message: str) -> None:
    done = CliRunner().invoke(main, ["lab", "up", *args, "--lab", "never-booted"])
    assert done.exit_code == 2
    assert done.output.splitlines()[-1] == f"Error: {message}"
