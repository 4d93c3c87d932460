"""Gitea's REST API (``http(s)://HOST/api/v1``), documented endpoints only:

- ``GET /repos/{owner}/{repo}/issues?state=open&labels=L&type=issues&page=&limit=`` (paged by
  ``Link: rel="next"``, with ``X-Total-Count``);
- ``GET /repos/{owner}/{repo}/issues/{index}``, ``GET|POST .../issues/{index}/comments``;
- ``GET|POST /repos/{owner}/{repo}/pulls`` (409 when one is open already),
  ``GET /repos/{owner}/{repo}/pulls/{index}`` (``merged``);
- ``GET /repos/{owner}/{repo}`` (``default_branch``).

Authentication: ``Authorization: token TOKEN``. Issue and pull request objects have GitHub's
shape (``number``, ``html_url``, ``state``, ``head.ref``; ``pull_request`` is null on an issue),
so they are read the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fleet.node.work.forges.base import ForgeClient, ForgeHttp, Issue, PullRequest
from fleet.node.work.forges.github import issue, pull_request

PAGE_SIZE = 50  # Gitea's default MAX_RESPONSE_ITEMS


class Gitea(ForgeClient):
    """One Gitea repository (``owner/name``)."""

    kind = "gitea"
    conflict = 409

    def __init__(self, api_url: str, repo: str, token: str, page_size: int = PAGE_SIZE,
                 **options: Any) -> None:
        owner, name = repo.split("/", 1)
        self.page_size = page_size
        super().__init__(ForgeHttp(self.kind, api_url, token,
                                   {"Authorization": f"token {token}"}, **options),
                         f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}")

    def issue_params(self, label: str) -> dict[str, Any]:
        return {"state": "open", "labels": label, "type": "issues", "page": 1,
                "limit": self.page_size}

    def pull_params(self, head: str) -> dict[str, Any]:
        return {"state": "open", "page": 1, "limit": self.page_size}

    def comment_params(self) -> dict[str, Any]:
        return {}  # Gitea answers an issue's comments in one list

    def pull_body(self, head: str, base: str, title: str, body: str) -> dict[str, Any]:
        return {"title": title, "head": head, "base": base, "body": body}

    def parse_issue(self, data: dict[str, Any]) -> Issue | None:
        return None if data.get("pull_request") else issue(data, self.kind)

    def parse_pull(self, data: dict[str, Any]) -> PullRequest:
        return pull_request(data, self.kind)
