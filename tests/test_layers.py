"""The architecture as tests: layers import downwards only, no import circle, small functions.

Layers, bottom to top: foundation < measures < training < study; the CLI sits on top. A module may
import its own layer or any below (``training`` may not import ``measures``: a fine-tuner needs no
curvature code); the one exception is ``landscape.training.callback``, the callback that measures
while a Trainer trains (it is a measurement run from inside training).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "landscape"
RANK = {"foundation": 0, "measures": 1, "training": 1, "study": 2}
FORBIDDEN = {("training", "measures"), ("measures", "training")}
MEASURING = {"landscape.training.callback"}  # may import measures


def modules() -> dict[str, Path]:
    out = {}
    for f in LIB.rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = f
    return out


def imports_of(f: Path, name: str) -> set[str]:
    """Every landscape module ``f`` imports (at any depth: lazy imports inside functions count)."""
    got = set()
    pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            got |= {a.name for a in node.names if a.name.startswith("landscape")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("landscape"):
                continue
            for a in node.names:  # `from landscape.measures import sharpness` imports a module
                got.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base)
    return got


def layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_every_module_imports_only_its_own_layer_or_below():
    bad = []
    for name, f in modules().items():
        mine = layer(name)
        for dep in imports_of(f, name):
            theirs = layer(dep)
            forbidden = (mine, theirs) in FORBIDDEN and not (name in MEASURING and theirs == "measures")
            if mine and theirs and (RANK[theirs] > RANK[mine] or forbidden):
                bad.append(f"{name} -> {dep}")
    assert not bad, bad


def test_no_import_circle():
    mods = modules()
    graph = {n: {d for d in imports_of(f, n) if d in mods and d != n} for n, f in mods.items()}
    graph = {n: {d for d in ds if not mods[d].name == "__init__.py"} for n, ds in graph.items()}
    state: dict = {}

    def visit(n, path):
        if state.get(n) == "done":
            return
        assert state.get(n) != "open", "import circle: " + " -> ".join(path + [n])
        state[n] = "open"
        for d in sorted(graph[n]):
            visit(d, path + [n])
        state[n] = "done"

    for n in sorted(graph):
        visit(n, [])


@pytest.mark.parametrize("folder", ["landscape", "cli"])
def test_no_function_over_60_lines_or_8_parameters(folder):
    """Settings travel as configs, not as long parameter lists; long functions are split in phases."""
    bad = []
    for f in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                n -= bool(a.args) and a.args[0].arg in ("self", "cls")
                lines = node.end_lineno - node.lineno + 1
                if lines > 60 or n > 8:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines, {n} parameters)")
    assert not bad, bad


def test_the_cli_imports_no_torch_at_startup():
    """`landscape --help` builds every option from the configs without importing torch."""
    import subprocess
    import sys

    code = "import sys, landscape.cli.main; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.strip() == "False"


def test_library_messages_speak_library_terms():
    """No library error message quotes a CLI flag (``--points-per-pass``); the CLI adds its flags."""
    bad = []
    for f in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = ast.unparse(node.exc)
                text = text.replace("lm_eval --tasks", "")  # lm-evaluation-harness's own CLI, not ours
                if "'--" in text or '"--' in text or " --" in text:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: {text[:80]}")
    assert not bad, bad
