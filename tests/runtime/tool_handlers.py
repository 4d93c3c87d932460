"""Python tool handlers used by the tool API tests."""


def count_words(text: str) -> dict[str, int]:
    """The number of words in ``text``."""
    return {"words": len(text.split())}
