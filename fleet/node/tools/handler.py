"""``python3 -m fleet.node.tools.handler module:function``: call a Python tool handler with the
arguments read as JSON from stdin; print its result as JSON."""

from __future__ import annotations

import importlib
import json
import sys


def main(target: str) -> int:
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name)
    result = function(**json.loads(sys.stdin.read() or "{}"))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
