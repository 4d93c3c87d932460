"""A real git server for the tests: bare repositories served over smart HTTP by git's own
``git http-backend`` (a CGI program, run per request as git documents it in
git-http-backend(1)), behind a small WSGI front that asks for the forge's token as HTTP Basic
credentials (any user name, the token as password, as Gitea, GitHub and GitLab take it)."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.jsonhttp import WsgiLoopback

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
MAX_BODY = 64 * 1024 * 1024


class GitServer:
    """Serves the bare repositories under ``root`` at ``http://HOST:PORT/OWNER/NAME.git``;
    pushes and fetches need ``token``. ``pushes`` lists the refs each push updated."""

    def __init__(self, root: Path, token: str, host: str = "127.0.0.1") -> None:
        self.root = root
        self.token = token
        self.pushes: list[str] = []
        self.loopback = WsgiLoopback(self.app, host)
        self.url = self.loopback.address
        self.close = self.loopback.close

    def bare(self, repo: str) -> Path:
        return self.root / f"{repo}.git"

    def create(self, repo: str, files: dict[str, str], branch: str = "main") -> str:
        """A bare repository ``repo`` (``owner/name``) with one commit of ``files`` on
        ``branch``; its clone URL."""
        bare = self.bare(repo)
        bare.parent.mkdir(parents=True, exist_ok=True)
        run("git", "init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
        run("git", "-C", str(bare), "config", "http.receivepack", "true")
        seed = self.root / ".seed" / repo
        seed.mkdir(parents=True)
        run("git", "init", "--quiet", f"--initial-branch={branch}", str(seed))
        for name, text in files.items():
            (seed / name).parent.mkdir(parents=True, exist_ok=True)
            (seed / name).write_text(text)
        run("git", "-C", str(seed), "add", "--all")
        run("git", "-C", str(seed), "-c", "user.name=seed", "-c", "user.email=s@x.invalid",
            "commit", "--quiet", "-m", "first")
        run("git", "-C", str(seed), "push", "--quiet", str(bare), f"{branch}:{branch}")
        return f"{self.url}/{repo}.git"

    def branches(self, repo: str) -> dict[str, str]:
        out = run("git", "-C", str(self.bare(repo)), "for-each-ref",
                  "--format=%(refname:short) %(objectname)", "refs/heads")
        return dict(line.split(" ", 1) for line in out.splitlines())

    def files(self, repo: str, ref: str) -> list[str]:
        """The paths of every file in ``ref``'s tree."""
        return run("git", "-C", str(self.bare(repo)), "ls-tree", "-r", "--name-only",
                   ref).splitlines()

    def show(self, repo: str, ref: str, path: str) -> str:
        return run("git", "-C", str(self.bare(repo)), "show", f"{ref}:{path}")

    def authorized(self, environ: dict[str, Any]) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not header.startswith("Basic "):
            return False
        try:
            _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return password == self.token

    def app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not self.authorized(environ):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'),
                                                ("Content-Type", "text/plain")])
            return [b"token needed\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            start_response("413 Content Too Large", [("Content-Type", "text/plain")])
            return [b"too large\n"]
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root),
               "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "fleet", "REMOTE_ADDR": "127.0.0.1",
               "GATEWAY_INTERFACE": "CGI/1.1",
               "REQUEST_METHOD": environ["REQUEST_METHOD"],
               "PATH_INFO": environ.get("PATH_INFO", ""),
               "QUERY_STRING": environ.get("QUERY_STRING", ""),
               "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
               "CONTENT_LENGTH": str(len(body)),
               "HTTP_CONTENT_ENCODING": environ.get("HTTP_CONTENT_ENCODING", ""),
               "GIT_PROTOCOL": environ.get("HTTP_GIT_PROTOCOL", "")}
        done = subprocess.run([HTTP_BACKEND], input=body, env=cgi, capture_output=True,
                              timeout=120, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        if environ.get("PATH_INFO", "").endswith("/git-receive-pack") and done.returncode == 0:
            self.pushes.append(environ["PATH_INFO"])
        start_response(status, headers)
        return [payload]


def run(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True,
                          env={"PATH": os.environ["PATH"], "HOME": "/nonexistent",
                               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"},
                          ).stdout

