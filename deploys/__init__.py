"""The phases of the fleet deploy, run in this order by ``deploy.py``.

preflight, baseline, release, soul, keys, services, verify, audit: one module each, plus
``context`` (per-host inputs), ``facts`` and ``ops`` (custom facts and operations).
"""
