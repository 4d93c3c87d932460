"""The built-in agent runtime: ``python3 -m fleet.node.runtime`` under systemd, next to the agent's
gateway (unit ``fleet-runtime-NAME.service``, same environment and hardening).

It reads its settings from the environment the unit gives it: ``FLEET_AGENT``,
``FLEET_REGISTRY`` (the node's registry copy: model, provider URL and the name of the key's
secret), ``FLEET_STATE_DIR`` (where it writes ``runtime.json`` for ``/health``),
``FLEET_SOUL`` (its system prompt, read for every request), ``FLEET_BUS_PRIVATE_KEY`` (its
bus identity) and the provider's key under the name the registry gives.

The package itself imports nothing: the controller reads the runtime contract
(:mod:`fleet.node.runtime.state`) without loading the runtime's bus client; the service is
:mod:`fleet.node.runtime.service`.
"""
