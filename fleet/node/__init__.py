"""What runs on an agent's node (shipped in every release, with :mod:`fleet.core` and ``bus``).

The gateway (:mod:`fleet.node.gateway`), the built-in runtime (:mod:`fleet.node.runtime`), the
tool runner (:mod:`fleet.node.tools`) and ``fleet-nodectl`` (:mod:`fleet.node.nodectl`,
stdlib only, installed on its own). Imports no controller code (a ``lint-imports`` contract).
"""
