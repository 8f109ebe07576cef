"""The public API: ``import landscape as ls``.

Each function is a thin layer over the library module that does the work (named in its docstring);
settings are the fields of the matching config (``ls.sharpness(ck, bs, metrics=["lambda_max"])`` is
``SharpnessConfig(metrics=["lambda_max"])``), checked the same way as the CLI's flags: a bad value is
one :class:`UserError` line. A model argument is a :class:`Checkpoint` from :func:`load` or any
``torch.nn.Module`` causal LM whose forward takes ``input_ids``/``attention_mask`` and returns
``.logits``.

    import landscape as ls
    ck = ls.load("path/to/checkpoint")                     # HF dir, PEFT adapter dir
    bs = ls.batches("general.jsonl", ck, batch_size=4, max_length=48)
    ls.loss(ck, bs).loss
    ls.sharpness(ck, bs, metrics=["lambda_max"], tol=1e-3)["metrics"]["lambda_max"]
"""

from __future__ import annotations

import os

from landscape.foundation.configs import (DataConfig, FinetuneConfig, ForgettingConfig, LoadConfig, PredictConfig,
                                          SharpnessConfig, SurfaceConfig)
from landscape.foundation.errors import UserError


def _model(model):
    return getattr(model, "model", model) if type(model).__name__ == "Checkpoint" else model


def _config(cls, config, settings: dict):
    if config is not None and not isinstance(config, cls):
        raise UserError(f"config must be a {cls.__name__}, not {type(config).__name__}")
    unknown = sorted(set(settings) - set(cls.keys()))
    if unknown:
        raise UserError(f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; known: {', '.join(cls.keys())}")
    return config.replace(**settings) if config is not None else cls(**settings)


def load(path: str | os.PathLike, config: LoadConfig | None = None, *, curvature: bool = False, **settings):
    """Load a local checkpoint (HF directory, sharded or not, or a PEFT adapter directory) in eval mode.

    ``settings``: :class:`LoadConfig` fields — ``dtype`` ("float32" default, "bfloat16", "float16",
    "float64"), ``device`` ("auto": the GPU when there is one), ``adapter_base``, ``shard`` ("fsdp"
    under torchrun), ``grad_checkpointing``, ``chat_template``, ``trust_remote_code`` (off). A GGUF
    file is converted once with ``landscape convert-gguf FILE OUT``. Every parameter keeps
    ``requires_grad``; missing weights are an error, never a random initialisation.
    ``curvature=True``: for :func:`sharpness`/curvature on an FSDP-sharded bf16/fp16 model, whose
    parameters cannot be widened to float32 in place: each rank then holds float32 copies of its rows'
    half-precision values (the same numbers; results say ``dtype: bfloat16``).
    Returns a :class:`Checkpoint` (``.model``, ``.tokenizer``, ``.fingerprint``, ``.dtype``, ``.device``).
    Library: :func:`landscape.foundation.checkpoint.load_checkpoint`.
    """
    from landscape.foundation.checkpoint import load_checkpoint

    return load_checkpoint(path, _config(LoadConfig, config, settings), curvature=curvature)


def batches(data: str | os.PathLike, checkpoint=None, *, tokenizer=None, batch_size: int = 8,
            max_length: int | None = None, num_batches: int | None = None, split: str | None = None):
    """Fixed batches of a data file for measurements: the same tokens, padding and loss mask everywhere.

    ``data``: records ``{text}``, ``{prompt, completion}`` (loss on the completion), ``{input_ids}``
    (optional ``labels``, -100 = no loss) or chat ``{messages}`` (rendered with the tokenizer's chat
    template, loss on assistant turns) in a ``.jsonl``/``.json``/``.parquet``/``.csv`` file or a
    ``datasets`` ``save_to_disk`` directory (``split`` picks a split of a DatasetDict).
    With a :class:`Checkpoint`, its tokenizer, vocabulary, position limit (``max_length`` default
    min(128, positions)) and device are used; otherwise pass ``tokenizer`` (``max_length`` default 128).
    Returns :class:`Batches` (``.fingerprint`` identifies the tokens; ``.n_tokens`` the loss-bearing ones).
    Library: :func:`landscape.foundation.data.batches_for` / :func:`~landscape.foundation.data.load_batches`.
    """
    from landscape.foundation import data as D

    cfg = DataConfig(data=os.fspath(data), data_split=split, batch_size=batch_size, max_length=max_length,
                     num_batches=num_batches)
    if checkpoint is not None:
        if tokenizer is not None:
            raise UserError("give a checkpoint or a tokenizer, not both (a checkpoint brings its tokenizer)")
        return D.batches_for(checkpoint, cfg)
    return D.load_batches(cfg.data, tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length or 128,
                          num_batches=cfg.num_batches,
                          records=D.read_jsonl(cfg.data, split) if split else None)


def loss(model, batches):
    """The token-weighted mean next-token loss over ``batches`` (no gradients): a ``LossResult``
    with ``.loss`` (nats per token) and ``.tokens``. Every measurement evaluates this same L(w).
    Library: :func:`landscape.foundation.loss.evaluate`."""
    from landscape.foundation.loss import evaluate

    return evaluate(_model(model), batches)


def sharpness(model, batches, config: SharpnessConfig | None = None, *, progress: bool = False, **settings) -> dict:
    """Curvature and sharpness at the model's current weights, on ``batches``.

    ``settings``: :class:`SharpnessConfig` fields — ``metrics`` (``lambda_max``, ``lambda_min``,
    ``top_k``, ``trace``, ``density``, ``eps_sharpness``, ``sam_sharpness``, ``asam_sharpness``,
    ``avg_sharpness``), ``params`` (a name regex: measure a block), ``tol``, ``hvp_method``
    ("auto" | "exact" | "fd"), ``seed``, ``dry_run`` (the memory plan only), …
    Returns a JSON-ready dict: ``loss``, ``metrics`` (each a value, or None with its reason;
    ``metrics["details"]``: convergence, residuals, HVPs per estimator), ``hvp`` (method and measured
    noise), ``config`` (every setting, the data's fingerprint, the dtype), ``cost``
    (HVPs, seconds, planned and measured peak). The weights are bit-identical afterwards; a
    bf16/fp16 model is measured in a float32 view of its weights. A measurement whose plan does not
    fit the free memory is refused before it allocates.
    Library: :func:`landscape.measures.sharpness.measure`.
    """
    from landscape.measures.sharpness import measure

    return measure(_model(model), batches, _config(SharpnessConfig, config, settings), progress=progress)


def surface(model, batches, out: str | os.PathLike, config: SurfaceConfig | None = None, *,
            progress: bool = False, **settings) -> dict:
    """A filter-normalised 1-D or 2-D loss surface around the model's weights, written to the h5 file
    ``out`` (resumed from ``out.partial`` when interrupted).

    ``settings``: :class:`SurfaceConfig` fields — ``x``/``y`` grids ("-1:1:21"), ``norm`` ("filter"),
    ``ignore`` ("biasbn"), ``seed``, ``directions`` ("auto" | "held" | "regenerated"), …
    Returns ``out``, ``points``, ``complete``, the coordinates ``x``/``y``, the losses ``loss`` (None
    where a point is not computed yet), ``loss_at_origin``, ``loss_min``/``loss_max`` and ``cost``; the
    file holds the same (:func:`landscape.measures.surface.read_surface`).
    Library: :func:`landscape.measures.surface.surface`.
    """
    from landscape.measures.surface import surface as run

    return run(_model(model), batches, out, _config(SurfaceConfig, config, settings), progress=progress)


def forgetting(base: str | os.PathLike, tuned, config: ForgettingConfig | None = None, *,
               load: LoadConfig | None = None, progress: bool = False, **settings) -> list[dict]:
    """Forgetting of each checkpoint in ``tuned`` (a path or a list of paths) against ``base``, on
    suites of the base model's knowledge; the base is scored once.

    ``settings``: :class:`ForgettingConfig` fields — ``suites`` (paths of suite files or folders;
    the real suites ship in ``data/real/suites``), ``batch_size``, … A delta > 0 means forgotten.
    Returns one dict per tuned checkpoint (``suites``, ``categories``, ``average``, ``scores``).
    Library: :func:`landscape.measures.forgetting.forgetting`.
    """
    from landscape.measures.forgetting import forgetting as run

    tuned = [tuned] if isinstance(tuned, (str, os.PathLike)) else list(tuned)
    return run(base, tuned, _config(ForgettingConfig, config, settings), load=load, progress=progress)


def predict(base: str | os.PathLike, tuned, data, config: PredictConfig | None = None, *,
            load: LoadConfig | None = None, progress: bool = False, **settings) -> dict:
    """What the loss on general text ``data`` predicts about the forgetting of ``tuned`` (path or list)
    against ``base``: ‖Δw‖, gᵀΔw, κ = ΔwᵀHΔw/‖Δw‖² at the base and at the tuned weights, the
    quadratic prediction F̂ = gᵀΔw + ½ΔwᵀHΔw, its λ_max bound, and the measured loss on the line.

    ``data``: a data file or a :class:`DataConfig`. ``settings``: :class:`DataConfig` fields
    (``batch_size``, ``max_length``, ``num_batches``, ``data_split``) and :class:`PredictConfig`
    fields (``line``, ``lambda_max``, ``at_tuned``, ``params``, ``tol``, …).
    Returns ``{"base", "data", "lambda_max_base", "results": [...], "config", "cost"}``; each result
    has the ``tuned`` path, ``metrics``, the ``line`` and ``at_tuned`` (the tuned-weights measurements).
    Library: :func:`landscape.measures.predictors.predict`.
    """
    from landscape.measures.predictors import predict as run

    data_keys = {k: settings.pop(k) for k in list(settings) if k in DataConfig.keys() and k != "data"}
    d = data.replace(**data_keys) if isinstance(data, DataConfig) else DataConfig(data=os.fspath(data), **data_keys)
    return run(base, tuned, _config(PredictConfig, config, settings), d, load=load, progress=progress)


def correlate(manifest: str | os.PathLike, out: str | os.PathLike, *, store: str | os.PathLike | None = None,
              load: LoadConfig | None = None, progress: bool = False) -> dict:
    """Flatness metrics against forgetting over the checkpoints of a YAML ``manifest``: Pearson,
    Spearman and Kendall with p-values and bootstrap intervals per metric and forgetting target; an
    HTML report at ``out`` with its JSON beside it. Finished measurements are kept in the SQLite
    ``store`` (default ``out`` with ``.sqlite``) and never redone.
    Library: :func:`landscape.study.runner.run_manifest`.
    """
    from landscape.study.runner import run_manifest

    return run_manifest(manifest, out, store_path=store, load=load, progress=progress)


def finetune(base: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
             config: FinetuneConfig | None = None, *, load: LoadConfig | None = None, progress: bool = False,
             **settings) -> dict:
    """Fine-tune ``base`` on ``data`` with AdamW, SAM or ASAM (``optimizer``), fully or with LoRA
    (``lora`` rank), into an HF checkpoint or PEFT adapter directory ``out``; resumable
    (``resume=True`` continues from ``out.partial``). ``settings``: :class:`FinetuneConfig` fields.
    Library: :func:`landscape.training.finetune.finetune`.
    """
    from landscape.training.finetune import finetune as run

    return run(base, data, out, _config(FinetuneConfig, config, settings), load=load, progress=progress)
