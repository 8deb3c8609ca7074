"""Errors a user can cause. The CLI catches them once: one line on stderr, exit code 2."""


class UsageError(Exception):
    """Bad input from the user (unknown name, missing/corrupt file, malformed value)."""
