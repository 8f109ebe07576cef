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


def build_model(config, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A freshly initialised causal LM from ``config``, seeded, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()
