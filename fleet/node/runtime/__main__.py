"""``python3 -m fleet.node.runtime``: the built-in agent runtime."""

import sys

from fleet.node.runtime.service import main

sys.exit(main())
