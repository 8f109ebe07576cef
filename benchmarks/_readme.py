"""The README blocks the benchmarks write: the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_block(name: str, text: str, readme: Path = README) -> bool:
    """Put ``text`` between the ``name`` markers of the README; False when the markers are missing."""
    s = readme.read_text()
    a, b = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if a not in s or b not in s:
        return False
    readme.write_text(s[:s.index(a) + len(a)] + "\n" + text.rstrip("\n") + "\n" + s[s.index(b):])
    return True
