"""Plans for machines this one is not (``--device-memory``, ``--world-size``) and for directories that
hold only config.json: the same plan as the loaded model's where both exist, per-rank shares that are
1/N of the whole, and plans only — never a measurement."""

import json
import shutil

import pytest

from landscape.foundation import params as P
from landscape.foundation import plan as plans
from tests.test_cli import assert_user_error, run

COMMON = ["--batch-size", 2, "--max-length", 12, "--metrics", "lambda_max", "--dry-run", "--json"]


@pytest.fixture
def config_only(llama_dir, tmp_path):
    d = tmp_path / "config-only"
    d.mkdir()
    shutil.copy(llama_dir / "config.json", d / "config.json")
    return d


def plan_of(*args):
    r = run("sharpness", *args)
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.stdout)["plan"]


def test_a_config_only_plan_equals_the_loaded_models_plan(llama_dir, config_only):
    """On this machine, a directory with only config.json plans like the checkpoint itself: the same
    weight-sized parts, and the activations of the meta model (probed on 1- and 2-block copies and
    extrapolated) equal to the loaded model's own probe to 2%. Nothing is read but the config."""
    loaded = plan_of(llama_dir, "--data", _data(llama_dir), *COMMON)
    meta = plan_of(config_only, *COMMON)
    assert meta["target"]["device"] == "cpu" and meta["target"]["world_size"] == 1
    assert meta["weight_gb"] == loaded["weight_gb"] and meta["choices"]["hvp_method"] == loaded["choices"]["hvp_method"]
    for k in ("vectors", "transients"):
        assert meta["parts_gb"][k] == loaded["parts_gb"][k], k
    act_meta, act_loaded = meta["parts_gb"]["activations"], loaded["parts_gb"]["activations"]
    assert act_meta == pytest.approx(act_loaded, rel=0.02), (act_meta, act_loaded)
    assert P.target() is None  # the plan's machine does not outlive the command


def test_a_plan_for_n_ranks_is_one_nth_of_the_whole_and_says_whether_it_fits(config_only):
    """Per rank, with --shard fsdp --world-size N: the weights and every weight-sized vector are 1/N
    (FSDP rows); a gathered unit is added to the start; ``fits`` follows the device memory given."""
    one = plan_of(config_only, "--device-memory", 1, "--dtype", "float32", *COMMON)
    four = plan_of(config_only, "--device-memory", 1, "--dtype", "float32", "--shard", "fsdp", "--world-size", 4,
                   *COMMON)
    assert four["target"] == {**four["target"], "world_size": 4, "per": "rank", "device": "cuda",
                              "device_memory_gb": 1.0}
    assert four["choices"]["hvp_method"] == "fd"  # double backward does not run through FSDP
    assert four["weight_gb"] == pytest.approx(one["weight_gb"] / 4, abs=2e-3)
    assert four["parts_gb"]["vectors"] == pytest.approx(one["parts_gb"]["vectors"] / 4, abs=2e-3)
    assert one["target"]["fits"] and four["target"]["fits"]
    tiny = plan_of(config_only, "--device-memory", 0.001, *COMMON)
    assert not tiny["target"]["fits"]
    r = run("sharpness", config_only, "--device-memory", 0.001, *[a for a in COMMON if a != "--json"])
    assert r.exit_code == 0 and "does NOT fit" in r.stdout and "--batch-size 1" in r.stdout


def test_plans_for_other_machines_are_plans_only(llama_dir, config_only):
    """Without --dry-run they are one line and exit 2 (a meta model cannot be measured); --world-size
    plans an FSDP rank and needs --shard fsdp; half-precision sharded curvature is planned as the run
    loads it: float32 rows of the bf16 values, the float32 plan."""
    args = [a for a in COMMON if a != "--dry-run"]
    assert_user_error(run("sharpness", config_only, *args), "add --dry-run")
    assert_user_error(run("sharpness", llama_dir, "--device-memory", 80, *args), "add --dry-run")
    assert_user_error(run("sharpness", config_only, "--world-size", 2, *COMMON), "--shard fsdp")
    sharded = ["--world-size", 2, "--shard", "fsdp", *COMMON]
    half, wide = (plan_of(config_only, "--dtype", dt, *sharded) for dt in ("bfloat16", "float32"))
    assert {k: half[k] for k in ("weight_gb", "parts_gb", "peak_bytes")} == \
        {k: wide[k] for k in ("weight_gb", "parts_gb", "peak_bytes")}
    r = run("sharpness", config_only, "--data", _data(llama_dir), *args)
    assert r.exit_code == 2 and P.target() is None


def test_surface_predict_and_finetune_plan_for_a_device(llama_dir, config_only, tmp_path):
    """The other planning commands take the same flags: a plan per command, none measured."""
    r = run("surface", config_only, "--x", "-1:1:3", "--device-memory", 40, "--out", tmp_path / "s.h5",
            "--dry-run", "--json", "--batch-size", 2, "--max-length", 12)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["plan"]["target"]["device_memory_gb"] == 40 and not (tmp_path / "s.h5").exists()
    r = run("predict", config_only, llama_dir, "--device-memory", 40, "--dry-run", "--json", "--batch-size", 2,
            "--max-length", 12)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["plan"]["target"]["fits"]


def _data(llama_dir):
    from tests.conftest import WORDS, write_jsonl

    path = llama_dir.parent / "plan_target.jsonl"
    if not path.exists():
        words = list(WORDS) * 20  # every text longer than max_length: full-length rows, as a plan assumes
        write_jsonl(path, [{"text": " ".join(words[i:i + 20])} for i in range(0, 80, 10)])
    return path


def test_bf16_originals_go_to_the_host_when_only_that_fits(tmp_path):
    """A bf16 model is measured in a float32 view beside its bf16 originals; they are read only to set
    and restore the weights, so when the device cannot hold the plan beside them but can without
    them, they move to host memory (choices: originals=host) — the 13B-on-141-GB case, on a
    117M-parameter Llama config (exact bytes; no weight read)."""
    d = tmp_path / "mid"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}))
    args = [d, "--dtype", "bfloat16", "--batch-size", 2, "--max-length", 12, "--metrics", "lambda_max", "--dry-run",
            "--json", "--device-memory"]
    roomy = plan_of(*args, 100)
    assert "originals" not in roomy["choices"] and roomy["target"]["fits"]  # nothing moves when it fits
    short = plan_of(*args, 1.7)  # fits nowhere: the leanest plan, with the originals already on the host
    assert short["choices"]["originals"] == "host" and not short["target"]["fits"]
    n = 2 * 32000 * 1024 + 4 * (4 * 1024 * 1024 + 3 * 1024 * 2816 + 2 * 1024) + 1024
    kept = 2 * n  # the bf16 originals' bytes
    assert short["choices"]["host_gb"] == round(kept / 2**30, 3)
    # the least memory that holds this plan, and the same plan with the originals on the device
    need_host = short["start_bytes"] + (short["peak_bytes"] - short["start_bytes"]) / plans.HEADROOM
    between = plan_of(*args, (need_host + kept / 2) / 2**30)
    assert between["target"]["fits"] and between["choices"]["originals"] == "host"
    assert between["start_bytes"] == roomy["start_bytes"] - kept
