"""Fetch the fleet repository, resolve the deploy tag, and check out that commit.

A bare cache (``<state dir>/repo.git``) keeps fetches incremental; the work dir
(``<state dir>/work``) is recreated for every run as a detached checkout of the commit the tag
points to when the run starts (not the sha a push claimed). Every user value reaches git after
``--`` or as part of an option's own argument, so none is read as an option.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from fleet.core.errors import DeployError, WebhookError

GIT_TIMEOUT = 300.0


def check_repo_url(url: str) -> str:
    """``url`` when git can only read it as a repository; :class:`WebhookError` otherwise."""
    if url.startswith("-"):
        raise WebhookError(f"FLEET_REPO_URL {url!r} starts with '-'; git would read it as an "
                           "option", hint="Set FLEET_REPO_URL to a URL, path or file:// URL.")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise WebhookError(f"FLEET_REPO_URL {url!r} contains a control character (newline, "
                           "tab, ...)", hint="Set FLEET_REPO_URL to a URL on one line.")
    return url


def fetch(repo_url: str, state_dir: Path, log: IO[bytes]) -> Path:
    """Fetch every tag and branch of ``repo_url`` into the bare cache; return the cache."""
    check_repo_url(repo_url)
    cache = state_dir / "repo.git"
    if not (cache / "HEAD").exists():
        _git(log, "init", "--quiet", "--bare", "--", str(cache))
    _git(log, "-C", str(cache), "fetch", "--quiet", "--force", "--prune", "--", repo_url,
         "+refs/tags/*:refs/tags/*", "+refs/heads/*:refs/heads/*")
    return cache


def resolve_tag(cache: Path, tag: str, repo_url: str) -> str:
    """The commit ``tag`` points to in the cache; :class:`DeployError` when there is none."""
    done = subprocess.run(
        ["git", "-C", str(cache), "rev-parse", "--verify", "--quiet", "--end-of-options",
         f"refs/tags/{tag}^{{commit}}"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeployError(f"tag {tag!r} does not exist in {redact(repo_url)} (deleted after the "
                          "push?); nothing was deployed")
    return done.stdout.strip()


def rev_parse(cache: Path, name: str) -> str | None:
    """The commit ``name`` (a sha or its prefix, e.g. a release id) names in the cache; None
    when it names none (or more than one)."""
    if not re.fullmatch(r"[0-9a-f]{4,40}", name):
        return None
    done = subprocess.run(
        ["git", "-C", str(cache), "rev-parse", "--verify", "--quiet", "--end-of-options",
         f"{name}^{{commit}}"], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def is_ancestor(cache: Path, older: str, newer: str) -> bool:
    """Whether commit ``older`` is an ancestor of commit ``newer`` (both full shas)."""
    return subprocess.run(["git", "-C", str(cache), "merge-base", "--is-ancestor", "--",
                           older, newer], capture_output=True, check=False).returncode == 0


def checkout(cache: Path, commit: str, state_dir: Path, log: IO[bytes]) -> Path:
    """A fresh work dir holding a detached checkout of ``commit``."""
    work = state_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    _git(log, "clone", "--quiet", "--shared", "--no-checkout", "--", str(cache), str(work))
    _git(log, "-C", str(work), "checkout", "--quiet", "--detach", commit, "--")
    return work


def redact(url: str) -> str:
    """``url`` without a password or token (safe to write to logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _git(log: IO[bytes], *args: str) -> None:
    """Run git with its output in the run log; :class:`DeployError` on failure."""
    log.write(f"$ git {' '.join(redact(arg) for arg in args)}\n".encode())
    log.flush()
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run(["git", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                          timeout=GIT_TIMEOUT, check=False)
    if done.returncode != 0:
        raise DeployError(f"git {args[0] if args[0] != '-C' else args[2]} failed with exit "
                          f"status {done.returncode}; see the run's log")
