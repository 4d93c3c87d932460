"""Forge clients (Gitea, GitHub, GitLab) behind one :class:`~.base.Forge` protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleet.core.work_config import WorkSource
from fleet.node.work.forges.base import Forge, ForgeClient
from fleet.node.work.forges.gitea import Gitea
from fleet.node.work.forges.github import GitHub
from fleet.node.work.forges.gitlab import GitLab

CLIENTS: dict[str, Callable[..., ForgeClient]] = {
    "gitea": Gitea, "github": GitHub, "gitlab": GitLab}


def open_forge(source: WorkSource, token: str, **options: Any) -> Forge:
    """The client of ``source``'s forge, authenticated with ``token`` (the value of the
    secret ``source.token`` names); ``options`` go to :class:`~.base.ForgeHttp` (``clock``,
    ``sleep``, ``session``, ...) or set ``page_size``."""
    return CLIENTS[source.forge](source.api_url, source.repo, token, **options)
