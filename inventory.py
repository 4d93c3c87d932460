"""pyinfra inventory generated from the fleet registry.

Uses ``registry.yaml`` beside this file, or the file named by ``$FLEET_REGISTRY``:

    pyinfra inventory.py debug-inventory
    FLEET_REGISTRY=/var/lib/sovereign-fleet/lab/registry.yaml pyinfra inventory.py deploy.py
"""

import os
from pathlib import Path

from pyinfra import logger
from pyinfra.api.exceptions import InventoryError

from fleet.control.inventory import host_key_warnings, inventory_groups
from fleet.core.errors import RegistryError
from fleet.core.registry import REGISTRY_ENV, load_registry

_registry_path = os.environ.get(REGISTRY_ENV) or Path(__file__).resolve().parent / "registry.yaml"
try:
    _registry = load_registry(_registry_path)
except RegistryError as _exc:
    raise InventoryError(f"{_exc}\nHint: {_exc.hint}") from None

for _warning in host_key_warnings(_registry):  # pyinfra refuses these hosts when connecting
    logger.warning(_warning)
globals().update(inventory_groups(_registry))
