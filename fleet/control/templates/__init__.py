"""Templates the deploy renders (package data, read with :mod:`importlib.resources`)."""

from importlib.resources import files


def read_template(name: str) -> str:
    """The text of the template ``name`` shipped in this package."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")
