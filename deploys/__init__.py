"""The phases of the fleet deploy, run in this order by ``deploy.py``.

preflight, baseline, release, soul, keys, services, sandbox, verify, audit: one module each,
plus ``context`` (per-host inputs and the operations each host ran), ``facts`` and ``ops``
(custom facts and operations), ``lock`` (the node's deploy lock), ``gate`` (the rollout gate)
and ``webhook`` (the deploy webhook receiver).
"""
