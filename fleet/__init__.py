"""Sovereign Fleet: deploy and govern a fleet of LLM agents with pyinfra."""

__version__ = "0.1.0"
