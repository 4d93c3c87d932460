"""The one sha256 of a file or a text, hex, as every comparison of "the same content" uses it
(the gateway's /health, the expected state the controller judges against, the deploy's
soul). Standard library only: node-side code uses it too."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def text_sha256(text: str | bytes) -> str:
    """Hex sha256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """Hex sha256 of a file, or None when it cannot be read."""
    try:
        return text_sha256(Path(path).read_bytes())
    except OSError:
        return None
