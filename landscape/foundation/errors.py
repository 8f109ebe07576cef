"""Errors a user can cause (bad path, bad file, bad option).

The CLI turns a :class:`UserError` into one line on stderr and exit status 2; any other exception
is an internal bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line.

    ``field``: the setting the message names in the library's terms (``trust_pickle``), which the
    CLI rewrites as its flag (``--trust-pickle``).
    """

    def __init__(self, *args, field: str | None = None):
        super().__init__(*args)
        self.field = field


class CheckpointError(UserError):
    """The checkpoint directory is missing, malformed, or unsafe to load without permission."""


class DataError(UserError):
    """An input data file is missing, empty or malformed."""
