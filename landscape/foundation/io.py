"""Files written whole or not at all, and JSON that is always valid.

:func:`atomic_write` is the one way the library writes a file: into a hidden temp name beside the
target, flushed and fsynced, then renamed over it. A crash, a full disk or a kill leaves either the
old file or the new one, never half of one, and no temp file behind.

:func:`json_safe` turns what ``json.dumps`` would write as bare ``NaN``/``Infinity`` (invalid JSON)
into ``null`` and lists where and why under ``"null_reasons"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from landscape.foundation.errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """``with atomic_write(p) as tmp:`` write to the *path* ``tmp``; on success it replaces ``p``.

    Yields the temp path (so that libraries that open files themselves, h5py and torch.save, can
    write there). An OSError (full disk, read-only or missing folder) becomes one :class:`UserError`
    line naming the target; the temp file is removed whatever happens.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise UserError(f"{path}: cannot write ({getattr(e, 'strerror', None) or str(e).splitlines()[0]})") from None
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike):
    """``with atomic_dir(out) as tmp:`` fill the directory ``tmp``; on success every file in it is
    fsynced and it replaces ``out`` (an existing ``out`` is removed only after the new one is
    complete). On any error the temp directory is removed and ``out`` is untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        yield tmp
        for f in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)  # some writers (safetensors) create files private (0600)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(p: Path) -> None:
    try:
        p.unlink(missing_ok=True)
    except OSError:
        pass


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` into ``path`` atomically (UTF-8)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_safe(obj, _path: str = "", _reasons: dict | None = None):
    """A copy of ``obj`` with every non-finite float replaced by None, and ``{json path: reason}``.

    Paths, numpy scalars and tuples become their JSON forms. Returns ``(clean, reasons)``.
    """
    reasons = {} if _reasons is None else _reasons
    if isinstance(obj, dict):
        return {k: json_safe(v, f"{_path}/{k}", reasons)[0] for k, v in obj.items()}, reasons
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, f"{_path}/{i}", reasons)[0] for i, v in enumerate(obj)], reasons
    if isinstance(obj, os.PathLike):
        return str(obj), reasons
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        reasons[_path or "/"] = f"not a finite number ({obj})"
        return None, reasons
    return obj, reasons


def dumps(obj, indent: int | None = None) -> str:
    """Valid JSON always: non-finite numbers become null, their reasons under ``"null_reasons"``
    (added to a top-level dict; merged with any reasons already there)."""
    clean, reasons = json_safe(obj)
    if reasons and isinstance(clean, dict):
        clean["null_reasons"] = {**(clean.get("null_reasons") or {}), **reasons}
    return json.dumps(clean, indent=indent, allow_nan=False, default=str)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    """:func:`dumps` into ``path`` atomically."""
    return write_text(path, dumps(obj, indent=indent))
