"""``python3 -m fleet.runtime``: the built-in agent runtime."""

import sys

from fleet.runtime import main

sys.exit(main())
