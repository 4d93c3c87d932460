"""Whom the running gateway serves: its registry and its agent (set by
:func:`fleet.node.gateway.create_app`, read by every blueprint of the gateway)."""

from __future__ import annotations

from flask import current_app

from fleet.core.registry import Agent, Registry


def current_registry() -> Registry:
    """The registry the running gateway was started with."""
    registry: Registry = current_app.extensions["fleet.registry"]
    return registry


def current_agent() -> Agent:
    """The agent this gateway serves."""
    agent: Agent = current_app.extensions["fleet.agent"]
    return agent
