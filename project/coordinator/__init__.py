"""Coordinator tier: intake, beat-driven health checks, reconciliation."""
