"""GitHub's REST API (``https://api.github.com``, or ``https://HOST/api/v3`` on GitHub
Enterprise Server), documented endpoints only:

- ``GET /repos/{owner}/{repo}/issues?state=open&labels=L&per_page=&page=`` (pull requests are
  listed there too, with a ``pull_request`` key: left out), paged by ``Link: rel="next"``;
- ``GET /repos/{owner}/{repo}/issues/{n}``, ``GET|POST /repos/{owner}/{repo}/issues/{n}/comments``;
- ``GET|POST /repos/{owner}/{repo}/pulls`` (``head``, ``base``, ``title``, ``body``; 422 when one
  is open already), ``GET /repos/{owner}/{repo}/pulls/{n}`` (``merged``);
- ``GET /repos/{owner}/{repo}`` (``default_branch``).

Authentication: ``Authorization: Bearer TOKEN``, ``Accept: application/vnd.github+json``,
``X-GitHub-Api-Version: 2022-11-28``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fleet.node.work.forges.base import (
    ForgeClient,
    ForgeHttp,
    Issue,
    PullRequest,
    number,
    record,
    text,
    web_url,
)

API_VERSION = "2022-11-28"
PAGE_SIZE = 100  # the documented maximum of per_page


class GitHub(ForgeClient):
    """One GitHub repository (``owner/name``)."""

    kind = "github"

    def __init__(self, api_url: str, repo: str, token: str, page_size: int = PAGE_SIZE,
                 **options: Any) -> None:
        self.owner, name = repo.split("/", 1)
        self.page_size = page_size
        super().__init__(ForgeHttp(self.kind, api_url, token, {
            "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION}, **options),
            f"/repos/{quote(self.owner, safe='')}/{quote(name, safe='')}")

    def issue_params(self, label: str) -> dict[str, Any]:
        return {"state": "open", "labels": label, "per_page": self.page_size, "page": 1}

    def pull_params(self, head: str) -> dict[str, Any]:
        return {"state": "open", "head": f"{self.owner}:{head}", "per_page": self.page_size,
                "page": 1}

    def pull_body(self, head: str, base: str, title: str, body: str) -> dict[str, Any]:
        return {"title": title, "head": head, "base": base, "body": body}

    def parse_issue(self, data: dict[str, Any]) -> Issue | None:
        return None if data.get("pull_request") is not None else issue(data, self.kind)

    def parse_pull(self, data: dict[str, Any]) -> PullRequest:
        return pull_request(data, self.kind)


def issue(data: dict[str, Any], kind: str) -> Issue:
    """An issue object of the GitHub (and Gitea) API."""
    labels = data.get("labels") or []
    names = [label.get("name") if isinstance(label, dict) else label for label in labels]
    return Issue(number=number(data.get("number"), "number", kind),
                 title=text(data.get("title"), "title", kind),
                 body=text(data.get("body"), "body", kind),
                 url=web_url(data.get("html_url"), "html_url", kind),
                 labels=tuple(name for name in names if isinstance(name, str)),
                 state="open" if data.get("state") == "open" else "closed")


def pull_request(data: dict[str, Any], kind: str) -> PullRequest:
    """A pull request object of the GitHub (and Gitea) API: merged when ``merged`` or
    ``merged_at`` says so, else its ``state``."""
    merged = data.get("merged") is True or bool(data.get("merged_at"))
    state = "merged" if merged else ("open" if data.get("state") == "open" else "closed")
    head, base = record(data.get("head"), kind), record(data.get("base"), kind)
    return PullRequest(number=number(data.get("number"), "number", kind),
                       url=web_url(data.get("html_url"), "html_url", kind), state=state,
                       head=text(head.get("ref"), "head.ref", kind, 255),
                       base=text(base.get("ref"), "base.ref", kind, 255),
                       same_repo=same_repo(head, base))


def same_repo(head: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether a pull request's head is a branch of its base's repository: by ``repo_id``
    (Gitea), else ``repo.full_name``, else the owner in ``label`` (``owner:branch``); False
    when none of them says so."""
    for key in ("repo_id",):
        if isinstance(head.get(key), int) and isinstance(base.get(key), int):
            return bool(head[key] == base[key])
    repos = [side.get("repo") for side in (head, base)]
    if all(isinstance(repo, dict) and isinstance(repo.get("full_name"), str) for repo in repos):
        return str(repos[0]["full_name"]).lower() == str(repos[1]["full_name"]).lower()  # type: ignore[index]
    labels = [side.get("label") for side in (head, base)]
    if all(isinstance(label, str) and ":" in label for label in labels):
        return str(labels[0]).split(":", 1)[0].lower() == str(labels[1]).split(":", 1)[0].lower()
    return False
