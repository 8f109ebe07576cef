"""Errors a user can cause (bad path, bad file, bad option).

The CLI turns a :class:`UserError` into one line on stderr and exit status 2; any other exception
is an internal bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""


class CheckpointError(UserError):
    """The checkpoint directory is missing, malformed, or unsafe to load without permission."""


class DataError(UserError):
    """An input data file is missing, empty or malformed."""
