"""One config per measurement is the single source of CLI options, manifest keys and store keys;
errors speak the library's terms; JSON output stays valid with NaN metrics."""

import dataclasses
import json

import pytest
from click.testing import CliRunner

from landscape.cli.main import cli
from landscape.foundation import configs as C
from landscape.foundation.errors import UserError
from landscape.foundation.io import dumps, json_safe


def strict_json(text: str):
    def no_constants(c):
        raise ValueError(f"invalid JSON constant {c}")
    return json.loads(text, parse_constant=no_constants)


@pytest.mark.parametrize("command,classes", [
    ("sharpness", (C.SharpnessConfig, C.DataConfig, C.LoadConfig)),
    ("surface", (C.SurfaceConfig, C.DataConfig, C.LoadConfig)),
    ("finetune", (C.FinetuneConfig, C.LoadConfig)),
    ("forgetting", (C.ForgettingConfig, C.LoadConfig))])
def test_every_config_field_is_a_cli_option(command, classes):
    r = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert C.flag_for(f.name) in r.output, (cls.__name__, f.name)


def test_configs_are_frozen_and_validate_themselves():
    cfg = C.SharpnessConfig(metrics="lambda_max,trace", top_k=2)
    assert cfg.metrics == ("lambda_max", "trace")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 3
    for kw, match in [({"top_k": 0}, "top_k: must be >= 1"), ({"tol": -1.0}, "tol: must be > 0"),
                      ({"metrics": "lambda_max,vibes"}, "metrics: unknown metric(s) vibes"),
                      ({"cache_graph": "sometimes"}, "unknown cache graph 'sometimes'")]:
        with pytest.raises(C.ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
            C.SharpnessConfig(**kw)
    with pytest.raises(C.ConfigError, match="points_per_pass: must be between 1 and 4096"):
        C.SurfaceConfig(points_per_pass=0)
    with pytest.raises(C.ConfigError, match="x: grid '1:-1:5': MIN must be below MAX"):
        C.SurfaceConfig(x="1:-1:5")


def test_library_errors_name_fields_and_the_cli_names_flags(llama_dir, text_data, tmp_path):
    with pytest.raises(UserError) as e:
        C.SurfaceConfig(points_per_pass=0)
    assert "--" not in str(e.value) and str(e.value).startswith("points_per_pass:")
    r = CliRunner().invoke(cli, ["surface", str(llama_dir), "--data", str(text_data), "--points-per-pass", "0",
                                 "--out", str(tmp_path / "s.h5")])
    assert r.exit_code == 2 and r.stderr.strip() == "error: --points-per-pass: must be between 1 and 4096, got 0"


def test_the_numbers_rule_leaves_out_speed_switches():
    """cache_graph, hvp_method, directions, points_per_pass, save_every...: never in a result's key."""
    a = C.SharpnessConfig(cache_graph="on", hvp_method="forward")
    b = C.SharpnessConfig(cache_graph="off")
    assert a.numbers() == b.numbers() and a.hash() == b.hash()
    assert C.SharpnessConfig(rho=0.1).hash() != b.hash()
    assert "cache_graph" in a.as_dict() and "cache_graph" not in a.numbers()
    s = C.SurfaceConfig(directions="regenerated", points_per_pass=4)
    assert s.numbers() == C.SurfaceConfig().numbers()
    f = C.FinetuneConfig(save_every=7, resume=True)
    assert f.numbers() == C.FinetuneConfig().numbers()


def test_manifest_sections_are_the_configs(tmp_path, llama_dir):
    import yaml

    from landscape.study.manifest import load_manifest

    def write(flatness):
        p = tmp_path / "m.yaml"
        p.write_text(yaml.safe_dump({"base": str(llama_dir), "checkpoints": [str(llama_dir), {"path": str(llama_dir), "label": "again"}], "flatness": flatness}))
        return p

    m = load_manifest(write({"metrics": ["lambda_max", "avg", "surface_curvature"], "avg_samples": 4,
                             "cache_graph": "off", "surface": {"x": "-1:1:5", "norm": "layer"}, "seed": 3}))
    assert m.sharpness.avg_samples == 4 and m.sharpness.cache_graph == "off" and m.sharpness.top_k == 3
    assert m.surface.norm == "layer" and m.surface.seed == 3 and m.data.num_batches == 4
    with pytest.raises(UserError, match="flatness: unknown key.*avg_sampels"):
        load_manifest(write({"avg_sampels": 4}))
    with pytest.raises(UserError, match=r"flatness\.surface\.norm: unknown norm 'rows'"):
        load_manifest(write({"metrics": ["surface_curvature"], "surface": {"x": "-1:1:5", "norm": "rows"}}))


def test_nan_is_written_as_null_with_its_reason():
    clean, reasons = json_safe({"m": {"lambda_max": float("nan"), "ok": 1.5}, "xs": [1.0, float("-inf")]})
    assert clean == {"m": {"lambda_max": None, "ok": 1.5}, "xs": [1.0, None]}
    assert set(reasons) == {"/m/lambda_max", "/xs/1"} and "nan" in reasons["/m/lambda_max"]
    out = strict_json(dumps({"lambda_max": float("nan")}))
    assert out["lambda_max"] is None and "not a finite number" in out["null_reasons"]["/lambda_max"]


def test_the_report_json_is_valid_json_with_a_nan_metric(tmp_path, monkeypatch):
    """The batch report's JSON once carried bare NaN (json.dumps' default): now null + reason."""
    from landscape.study import report, runner

    monkeypatch.setattr(report, "correlation_report", lambda result, out: out)
    result = {"checkpoints": [{"label": "a", "flatness": {"lambda_max": float("nan")}}], "ranking": []}
    runner._write(result, tmp_path / "r.html")
    out = strict_json((tmp_path / "r.json").read_text())
    assert out["checkpoints"][0]["flatness"]["lambda_max"] is None
    assert out["null_reasons"] == {"/checkpoints/0/flatness/lambda_max": "not a finite number (nan)"}
