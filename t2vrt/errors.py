"""The two kinds of failure a user sees, each one clear line (the CLI maps them to exit codes).

Torch-free: every stage raises these.
"""


class T2VError(Exception):
    """A runtime failure: the input was well-formed but the work could not be done (exit code 1)."""

    exit_code = 1


class UsageError(T2VError):
    """Bad input from the user: a value out of range, a missing file, a wrong flag (exit code 2)."""

    exit_code = 2
