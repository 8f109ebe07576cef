import json
import shutil

import pytest
import torch

from landscape.foundation import checkpoint, toy
from landscape.foundation.errors import CheckpointError, UserError
from tests.conftest import make_checkpoint


@pytest.mark.parametrize("arch", toy.ARCHITECTURES)
def test_loads_each_architecture_with_identical_logits(tmp_path, tokenizer, arch):
    d = make_checkpoint(tmp_path, arch, tokenizer, seed=3)
    ref = toy.build_model(toy.tiny_config(arch, len(tokenizer), tokenizer=tokenizer, hidden=32,
                                                        layers=2, heads=4), seed=3)
    ck = checkpoint.load_checkpoint(d)
    assert ck.meta["model_type"] == arch and ck.tokenizer is not None
    x = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(ck.model(x).logits, ref(x).logits)
    assert not ck.model.training
    assert all(p.requires_grad for p in ck.model.parameters())


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                        ("float64", torch.float64)])
def test_dtype_follows_request(llama_dir, name, dtype):
    ck = checkpoint.load_checkpoint(llama_dir, dtype=name)
    assert {p.dtype for p in ck.model.parameters()} == {dtype}


def test_unknown_dtype_and_device_are_user_errors():
    with pytest.raises(UserError, match="unknown dtype"):
        checkpoint.resolve_dtype("float8")
    with pytest.raises(UserError):
        checkpoint.resolve_device("tpu")


def test_sharded_safetensors_load(tmp_path, tokenizer):
    d = make_checkpoint(tmp_path, "llama", tokenizer, max_shard_size="20KB")
    assert (d / checkpoint.SAFE_INDEX).is_file() and len(list(d.glob("*.safetensors"))) > 1
    ck = checkpoint.load_checkpoint(d)
    assert len(checkpoint.inspect_checkpoint(d).weights) > 1
    single = checkpoint.load_checkpoint(make_checkpoint(tmp_path / "s", "llama", tokenizer))
    for (n, a), (_, b) in zip(ck.model.named_parameters(), single.model.named_parameters()):
        assert torch.equal(a, b), n


def test_fingerprint_is_content_not_path(tmp_path, llama_dir):
    copy = tmp_path / "copy"
    shutil.copytree(llama_dir, copy)
    assert checkpoint.fingerprint(copy) == checkpoint.fingerprint(llama_dir)
    ck = checkpoint.load_checkpoint(copy)
    with torch.no_grad():
        next(ck.model.parameters()).add_(1e-3)
    ck.model.save_pretrained(copy)
    assert checkpoint.fingerprint(copy) != checkpoint.fingerprint(llama_dir)


def test_pickle_refused_unless_trusted(tmp_path, tokenizer):
    # transformers 5 always writes safetensors; write a .bin by hand as older tools did.
    src = make_checkpoint(tmp_path, "gpt2", tokenizer)
    d = tmp_path / "pickled"
    shutil.copytree(src, d)
    ck = checkpoint.load_checkpoint(src)
    (d / "model.safetensors").unlink()
    torch.save(ck.model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="trust_pickle"):
        checkpoint.load_checkpoint(d)
    loaded = checkpoint.load_checkpoint(d, trust_pickle=True)
    assert loaded.meta["format"] == "pickle"
    for (n, a), (_, b) in zip(loaded.model.named_parameters(), ck.model.named_parameters()):
        assert torch.equal(a, b), n


def test_pickle_with_code_is_not_executed(tmp_path, tokenizer):
    """weights_only=True: a .bin that would run code on unpickling is refused, not executed."""
    src = make_checkpoint(tmp_path, "gpt2", tokenizer)
    d = tmp_path / "evil"
    shutil.copytree(src, d)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        checkpoint.load_checkpoint(d, trust_pickle=True)
    assert not marker.exists()


def test_remote_code_not_run_without_flag(tmp_path, llama_dir):
    d = tmp_path / "remote"
    shutil.copytree(llama_dir, d)
    marker = tmp_path / "ran"
    (d / "evil_config.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                      "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n"
                                      "    model_type = 'evil'\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="evil", auto_map={"AutoConfig": "evil_config.EvilConfig"})
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):
        checkpoint.load_checkpoint(d)
    assert not marker.exists()


@pytest.mark.parametrize("damage,match", [
    ("missing", "no such checkpoint"),
    ("file", "not a directory"),
    ("no_config", "no config.json"),
    ("bad_config", "malformed config.json"),
    ("no_weights", "no weights found"),
    ("truncated", "corrupt safetensors"),
    ("garbage", "corrupt safetensors"),
    ("bad_index", "missing"),
    ("vocab", "embedding only"),
])
def test_bad_checkpoints_raise_one_clear_error(tmp_path, llama_dir, tokenizer, damage, match):
    d = tmp_path / "ck"
    shutil.copytree(llama_dir, d)
    st = d / "model.safetensors"
    if damage == "missing":
        d = tmp_path / "nope"
    elif damage == "file":
        d = st
    elif damage == "no_config":
        (d / "config.json").unlink()
    elif damage == "bad_config":
        (d / "config.json").write_text("{not json")
    elif damage == "no_weights":
        st.unlink()
    elif damage == "truncated":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) - 100])
    elif damage == "garbage":
        st.write_bytes(b"\x00" * 64)
    elif damage == "bad_index":
        st.unlink()
        (d / checkpoint.SAFE_INDEX).write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    elif damage == "vocab":
        big = toy.build_word_tokenizer([" ".join(f"w{i}" for i in range(200))])
        big.save_pretrained(d)
    with pytest.raises(CheckpointError, match=match) as e:
        checkpoint.load_checkpoint(d)
    assert "\n" not in str(e.value)


def test_save_checkpoint_is_atomic_and_loadable(tmp_path, llama_dir):
    ck = checkpoint.load_checkpoint(llama_dir)
    out = checkpoint.save_checkpoint(ck.model, ck.tokenizer, tmp_path / "saved", extra_files={"note.txt": "hi"})
    again = checkpoint.load_checkpoint(out)
    for a, b in zip(again.model.parameters(), ck.model.parameters()):
        assert torch.equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temp dirs left behind
    checkpoint.save_checkpoint(ck.model, ck.tokenizer, out)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_written_files_follow_the_umask_not_the_writer(tmp_path):
    """safetensors' writer creates 0600 files: a checkpoint directory is shared like any other file."""
    import os

    from safetensors.torch import save_file

    from landscape.foundation.io import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "ck") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "ck").iterdir()} == {
        "model.safetensors": 0o644, "config.json": 0o644}
    assert (tmp_path / "ck").stat().st_mode & 0o777 == 0o755
