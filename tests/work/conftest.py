"""Work fixtures: the scripted model provider of the runtime tests (OpenAI wire format)."""

from tests.runtime.conftest import provider

__all__ = ["provider"]
