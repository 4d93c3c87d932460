"""Fetch the pushed sha of the fleet repository into a clean work dir.

A bare cache (``<state dir>/repo.git``) keeps fetches incremental; the work dir
(``<state dir>/work``) is recreated for every run as a detached checkout of that commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from fleet.errors import DeployError

GIT_TIMEOUT = 300.0


def checkout(repo_url: str, sha: str, state_dir: Path, log: IO[bytes]) -> tuple[Path, str]:
    """Fetch ``sha`` from ``repo_url``; return the fresh work dir and the commit checked out."""
    cache = state_dir / "repo.git"
    if not (cache / "HEAD").exists():
        _git(log, "init", "--quiet", "--bare", str(cache))
    _git(log, "-C", str(cache), "fetch", "--quiet", "--force", repo_url,
         "+refs/tags/*:refs/tags/*", "+refs/heads/*:refs/heads/*")
    if not _has_commit(cache, sha):
        _git(log, "-C", str(cache), "fetch", "--quiet", repo_url, sha, check=False)
    if not _has_commit(cache, sha):
        raise DeployError(f"commit {sha} is not in {redact(repo_url)}; was the tag moved or the "
                          "history rewritten before the deploy started?")
    commit = subprocess.run(["git", "-C", str(cache), "rev-parse", f"{sha}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    work = state_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    _git(log, "clone", "--quiet", "--shared", "--no-checkout", str(cache), str(work))
    _git(log, "-C", str(work), "checkout", "--quiet", "--detach", commit)
    return work, commit


def redact(url: str) -> str:
    """``url`` without a password or token (safe to write to logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _has_commit(cache: Path, sha: str) -> bool:
    """True when ``sha`` names a commit (or a tag of one) in ``cache``."""
    done = subprocess.run(["git", "-C", str(cache), "cat-file", "-e", f"{sha}^{{commit}}"],
                          capture_output=True, check=False)
    return done.returncode == 0


def _git(log: IO[bytes], *args: str, check: bool = True) -> None:
    """Run git with its output in the run log; :class:`DeployError` on failure."""
    log.write(f"$ git {' '.join(redact(arg) for arg in args)}\n".encode())
    log.flush()
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run(["git", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                          timeout=GIT_TIMEOUT, check=False)
    if check and done.returncode != 0:
        raise DeployError(f"git {args[0] if args[0] != '-C' else args[2]} failed with exit "
                          f"status {done.returncode}; see the run's log")
