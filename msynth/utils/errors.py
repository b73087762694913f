"""Exceptions whose message is meant for the user as it is."""


class UsageError(Exception):
    """Bad command-line input: the message names the path or label and what to do."""
