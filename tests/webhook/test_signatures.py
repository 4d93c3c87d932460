"""Each forge's signature scheme, checked against independently computed values."""

from __future__ import annotations

import hashlib
import hmac

from fleet.webhook.signatures import body_hmac, check_gitea, check_github, check_gitlab

SECRET = "0123456789abcdef-secret"
BODY = b'{"ref": "refs/tags/PROD"}\n'


def test_body_hmac_is_hex_hmac_sha256() -> None:
    # RFC 4231 test case 2
    assert hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).hexdigest() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert body_hmac("Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


GITEA_MISMATCH = ("X-Gitea-Signature does not match the body signed with FLEET_WEBHOOK_SECRET; "
                  "make the webhook's secret in Gitea equal FLEET_WEBHOOK_SECRET")
GITHUB_MISMATCH = ("X-Hub-Signature-256 does not match the body signed with "
                   "FLEET_WEBHOOK_SECRET; make the webhook's secret on GitHub equal "
                   "FLEET_WEBHOOK_SECRET")
GITLAB_MISMATCH = ("X-Gitlab-Token does not match FLEET_GITLAB_TOKEN; make the webhook's "
                   "secret token in GitLab equal FLEET_GITLAB_TOKEN")


def test_gitea_signs_the_raw_body_in_hex_without_prefix() -> None:
    signature = body_hmac(SECRET, BODY)
    assert check_gitea({"X-Gitea-Signature": signature}, BODY, SECRET) is None
    assert check_gitea({"X-Gitea-Signature": signature.upper()}, BODY, SECRET) is None
    assert check_gitea({"X-Gitea-Signature": "sha256=" + signature}, BODY, SECRET) == \
        GITEA_MISMATCH
    assert check_gitea({"X-Gitea-Signature": signature}, BODY + b" ", SECRET) == GITEA_MISMATCH
    assert check_gitea({}, BODY, SECRET) == (
        "missing X-Gitea-Signature header; set the webhook's secret in Gitea to the value of "
        "FLEET_WEBHOOK_SECRET")


def test_github_prefixes_sha256() -> None:
    signature = "sha256=" + body_hmac(SECRET, BODY)
    assert check_github({"X-Hub-Signature-256": signature}, BODY, SECRET) is None
    assert check_github({"X-Hub-Signature-256": signature[7:]}, BODY, SECRET) == GITHUB_MISMATCH
    sha1 = "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    assert check_github({"X-Hub-Signature": sha1}, BODY, SECRET) == (  # SHA-1 is not accepted
        "missing X-Hub-Signature-256 header; set the webhook's secret on GitHub to the value "
        "of FLEET_WEBHOOK_SECRET")


def test_gitlab_sends_the_token_itself() -> None:
    assert check_gitlab({"X-Gitlab-Token": SECRET}, BODY, SECRET) is None
    assert check_gitlab({"X-Gitlab-Token": SECRET + "x"}, BODY, SECRET) == GITLAB_MISMATCH
    assert check_gitlab({"X-Gitlab-Token": body_hmac(SECRET, BODY)}, BODY, SECRET) == \
        GITLAB_MISMATCH
    assert check_gitlab({}, BODY, SECRET) == (
        "missing X-Gitlab-Token header; set the webhook's secret token in GitLab to the value "
        "of FLEET_GITLAB_TOKEN")


def test_a_receiver_without_its_secret_refuses_everything() -> None:
    assert check_gitlab({"X-Gitlab-Token": ""}, BODY, None) == (
        "the GitLab receiver is disabled because FLEET_GITLAB_TOKEN is not set; set it to "
        "enable it")
    assert check_gitea({"X-Gitea-Signature": body_hmac("", BODY)}, BODY, None) == (
        "the Gitea receiver is disabled because FLEET_WEBHOOK_SECRET is not set; set it to "
        "enable it")
