"""A forge stand-in: a small Flask app speaking Gitea's, GitHub's or GitLab's documented wire
format for exactly the endpoints the forge clients (:mod:`fleet.node.work.forges`) call.

State lives in memory (:class:`ForgeState`: issues with labels, comments, pull/merge requests);
a test can make it paginate at a small page size (``page_cap``), answer the next calls with a
rate-limit refusal (:meth:`ForgeState.throttle`) or put a next link on another origin
(``next_origin``). Every JSON body it sends is checked against the forge's JSON Schema in
``tests/work/schemas/`` (written from the forge's docs); violations are kept in
``schema_errors`` for the test to assert empty. :func:`serve` runs it on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jsonschema
from flask import Flask, Response, abort, request

from tests.jsonhttp import WsgiLoopback

SCHEMAS = Path(__file__).parent / "schemas"
PREFIX = {"github": "", "gitea": "/api/v1", "gitlab": "/api/v4"}
MAX_PAGE = {"github": 100, "gitea": 50, "gitlab": 100}  # each forge's documented cap
TOKEN = "glpat-Standin0Token0Value0123"
STAMP = "2026-12-01T10:00:00Z"


@dataclass
class Item:
    """An issue or pull/merge request of the stand-in's one repository."""

    number: int
    title: str
    body: str = ""
    labels: list[str] = field(default_factory=list)
    state: str = "open"  # open | closed | merged (pull requests)
    head: str = ""
    base: str = ""
    pull: bool = False
    fork: str = ""  # a pull request from this owner's fork (same branch name)


@dataclass
class ForgeState:
    """The stand-in's repository (``owner/name``) and its knobs."""

    kind: str
    repo: str = "acme/shop"
    token: str = TOKEN
    web: str = "https://forge.invalid"  # the forge's site: issue and pull request pages
    default_branch: str = "main"
    items: list[Item] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    page_cap: int | None = None
    next_origin: str | None = None
    clock: Callable[[], float] = lambda: 1_800_000_000.0
    throttled: int = 0
    retry_after: str | None = None
    reset_in: float | None = None
    schema_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    hold_comments: threading.Event | None = None
    """While set to an event, a comment waits (up to 120 s) until it is set."""
    comment_waiting: threading.Event = field(default_factory=threading.Event)

    def add_issue(self, title: str, labels: list[str], state: str = "open") -> Item:
        """A new issue (numbered after every issue and pull request, as forges do)."""
        item = Item(len(self.items) + 1, title, f"Body of {title}", labels, state)
        self.items.append(item)
        return item

    def add_pull(self, head: str, base: str, labels: list[str] | None = None,
                 fork: str = "") -> Item:
        item = Item(len(self.items) + 1, f"PR from {head}", "", labels or [], "open", head,
                    base, pull=True, fork=fork)
        self.items.append(item)
        return item

    def throttle(self, count: int, retry_after: str | None = None,
                 reset_in: float | None = None) -> None:
        """Refuse the next ``count`` calls as the forge's rate limit does."""
        self.throttled, self.retry_after, self.reset_in = count, retry_after, reset_in

    def pulls(self) -> list[Item]:
        return [item for item in self.items if item.pull]


def create_app(kind: str, state: ForgeState | None = None) -> Flask:
    """The stand-in for forge ``kind`` (gitea, github or gitlab)."""
    app = Flask(__name__)
    forge = state or ForgeState(kind)
    app.extensions["forge"] = forge
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    prefix = PREFIX[kind]
    wire = {"github": GitHubWire, "gitea": GiteaWire, "gitlab": GitLabWire}[kind](forge)

    @app.before_request
    def gate() -> Response | None:
        forge.requests.append(f"{request.method} {request.full_path}")
        if forge.throttled:
            forge.throttled -= 1
            return wire.limited()
        if not wire.authorized():
            return wire.error(401)
        if request.endpoint == "comment" and forge.hold_comments is not None:
            forge.comment_waiting.set()
            forge.hold_comments.wait(120)
        return None

    @app.after_request
    def check(response: Response) -> Response:
        if response.is_json and request.endpoint:
            name = wire.schema_name(request.endpoint, response.status_code)
            try:
                definition = {"$ref": f"#/$defs/{name}", "$defs": schema["$defs"]}
                jsonschema.validate(response.get_json(), definition)
            except jsonschema.ValidationError as exc:
                forge.schema_errors.append(f"{request.endpoint}: {exc.message}")
        for key, value in wire.limit_headers().items():
            response.headers.setdefault(key, value)
        return response

    repo = "/projects/<path:project>" if kind == "gitlab" else "/repos/<owner>/<name>"
    child = "merge_requests" if kind == "gitlab" else "pulls"
    note = "notes" if kind == "gitlab" else "comments"
    app.add_url_rule(f"{prefix}{repo}", "repo", wire.guarded(wire.repository))
    app.add_url_rule(f"{prefix}{repo}/issues", "issues", wire.guarded(wire.list_issues))
    app.add_url_rule(f"{prefix}{repo}/issues/<int:number>", "issue", wire.guarded(wire.issue))
    app.add_url_rule(f"{prefix}{repo}/issues/<int:number>/{note}", "comment",
                     wire.guarded(wire.comment), methods=["GET", "POST"])
    app.add_url_rule(f"{prefix}{repo}/{child}", "pulls", wire.guarded(wire.pulls),
                     methods=["GET", "POST"])
    app.add_url_rule(f"{prefix}{repo}/{child}/<int:number>", "pull", wire.guarded(wire.pull))
    return app


class Wire:
    """What the three forges share: pagination by page number, the token check."""

    kind = ""
    size_param = "per_page"
    schemas = {"repo": "repository", "issues": "issue_list", "issue": "issue",
               "comment": "comment", "pulls": "pull_list", "new_pull": "pull_request",
               "pull": "pull_request"}
    """The schema (``$defs`` name) of each endpoint's answer."""

    def schema_name(self, endpoint: str, status: int) -> str:
        if status >= 400:
            return "error"
        if endpoint == "comment" and request.method == "GET":
            return f"{self.schemas['comment']}_list"
        return self.schemas["new_pull" if endpoint == "pulls" and request.method == "POST"
                            else endpoint]

    def pull(self, number: int) -> Response:
        return self.json(self.pull_data(self.find(number, pull=True)))

    def comment(self, number: int) -> Response:
        """POST: a new comment on issue ``number``; GET: its comments, oldest first, paged."""
        self.find(number, pull=False if self.kind == "gitlab" else None)
        if request.method == "GET":
            mine = [(index, found["body"]) for index, found in enumerate(self.forge.comments)
                    if found["issue"] == number]
            chosen, headers = self.page(mine)
            return self.json([self.comment_data(number, 3000 + index, body)
                              for index, body in chosen], headers=headers)
        body = self.body().get("body")
        self.forge.comments.append({"issue": number, "body": body})
        return self.json(self.comment_data(number, 3000 + len(self.forge.comments) - 1, body),
                         201)

    def comment_data(self, number: int, comment_id: int, body: Any) -> dict[str, Any]:
        raise NotImplementedError

    def pull_data(self, item: Item) -> dict[str, Any]:
        raise NotImplementedError

    def __init__(self, forge: ForgeState) -> None:
        self.forge = forge

    def guarded(self, view: Callable[..., Any]) -> Callable[..., Any]:
        """``view`` answering 404 for any repository but the stand-in's."""
        def run(**kwargs: Any) -> Any:
            if not self.is_repo(kwargs.pop("owner", None), kwargs.pop("name", None),
                                kwargs.pop("project", None)):
                return self.error(404)
            return view(**kwargs)
        run.__name__ = view.__name__
        return run

    def is_repo(self, owner: str | None, name: str | None, project: str | None) -> bool:
        return f"{owner}/{name}" == self.forge.repo

    def authorized(self) -> bool:
        raise NotImplementedError

    def error(self, status: int, message: str = "") -> Response:
        raise NotImplementedError

    def limited(self) -> Response:
        raise NotImplementedError

    def limit_headers(self) -> dict[str, str]:
        return {}

    def reset_at(self) -> int:
        return int(self.forge.clock() + (self.forge.reset_in or 0))

    def page(self, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """One page of ``items`` as asked (``page``, the size parameter) and the headers
        that point to the others (``Link``)."""
        size = int(request.args.get(self.size_param, 30))
        size = max(1, min(size, MAX_PAGE[self.kind], self.forge.page_cap or size))
        number = max(1, int(request.args.get("page", 1)))
        last = max(1, -(-len(items) // size))
        chosen = items[(number - 1) * size:number * size]
        origin = self.forge.next_origin or request.host_url.rstrip("/")
        links = []
        if number < last:
            links.append(f'<{self.link(origin, number + 1)}>; rel="next"')
            links.append(f'<{self.link(origin, last)}>; rel="last"')
        headers = {"Link": ", ".join(links)} if links else {}
        headers.update(self.page_headers(number, size, last, len(items)))
        return chosen, headers

    def link(self, origin: str, page: int) -> str:
        args = {**request.args.to_dict(), "page": str(page)}
        path = str(request.environ.get("RAW_URI") or request.path).split("?")[0]  # as sent
        return f"{origin}{path}?{urlencode(args)}"

    def page_headers(self, number: int, size: int, last: int, total: int) -> dict[str, str]:
        return {}

    def json(self, data: Any, status: int = 200,
             headers: dict[str, str] | None = None) -> Response:
        response = Response(json.dumps(data), status, mimetype="application/json")
        response.headers.update(headers or {})
        return response

    def find(self, number: int, pull: bool | None = None) -> Item:
        for item in self.forge.items:
            if item.number == number and (pull is None or item.pull == pull):
                return item
        abort(self.error(404))

    def body(self) -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            abort(self.error(400, "body is not a JSON object"))
        return data


def user(login: str = "fleet-bot") -> dict[str, Any]:
    return {"login": login, "id": 7, "html_url": f"https://forge.invalid/{login}",
            "avatar_url": f"https://forge.invalid/{login}.png", "type": "User"}


class GitHubWire(Wire):
    """GitHub REST (docs.github.com/rest: issues, pulls, issue comments, repos)."""

    kind = "github"

    def authorized(self) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.forge.token}"

    def error(self, status: int, message: str = "") -> Response:
        text = {401: "Bad credentials", 404: "Not Found"}.get(status, message)
        return self.json({"message": text, "documentation_url": "https://docs.github.com/rest",
                          "status": str(status)}, status)

    def limit_headers(self) -> dict[str, str]:
        remaining = "0" if self.forge.throttled or self.forge.reset_in else "4999"
        return {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": remaining,
                "X-RateLimit-Used": "1", "X-RateLimit-Reset": str(self.reset_at()),
                "X-RateLimit-Resource": "core"}

    def limited(self) -> Response:
        response = self.json({"message": "API rate limit exceeded for user ID 7.",
                              "documentation_url": "https://docs.github.com/rest/overview/"
                              "rate-limits-for-the-rest-api", "status": "403"}, 403)
        response.headers.update({**self.limit_headers(), "X-RateLimit-Remaining": "0"})
        if self.forge.retry_after is not None:
            response.headers["Retry-After"] = self.forge.retry_after
        return response

    def url(self, path: str) -> str:
        return f"{request.host_url.rstrip('/')}{PREFIX[self.kind]}/repos/{self.forge.repo}{path}"

    def html(self, path: str) -> str:
        return f"{self.forge.web}/{self.forge.repo}{path}"

    def issue_data(self, item: Item) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": 1000 + item.number, "node_id": f"I_{item.number}",
            "url": self.url(f"/issues/{item.number}"),
            "repository_url": self.url(""), "html_url": self.html(f"/issues/{item.number}"),
            "number": item.number, "state": "open" if item.state == "open" else "closed",
            "title": item.title, "body": item.body, "user": user("octocat"),
            "labels": [{"id": index + 1, "node_id": f"L_{index}", "name": name,
                        "color": "ededed", "default": False, "description": None,
                        "url": self.url(f"/labels/{name}")}
                       for index, name in enumerate(item.labels)],
            "assignee": None, "assignees": [], "milestone": None, "locked": False,
            "comments": 0, "created_at": STAMP, "updated_at": STAMP,
            "closed_at": None if item.state == "open" else STAMP,
            "author_association": "OWNER"}
        if item.pull:
            data["pull_request"] = {"url": self.url(f"/pulls/{item.number}"),
                                    "html_url": self.html(f"/pull/{item.number}"),
                                    "diff_url": self.html(f"/pull/{item.number}.diff"),
                                    "patch_url": self.html(f"/pull/{item.number}.patch"),
                                    "merged_at": STAMP if item.state == "merged" else None}
        return data

    def pull_data(self, item: Item) -> dict[str, Any]:
        def side(ref: str, owner: str = self.forge.repo.split("/")[0]) -> dict[str, Any]:
            return {"label": f"{owner}:{ref}", "ref": ref, "sha": "0" * 40,
                    "user": user(owner), "repo": None}
        return {"id": 2000 + item.number, "node_id": f"PR_{item.number}",
                "url": self.url(f"/pulls/{item.number}"),
                "html_url": self.html(f"/pull/{item.number}"), "number": item.number,
                "state": "open" if item.state == "open" else "closed", "locked": False,
                "title": item.title, "body": item.body, "user": user(),
                "created_at": STAMP, "updated_at": STAMP,
                "closed_at": None if item.state == "open" else STAMP,
                "merged_at": STAMP if item.state == "merged" else None,
                "head": side(item.head, *([item.fork] if item.fork else [])),
                "base": side(item.base), "draft": False,
                "merged": item.state == "merged"}

    def repository(self) -> Response:
        owner, name = self.forge.repo.split("/")
        return self.json({"id": 1, "node_id": "R_1", "name": name, "full_name": self.forge.repo,
                          "private": False, "owner": user(owner), "html_url": self.html(""),
                          "default_branch": self.forge.default_branch})

    def list_issues(self) -> Response:
        if request.args.get("state", "open") != "open":
            return self.error(422, "Validation Failed")
        wanted = {name for name in request.args.get("labels", "").split(",") if name}
        items = [self.issue_data(item) for item in self.forge.items
                 if item.state == "open" and wanted <= set(item.labels)]
        chosen, headers = self.page(items)
        return self.json(chosen, headers=headers)

    def issue(self, number: int) -> Response:
        return self.json(self.issue_data(self.find(number)))

    def comment_data(self, number: int, comment_id: int, body: Any) -> dict[str, Any]:
        return {"id": comment_id, "node_id": f"IC_{comment_id}",
                "url": self.url(f"/issues/comments/{comment_id}"),
                "html_url": self.html(f"/issues/{number}#issuecomment-{comment_id}"),
                "issue_url": self.url(f"/issues/{number}"), "body": body,
                "user": user(), "created_at": STAMP, "updated_at": STAMP,
                "author_association": "MEMBER"}

    def open_pulls(self, head: str | None, owner: str | None = None) -> list[Item]:
        """Open pull requests (from ``head``; of ``owner``'s repository: the repository's
        own owner, or a fork's)."""
        return [item for item in self.forge.pulls() if item.state == "open"
                and (head is None or item.head == head)
                and (owner is None or (item.fork or self.forge.repo.split("/")[0]) == owner)]

    def pulls(self) -> Response:
        if request.method == "GET":
            head = request.args.get("head")
            owner, branch = head.split(":", 1) if head and ":" in head else (None, None)
            chosen, headers = self.page([self.pull_data(item)
                                         for item in self.open_pulls(branch, owner)])
            return self.json(chosen, headers=headers)
        data = self.body()
        if self.open_pulls(data.get("head"), self.forge.repo.split("/")[0]):
            return self.conflict(data.get("head"))
        item = self.forge.add_pull(str(data.get("head")), str(data.get("base")))
        item.title, item.body = str(data.get("title")), str(data.get("body"))
        return self.json(self.pull_data(item), 201)

    def conflict(self, head: Any) -> Response:
        owner = self.forge.repo.split("/")[0]
        return self.json({"message": "Validation Failed", "errors": [
            {"resource": "PullRequest", "code": "custom",
             "message": f"A pull request already exists for {owner}:{head}."}],
            "documentation_url": "https://docs.github.com/rest/pulls/pulls",
            "status": "422"}, 422)



class GiteaWire(GitHubWire):
    """Gitea API v1 (its swagger: Issue, PullRequest, Comment, Repository, APIError)."""

    kind = "gitea"
    size_param = "limit"

    def authorized(self) -> bool:
        return request.headers.get("Authorization") == f"token {self.forge.token}"

    def error(self, status: int, message: str = "") -> Response:
        text = {401: "token is required", 404: "The target couldn't be found."}.get(
            status, message)
        return self.json({"errors": [], "message": text,
                          "url": f"{request.host_url}api/swagger"}, status)

    def limit_headers(self) -> dict[str, str]:
        return {}

    def limited(self) -> Response:
        response = self.json({"message": "too many requests", "url": ""}, 429)
        response.headers["Retry-After"] = self.forge.retry_after or "1"
        return response

    def page_headers(self, number: int, size: int, last: int, total: int) -> dict[str, str]:
        return {"X-Total-Count": str(total)}

    def html(self, path: str) -> str:
        return f"{self.forge.web}/{self.forge.repo}{path.replace('/pull/', '/pulls/')}"

    def issue_data(self, item: Item) -> dict[str, Any]:
        owner, name = self.forge.repo.split("/")
        return {"id": 1000 + item.number, "url": self.url(f"/issues/{item.number}"),
                "html_url": self.html(f"/{'pulls' if item.pull else 'issues'}/{item.number}"),
                "number": item.number, "user": user("gitea"), "original_author": "",
                "title": item.title, "body": item.body, "ref": "",
                "labels": [{"id": index + 1, "name": name, "color": "ededed",
                            "description": "", "url": self.url(f"/labels/{index + 1}")}
                           for index, name in enumerate(item.labels)],
                "milestone": None, "assignee": None, "assignees": None,
                "state": "open" if item.state == "open" else "closed", "is_locked": False,
                "comments": 0, "created_at": STAMP, "updated_at": STAMP,
                "closed_at": None if item.state == "open" else STAMP, "due_date": None,
                "pull_request": {"merged": item.state == "merged",
                                 "merged_at": STAMP if item.state == "merged" else None}
                if item.pull else None,
                "repository": {"id": 1, "name": name, "owner": owner,
                               "full_name": self.forge.repo}}

    def pull_data(self, item: Item) -> dict[str, Any]:
        def side(ref: str, repo_id: int = 1) -> dict[str, Any]:
            return {"label": ref, "ref": ref, "sha": "0" * 40, "repo_id": repo_id}
        return {"id": 2000 + item.number, "url": self.html(f"/pulls/{item.number}"),
                "number": item.number, "user": user(), "title": item.title,
                "body": item.body, "labels": [], "milestone": None, "assignee": None,
                "state": "open" if item.state == "open" else "closed", "is_locked": False,
                "comments": 0, "html_url": self.html(f"/pulls/{item.number}"),
                "diff_url": self.html(f"/pulls/{item.number}.diff"),
                "patch_url": self.html(f"/pulls/{item.number}.patch"),
                "mergeable": True, "merged": item.state == "merged",
                "merged_at": STAMP if item.state == "merged" else None,
                "merge_commit_sha": None, "merged_by": None,
                "base": side(item.base), "head": side(item.head, 2 if item.fork else 1),
                "created_at": STAMP, "updated_at": STAMP,
                "closed_at": None if item.state == "open" else STAMP}

    def list_issues(self) -> Response:
        wanted = {name for name in request.args.get("labels", "").split(",") if name}
        kind = request.args.get("type")
        items = [self.issue_data(item) for item in self.forge.items
                 if item.state == request.args.get("state", "open")
                 and wanted <= set(item.labels)
                 and (kind is None or (kind == "pulls") == item.pull)]
        chosen, headers = self.page(items)
        return self.json(chosen, headers=headers)

    def comment_data(self, number: int, comment_id: int, body: Any) -> dict[str, Any]:
        return {"id": comment_id,
                "html_url": self.html(f"/issues/{number}#issuecomment-{comment_id}"),
                "pull_request_url": "", "issue_url": self.html(f"/issues/{number}"),
                "user": user(), "original_author": "", "body": body,
                "created_at": STAMP, "updated_at": STAMP}

    def conflict(self, head: Any) -> Response:
        return self.json({"message": "pull request already exists for these targets",
                          "url": f"{request.host_url}api/swagger"}, 409)

    def pulls(self) -> Response:
        if request.method == "GET":
            chosen, headers = self.page([self.pull_data(item) for item in self.forge.pulls()
                                         if item.state == request.args.get("state", "open")])
            return self.json(chosen, headers=headers)
        return super().pulls()

    def repository(self) -> Response:
        owner, name = self.forge.repo.split("/")
        return self.json({"id": 1, "name": name, "full_name": self.forge.repo,
                          "owner": user(owner), "private": False, "html_url": self.html(""),
                          "clone_url": f"{self.html('')}.git",
                          "default_branch": self.forge.default_branch})


class GitLabWire(Wire):
    """GitLab REST v4 (docs.gitlab.com/api: issues, merge_requests, notes, projects)."""

    kind = "gitlab"

    def is_repo(self, owner: str | None, name: str | None, project: str | None) -> bool:
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI", "")
        encoded = self.forge.repo.replace("/", "%2F")
        return project == self.forge.repo and f"/projects/{encoded}" in raw

    def authorized(self) -> bool:
        return request.headers.get("PRIVATE-TOKEN") == self.forge.token

    def error(self, status: int, message: str = "") -> Response:
        text = {401: "401 Unauthorized", 404: "404 Project Not Found"}.get(status, message)
        return self.json({"message": text}, status)

    def limit_headers(self) -> dict[str, str]:
        remaining = "0" if self.forge.throttled or self.forge.reset_in else "1999"
        return {"RateLimit-Limit": "2000", "RateLimit-Observed": "1",
                "RateLimit-Remaining": remaining, "RateLimit-Reset": str(self.reset_at())}

    def limited(self) -> Response:
        response = Response("Retry later\n", 429, mimetype="text/plain")
        response.headers.update({**self.limit_headers(), "RateLimit-Remaining": "0"})
        if self.forge.retry_after is not None:
            response.headers["Retry-After"] = self.forge.retry_after
        return response

    def page_headers(self, number: int, size: int, last: int, total: int) -> dict[str, str]:
        return {"X-Page": str(number), "X-Per-Page": str(size), "X-Total": str(total),
                "X-Total-Pages": str(last), "X-Prev-Page": str(number - 1) if number > 1 else "",
                "X-Next-Page": str(number + 1) if number < last else ""}

    def web(self, path: str) -> str:
        return f"{self.forge.web}/{self.forge.repo}/-{path}"

    def issue_data(self, item: Item) -> dict[str, Any]:
        return {"id": 1000 + item.number, "iid": item.number, "project_id": 1,
                "title": item.title, "description": item.body,
                "state": "opened" if item.state == "open" else "closed",
                "created_at": STAMP, "updated_at": STAMP,
                "closed_at": None if item.state == "open" else STAMP, "closed_by": None,
                "labels": item.labels, "milestone": None, "assignees": [],
                "author": {"id": 7, "username": "root", "name": "Root", "state": "active",
                           "web_url": "https://forge.invalid/root"},
                "type": "ISSUE", "user_notes_count": 0,
                "web_url": self.web(f"/issues/{item.number}"),
                "references": {"short": f"#{item.number}", "relative": f"#{item.number}",
                               "full": f"{self.forge.repo}#{item.number}"}}

    def pull_data(self, item: Item) -> dict[str, Any]:
        state = {"open": "opened", "merged": "merged", "closed": "closed"}[item.state]
        return {"id": 2000 + item.number, "iid": item.number, "project_id": 1,
                "title": item.title, "description": item.body, "state": state,
                "created_at": STAMP, "updated_at": STAMP,
                "merged_at": STAMP if state == "merged" else None,
                "closed_at": STAMP if state == "closed" else None,
                "target_branch": item.base, "source_branch": item.head,
                "source_project_id": 2 if item.fork else 1, "target_project_id": 1,
                "labels": [],
                "draft": False, "merge_status": "can_be_merged", "sha": "0" * 40,
                "author": {"id": 7, "username": "fleet-bot", "name": "Fleet",
                           "state": "active", "web_url": "https://forge.invalid/fleet-bot"},
                "web_url": self.web(f"/merge_requests/{item.number}"),
                "references": {"short": f"!{item.number}", "relative": f"!{item.number}",
                               "full": f"{self.forge.repo}!{item.number}"}}

    def repository(self) -> Response:
        return self.json({"id": 1, "name": self.forge.repo.rsplit("/", 1)[1],
                          "path": self.forge.repo.rsplit("/", 1)[1],
                          "path_with_namespace": self.forge.repo,
                          "default_branch": self.forge.default_branch,
                          "web_url": f"https://forge.invalid/{self.forge.repo}"})

    def list_issues(self) -> Response:
        wanted = {name for name in request.args.get("labels", "").split(",") if name}
        state = {"opened": "open", "closed": "closed"}.get(request.args.get("state", ""))
        items = [self.issue_data(item) for item in self.forge.items if not item.pull
                 and (state is None or item.state == state) and wanted <= set(item.labels)]
        chosen, headers = self.page(items)
        return self.json(chosen, headers=headers)

    def issue(self, number: int) -> Response:
        return self.json(self.issue_data(self.find(number, pull=False)))

    def comment_data(self, number: int, comment_id: int, body: Any) -> dict[str, Any]:
        return {"id": comment_id, "type": None, "body": body,
                "author": {"id": 7, "username": "fleet-bot", "name": "Fleet",
                           "state": "active", "web_url": "https://forge.invalid/fleet-bot"},
                "created_at": STAMP, "updated_at": STAMP, "system": False,
                "noteable_id": 1000 + number, "noteable_type": "Issue",
                "noteable_iid": number, "project_id": 1, "resolvable": False,
                "confidential": False, "internal": False}

    def pulls(self) -> Response:
        if request.method == "GET":
            state = {"opened": "open", "merged": "merged", "closed": "closed"}.get(
                request.args.get("state", ""))
            source = request.args.get("source_branch")
            chosen, headers = self.page([self.pull_data(item) for item in self.forge.pulls()
                                         if (state is None or item.state == state)
                                         and (source is None or item.head == source)])
            return self.json(chosen, headers=headers)
        data = self.body()
        head = data.get("source_branch")
        found = [item for item in self.forge.pulls()
                 if item.state == "open" and item.head == head and not item.fork]
        if found:
            return self.json({"message": ["Another open merge request already exists for this "
                                           f"source branch: !{found[0].number}"]}, 409)
        item = self.forge.add_pull(str(head), str(data.get("target_branch")))
        item.title, item.body = str(data.get("title")), str(data.get("description"))
        return self.json(self.pull_data(item), 201)

    schemas = {"repo": "project", "issues": "issue_list", "issue": "issue", "comment": "note",
               "pulls": "merge_request_list", "new_pull": "merge_request",
               "pull": "merge_request"}


def serve(app: Flask) -> WsgiLoopback:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; ``with`` yields its base URL."""
    return WsgiLoopback(app)
