"""Maintenance scripts run from the repository root (python -m tools.<name>, or python tools/<name>.py)."""
