"""The blocks the benchmarks write into the docs: the text between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` in whichever page of docs/ (or the README) holds those markers."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def replace_block(name: str, text: str, readme: Path | None = None) -> bool:
    """Put ``text`` between the ``name`` markers of ``readme`` (default: the page that has them);
    False when no page has the markers."""
    a, b = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    for page in [readme] if readme else pages():
        s = page.read_text() if page.is_file() else ""
        if a in s and b in s:
            page.write_text(s[:s.index(a) + len(a)] + "\n" + text.rstrip("\n") + "\n" + s[s.index(b):])
            return True
    return False
