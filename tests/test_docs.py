"""The docs cannot rot: the README is a front page, the manual builds strictly, every Python block of
the README and docs/ runs, the README's shell quick-start runs, and every public name is documented.

Blocks run in a fresh folder holding what they name: ``my-model`` (a tiny Llama with its tokenizer),
``general.jsonl``, ``task.jsonl`` and ``suites/`` (the embedded suites). A page's Python blocks run in
order in one namespace, as a reader would paste them; a block preceded by ``<!-- no-run -->`` (a
GPU or torchrun example) is skipped.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(<!-- no-run -->\s*\n)?```(\w+)[^\n]*\n(.*?)\n```", re.S)


def blocks(page: Path, lang: str) -> list[str]:
    return [m.group(3) for m in FENCE.finditer(page.read_text()) if m.group(2) == lang and not m.group(1)]


@pytest.fixture()
def workspace(tmp_path, monkeypatch, tokenizer):
    make_checkpoint(tmp_path, "llama", tokenizer).rename(tmp_path / "my-model")
    lines = (ROOT / "data" / "eval.jsonl").read_text().splitlines()
    (tmp_path / "general.jsonl").write_text("\n".join(lines[:16]) + "\n")
    shutil.copy(ROOT / "data" / "tasks" / "count" / "train.jsonl", tmp_path / "task.jsonl")
    shutil.copytree(ROOT / "data" / "suites", tmp_path / "suites")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    text = "\n".join(lines)
    for must in ("make demo", "make test", "import landscape as ls", "docs/reference/cli.md"):
        assert must in text
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dated measurements belong in docs/ and the changelog"
    for link in re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)", text):
        assert (ROOT / link).is_file(), link


def test_the_manual_builds_strictly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    import landscape

    for name in landscape.__all__:
        if name != "SAMTrainer":  # built on first use (it subclasses transformers' Trainer): named in the text
            assert f'id="landscape.' in api and re.search(rf'id="landscape\.[\w.]*\b{name}"', api), name
    for command in ("sharpness", "surface", "finetune", "forgetting", "predict", "correlate"):
        assert f"landscape {command}" in cli


def _env() -> dict:
    import os

    return dict(os.environ)


def test_every_public_name_has_a_docstring():
    import landscape

    for name in landscape.__all__:
        obj = getattr(landscape, name)
        assert (obj.__doc__ or "").strip(), name


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, workspace, capsys):
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(blocks(page, "python")):
        try:
            exec(compile(code, f"{page.name}[python block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.relative_to(ROOT)}, Python block {i}: {type(e).__name__}: {e}") from e
    assert capsys.readouterr().out.strip(), "the blocks print what they measured"


def _commands(code: str) -> list[list[str]]:
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(shlex.split(line, comments=True))
    return out


@pytest.mark.parametrize("page", [ROOT / "README.md", ROOT / "docs" / "howto" / "your-model.md"],
                         ids=lambda p: p.name)
def test_shell_quick_start_runs(page, workspace):
    from landscape.cli.main import cli

    ran = 0
    for code in blocks(page, "bash"):
        for argv in _commands(code):
            assert argv[0] == "landscape", argv
            target = None
            if ">" in argv:
                argv, target = argv[:argv.index(">")], argv[argv.index(">") + 1]
            r = CliRunner().invoke(cli, argv[1:])
            assert r.exit_code == 0, f"{shlex.join(argv)}: {r.output[-2000:]}"
            if target:
                Path(target).write_text(r.stdout)
            ran += 1
    assert ran >= 5
    if (workspace / "sharpness.json").exists():
        import json

        assert json.loads((workspace / "sharpness.json").read_text())["metrics"]["lambda_max"] is not None


@pytest.mark.parametrize("name,script,results", [("bench", "run", "results.json"),
                                                 ("bench-real", "real", "results_real.json"),
                                                 ("probe-cost", "probe", "results_probe.json"),
                                                 ("gpu-plans", "gpu_plans", "results_gpu_plans.json"),
                                                 ("demo-table", "demo_study", "results_demo.json"),
                                                 ("scales-table", "scales", "results_scales.json"),
                                                 ("real-1b-table", "real_1b_study", "results_real_1b_study.json")])
def test_result_tables_in_the_manual_are_rendered_from_the_committed_json(name, script, results):
    """A measured figure lives in benchmarks/*.json; the page shows exactly what the script renders from
    it (``--table-only`` rewrites the block), so a table cannot drift from its numbers."""
    import importlib
    import json

    mod = importlib.import_module(f"benchmarks.{script}")
    data = json.loads((ROOT / "benchmarks" / results).read_text())
    text = next(p.read_text() for p in PAGES if f"<!-- {name}:start -->" in p.read_text())
    block = text[text.index(f"<!-- {name}:start -->") + len(f"<!-- {name}:start -->"):text.index(f"<!-- {name}:end -->")]
    assert block.strip() == mod.table(data).strip()


def test_the_scales_table_gathers_the_studies_committed_results():
    """benchmarks/results_scales.json is exactly what benchmarks/scales.py gathers from the three studies'
    committed results (a study rerun without regathering fails here)."""
    import json

    from benchmarks import scales

    assert json.loads(json.dumps(scales.gather(), ensure_ascii=False)) == json.loads(scales.OUT.read_text())
