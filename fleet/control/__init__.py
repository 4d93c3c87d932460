"""The controller's deploy half and its probes (never shipped to a node).

The rollout and its run records, the release builder, the expected state, the secrets file,
SSH settings and the pyinfra inventory, the renderer of every file that reaches a node (and
its templates), status, drift, key rotation, ``fleet init`` and ``fleet test``.
"""
