"""Tiny models built from a config in code (tests, the demo, benchmarks). Nothing is downloaded.

Apart from checkpoint loading on purpose: these build *new* models; :mod:`checkpoint` reads a
user's. ``ARCHITECTURES`` are the families the test suite builds checkpoints of.
"""

from __future__ import annotations

import torch

from landscape.foundation.configs import ConfigError


SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def build_word_tokenizer(texts, min_count: int = 1):
    """A word-level tokenizer (whitespace split) trained with `tokenizers` on ``texts``.

    Adds ``<s>`` in front of every encoded sequence (like Llama); returns a
    ``PreTrainedTokenizerFast`` that ``save_pretrained``/``AutoTokenizer`` round-trip.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=min_count)
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


ARCHITECTURES = ("llama", "gpt2", "qwen2")


def tiny_config(arch: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4,
                intermediate: int | None = None, max_positions: int = 128, tokenizer=None):
    """A small config of a real architecture (``llama``, ``gpt2``, ``qwen2``)."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    intermediate = intermediate or 2 * hidden
    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max_positions, tie_word_embeddings=False, **ids)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                           max_position_embeddings=max_positions, tie_word_embeddings=True, **ids)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                          n_inner=intermediate, n_positions=max_positions, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    raise ConfigError("arch", f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


# Every decoder-only causal LM of transformers 5.x that a tiny config builds from sizes alone
# (tests/test_archs.py runs loss, λ_max vs a dense Hessian, a 3×3 surface, a SAM step and a
# forgetting score on each; docs/reference/checkpoints.md).
SWEEP_ARCHS = ("llama", "mistral", "ministral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
               "gemma3_text", "recurrent_gemma", "phi", "phi3", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "opt",
               "bloom", "stablelm", "starcoder2", "olmo", "olmo2", "olmoe", "cohere", "granite", "granitemoe",
               "codegen", "persimmon", "mpt", "biogpt", "xglm", "helium", "glm", "smollm3", "exaone4", "arcee",
               "nemotron", "ernie4_5", "seed_oss", "apertus", "hunyuan_v1_dense", "lfm2", "falcon", "falcon_h1",
               "mamba", "falcon_mamba")
# Families whose config needs more than sizes (layer-type lists, sub-configs): not swept, for the
# reason given (what a generic tiny config hits in transformers 5.24).
NOT_SWEPT = {"gpt_neo": "attention_types must list every layer", "jamba": "hybrid cache needs an attention layer",
             "dbrx": "sub-config (attn_config) without rope_theta", "zamba": "layer-type list",
             "bamba": "layer-type list", "mamba2": "head/state geometry checks", "deepseek_v3": "MLA head geometry"}

_SIZES = dict(n_embd=32, n_layer=2, n_head=4, n_positions=128, d_model=32, n_layers=2, n_heads=4, ffn_dim=48,
              num_layers=2, num_heads=4, word_embed_proj_dim=32, rotary_dim=4, n_inner=48, num_experts=4,
              num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=24,
              expand=2, state_size=8, d_state=8, time_step_rank=4, attention_window_size=16, lru_width=32,
              ffn_hidden_size=48,
              # Falcon-H1's Mamba-2 mixer: its defaults (state 256, 128 heads, chunks of 256) made the
              # tiny model's pure-torch scan take 3.5 GB for one double-backward on 3 × 10 tokens
              mamba_d_state=8, mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8, mamba_chunk_size=16)


def tiny_any_config(model_type: str, tokenizer):
    """A tiny config (hidden 32, 2 layers, 4 heads) of any architecture in :data:`SWEEP_ARCHS`."""
    from transformers import AutoConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    base = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128, **ids)
    if model_type != "falcon":
        base["head_dim"] = 8
    cfg = AutoConfig.for_model(model_type, **base)
    for key, value in _SIZES.items():
        if hasattr(cfg, key):
            try:
                setattr(cfg, key, value)
            except (AttributeError, TypeError, ValueError):
                pass
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout", "dropout"):
        if isinstance(getattr(cfg, key, None), float):
            setattr(cfg, key, 0.0)
    return cfg


def build_model(config, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A freshly initialised causal LM from ``config``, seeded, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    from landscape.foundation.checkpoint import with_attention

    model = with_attention(lambda impl: AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=impl))
    return model.eval()
