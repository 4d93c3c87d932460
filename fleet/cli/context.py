"""State shared by every ``fleet`` subcommand (the ``ctx.obj``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from fleet.core.registry import Registry, load_registry, resolve_registry_path


@dataclass
class CliContext:
    """The global options and the registry, loaded once on first use."""

    registry_path: str | None
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        """The validated registry (raises :class:`fleet.core.errors.RegistryError`)."""
        if self._registry is None:
            self._registry = load_registry(resolve_registry_path(self.registry_path))
        return self._registry


pass_cli = click.make_pass_decorator(CliContext)
