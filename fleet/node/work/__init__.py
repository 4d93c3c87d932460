"""Autonomous work on a node: forge clients, the test sandbox, work items."""
