"""Progress that reads well wherever stderr goes.

``tqdm`` here is tqdm's own bar on a terminal. Anywhere else — a log file, a pipe, a CI job, a
``nohup`` run — it writes a plain line (no bar, no carriage returns) at most every
:data:`LINE_EVERY` seconds, and a last line at the end only when the loop ran that long: a short
command stays silent, a long one says where it is. ``LANDSCAPE_PROGRESS_EVERY`` overrides the interval.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as _tqdm

LINE_EVERY = 30.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%), {elapsed} elapsed, {remaining} left{postfix}"
LINE_FORMAT_OPEN = "{desc}: {n_fmt}, {elapsed} elapsed{postfix}"  # no total: no share, no estimate


def _isatty(f) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False


class tqdm(_tqdm):  # noqa: N801 (a drop-in for tqdm.auto.tqdm)
    """``tqdm.auto.tqdm`` on a terminal; a line at most every 30 s elsewhere (see the module docstring)."""

    def __init__(self, *args, **kw):
        file = kw.get("file") or sys.stderr
        self._lines = not kw.get("disable", False) and not _isatty(file)
        if self._lines:
            every = float(os.environ.get("LANDSCAPE_PROGRESS_EVERY", LINE_EVERY))
            kw.setdefault("mininterval", every)
            kw.setdefault("delay", every)
            kw["ascii"] = True
            total = kw.get("total", len(args[0]) if args and hasattr(args[0], "__len__") else None)
            kw.setdefault("bar_format", LINE_FORMAT if total else LINE_FORMAT_OPEN)
        super().__init__(*args, **kw)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        # a line is written by the interval only, not by every new postfix (a loss per step)
        super().set_postfix(ordered_dict, refresh=refresh and not getattr(self, "_lines", False), **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=refresh and not getattr(self, "_lines", False))

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=refresh and not getattr(self, "_lines", False))

    def display(self, msg=None, pos=None):
        if not getattr(self, "_lines", False):
            return super().display(msg, pos)
        if msg == "":
            return False  # nothing to clear in a log
        self.fp.write((self.__str__() if msg is None else msg).strip() + "\n")
        self.fp.flush()
        return True

    def close(self):
        if getattr(self, "_lines", False) and not self.disable:
            shown = hasattr(self, "last_print_t") and self.last_print_t >= self.start_t + self.delay
            self.leave = False
            if shown and self.last_print_n != self.n:
                self.display()  # the last state, once
        super().close()
