"""Errors a user can cause (bad path, bad file, bad option).

The CLI turns a :class:`UserError` into one line on stderr and exit status 2; any other exception
is an internal bug and keeps its traceback.
"""

import re


class UserError(Exception):
    """A problem with the user's input, reported as one clear line.

    ``field``: the setting the message names in the library's terms (``trust_pickle``), which the
    CLI rewrites as its flag (``--trust-pickle``).
    """

    def __init__(self, *args, field: str | None = None):
        super().__init__(*args)
        self.field = field

    def __str__(self) -> str:
        # One line whatever the user's input held: a key, path or value with a newline or other
        # control character in it is shown escaped ("\\n"), never as a line break.
        return one_line(super().__str__())


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


def one_line(text: str) -> str:
    """``text`` with its line breaks and other control characters escaped (``\\n``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class CheckpointError(UserError):
    """The checkpoint directory is missing, malformed, or unsafe to load without permission."""


class DataError(UserError):
    """An input data file is missing, empty or malformed."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what was kept and how to go on (the CLI prints it as one line, exit status 130)."""
