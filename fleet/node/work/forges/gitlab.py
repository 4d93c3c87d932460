"""GitLab's REST API (``http(s)://HOST/api/v4``), documented endpoints only; ``:id`` is the
project path URL-encoded (``group%2Fsub%2Fname``):

- ``GET /projects/:id/issues?state=opened&labels=L&per_page=&page=`` (paged by
  ``X-Next-Page``, or ``Link: rel="next"``);
- ``GET /projects/:id/issues/:iid``, ``GET|POST /projects/:id/issues/:iid/notes``;
- ``GET|POST /projects/:id/merge_requests`` (``source_branch``, ``target_branch``, ``title``,
  ``description``; 409 when one is open already), ``GET /projects/:id/merge_requests/:iid``;
- ``GET /projects/:id`` (``default_branch``).

Authentication: ``PRIVATE-TOKEN: TOKEN``. Issues are numbered by ``iid``, link ``web_url``,
carry ``description`` and label names; states are ``opened``/``closed`` (merge requests also
``merged`` and ``locked``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from fleet.node.work.forges.base import (
    Answer,
    ForgeClient,
    ForgeHttp,
    Issue,
    PullRequest,
    number,
    text,
    web_url,
)

PAGE_SIZE = 100  # the documented maximum of per_page


class GitLab(ForgeClient):
    """One GitLab project (``group/.../name``)."""

    kind = "gitlab"
    pulls = "merge_requests"
    notes = "notes"
    conflict = 409

    def __init__(self, api_url: str, repo: str, token: str, page_size: int = PAGE_SIZE,
                 **options: Any) -> None:
        self.page_size = page_size
        super().__init__(ForgeHttp(self.kind, api_url, token, {"PRIVATE-TOKEN": token},
                                   **options), f"/projects/{quote(repo, safe='')}")

    def issue_params(self, label: str) -> dict[str, Any]:
        return {"state": "opened", "labels": label, "per_page": self.page_size, "page": 1}

    def pull_params(self, head: str) -> dict[str, Any]:
        return {"state": "opened", "source_branch": head, "per_page": self.page_size,
                "page": 1}

    def pull_body(self, head: str, base: str, title: str, body: str) -> dict[str, Any]:
        return {"source_branch": head, "target_branch": base, "title": title,
                "description": body}

    def parse_issue(self, data: dict[str, Any]) -> Issue | None:
        return issue(data)

    def parse_pull(self, data: dict[str, Any]) -> PullRequest:
        return merge_request(data)

    def next_page(self, answer: Answer) -> str | None:
        return next_page(answer)


def next_page(answer: Answer) -> str | None:
    """The next page's URL from ``X-Next-Page`` (empty on the last page): this answer's URL
    with ``page`` replaced."""
    page = answer.headers.get("X-Next-Page", "").strip()
    if not page.isdigit() or not page.isascii():
        return None
    parts = urlsplit(answer.url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "page"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("page", page)])))


def issue(data: dict[str, Any]) -> Issue:
    """A GitLab issue object."""
    labels = data.get("labels") or []
    return Issue(number=number(data.get("iid"), "iid", "gitlab"),
                 title=text(data.get("title"), "title", "gitlab"),
                 body=text(data.get("description"), "description", "gitlab"),
                 url=web_url(data.get("web_url"), "web_url", "gitlab"),
                 labels=tuple(label for label in labels if isinstance(label, str)),
                 state="open" if data.get("state") == "opened" else "closed")


MR_STATES = {"opened": "open", "locked": "open", "merged": "merged", "closed": "closed"}


def merge_request(data: dict[str, Any]) -> PullRequest:
    """A GitLab merge request object."""
    return PullRequest(number=number(data.get("iid"), "iid", "gitlab"),
                       url=web_url(data.get("web_url"), "web_url", "gitlab"),
                       state=MR_STATES.get(str(data.get("state")), "closed"),
                       head=text(data.get("source_branch"), "source_branch", "gitlab", 255),
                       base=text(data.get("target_branch"), "target_branch", "gitlab", 255),
                       same_repo=isinstance(data.get("source_project_id"), int)
                       and data.get("source_project_id") == data.get("target_project_id"))
