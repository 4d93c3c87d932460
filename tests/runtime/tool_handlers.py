"""Python tool handlers used by the tool API tests."""


def count_words(text: str) -> dict[str, int]:
    """The number of words in ``text``."""
    return {"words": len(text.split())}


def echo_args(**args: object) -> dict[str, object]:
    """The arguments it was given."""
    return args
