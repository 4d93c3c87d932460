"""What both sides need: the controller and an agent's node (shipped in every release).

The registry model and its checks, typed errors, atomic writes, process liveness, digests,
environment files, secret masking, the one HTTP server setup, the runtime's settings, the
declared tools' model, the running release's identity. Imports nothing of ``fleet`` outside
``fleet.core`` (a ``lint-imports`` contract).
"""
