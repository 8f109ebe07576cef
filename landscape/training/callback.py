"""``LandscapeCallback``: curvature and forgetting of the model *while* a ``transformers.Trainer`` trains it.

Every ``every`` optimizer steps, at step 0 and at the end of training, the callback measures the model
being trained on fixed general data (:class:`~landscape.foundation.configs.ProbeConfig`):

- ``loss``: the general loss at the current weights;
- ``lambda_max``: λ_max of the general-loss Hessian at the current weights, over the trainable
  parameters (all weights of a full fine-tune; the adapter's A/B of a LoRA run), Lanczos with at most
  ``probe_max_iter`` steps — the bound on its cost (+3 HVPs measuring the products' noise);
- ``predictors``: the forgetting predictors of the update so far, Δw = w_now − w_step0, measured at
  the step-0 weights (where this ``train()`` began: a Trainer resumed from a checkpoint starts there) (:func:`landscape.measures.predictors.measure_pair`): ‖Δw‖, gᵀΔw, κ = ΔwᵀHΔw/‖Δw‖²,
  F̂ = gᵀΔw + ½ΔwᵀHΔw and the measured general-loss rise F. For a PEFT model they are in merged
  space: Δw is each adapted matrix's ``get_delta_weight`` (the BA·α/r the merge would add), measured
  with the adapter disabled, so no copy of the step-0 weights is kept;
- ``forgetting``: the suites' scores now against step 0 (positive = forgotten), and their average;
- ``task_loss``: the loss on held-out task data (``probe_task_data``): how much has been learned, so
  that each probe is a (learned, forgotten) point of the trade-off frontier
  (:func:`landscape.study.tradeoff.trajectory_points`).

Nothing of the run changes: the weights are bit-identical after every measurement (points are set from
saved copies), dropout is off meanwhile (eval mode, put back), the global torch RNG states (CPU and
every CUDA device) are saved and restored, gradients are taken into buffers (``.grad`` untouched).
So a run with the callback has the same weights and losses as one without it (tested).

Results are logged as ``landscape/<metric>`` through the trainer's own ``Trainer.log`` — into
``state.log_history`` and every ``report_to`` integration (TensorBoard, W&B) — and, when ``out`` is
given, written (atomically, after each measurement) to a trajectory JSON that ``landscape plot`` draws.
The trainer is the one given, or else the one whose ``train()`` called the callback (found on the call
stack at step 0). Its cost is kept: ``landscape/probe_seconds`` per measurement and, at the end, the
share of the run's wall time spent measuring.

Under torchrun every rank measures (the callback runs on each): the probe batches are split across
ranks and the sums all-reduced, as in the measuring commands; rank 0 writes the JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

import landscape
from landscape.foundation import params as P
from landscape.foundation.configs import ProbeConfig, PredictConfig
from landscape.foundation.errors import UserError

try:  # transformers is a dependency; the base class only has to exist for the class statement
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object

DEFAULT_EVERY = 100
LINE = "0:1:2"  # predictors: L at t = 0 and t = 1 only (F measured, no line)
PREDICTOR_KEYS = ("delta_norm", "grad_delta", "kappa_base", "quad_pred", "general_loss_increase", "critical_sharpness",
                  "kl_base_tuned", "kl_tuned_base")


@contextlib.contextmanager
def frozen_run(model):
    """Eval mode and the global RNG states of the run, both put back on exit."""
    was = model.training
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    model.eval()
    try:
        yield
    finally:
        model.train(was)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def lora_deltas(model) -> tuple[dict, list] | None:
    """For a PEFT LoRA model: ({name of each adapted base weight: parameter}, [its merged Δw]), else None."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    named, deltas = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and hasattr(mod, "base_layer") and mod.active_adapters:
            w = mod.base_layer.weight
            with torch.no_grad():
                d = sum(mod.get_delta_weight(a) for a in mod.active_adapters if a in mod.lora_A)
            if isinstance(d, torch.Tensor):
                named[f"{name}.base_layer.weight"] = w
                deltas.append(d.detach().to(torch.promote_types(w.dtype, torch.float32)))
    return (named, deltas) if named else None


def _find_trainer(callback):
    """The Trainer whose ``train()`` is running this callback (a frame up the stack), or None."""
    import inspect

    from transformers import Trainer

    frame = inspect.currentframe()
    while frame is not None:
        me = frame.f_locals.get("self")
        if isinstance(me, Trainer) and callback in getattr(me.callback_handler, "callbacks", ()):
            return me
        frame = frame.f_back
    return None


class LandscapeCallback(TrainerCallback):
    """Measure sharpness/forgetting every ``every`` steps of a Trainer run (see the module docstring).

    ``LandscapeCallback(data="general.jsonl", every=50, metrics=["lambda_max"])`` in ``callbacks=[...]``;
    ``config`` (a :class:`ProbeConfig`) holds the other settings (batches, HVP bound); ``suites`` the
    forgetting suites; ``out`` the trajectory JSON; ``trainer`` the trainer to log through;
    ``tokenizer`` the one text data is tokenized with (default: the trainer's ``processing_class``,
    else the tokenizer saved in the model's own directory). Without ``data``, a model outside the toy
    world is refused (the default probe text is the toy world's).
    """

    def __init__(self, data=None, every: int | None = None, metrics=None, *, suites=(), out=None, trainer=None,
                 config: ProbeConfig | None = None, tokenizer=None):
        base = config or ProbeConfig()  # arguments given here override its fields; every defaults to 100
        self.cfg = base.replace(probe_every=every or base.probe_every or DEFAULT_EVERY,
                                probe_data=base.probe_data if data is None else str(data),
                                probe_metrics=base.probe_metrics if metrics is None else tuple(metrics),
                                probe_suites=tuple(map(str, suites)) or base.probe_suites)
        self.out, self.trainer = (Path(out) if out else None), trainer
        self.tokenizer = tokenizer  # else the trainer's processing_class, else the model's own directory's
        self.records: list[dict] = []
        self.seconds = 0.0
        self._batches = self._suites = self._w0 = self._scores0 = self._task = None
        self._skipped: set = set()
        self._meter_base = None  # the forgetting meter's step-0 state (see _meter_setup)
        self._t_start = None

    # -- Trainer events ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        self.trainer = self.trainer or _find_trainer(self)
        self.begin(model, processing_class or kw.get("tokenizer"), state.global_step, state=state)

    def on_step_end(self, args, state, control, model=None, **kw):
        self.at_step(model, state.global_step, state.max_steps, state=state)

    def on_train_end(self, args, state, control, model=None, **kw):
        self.end(model, state.global_step, state=state, main=state.is_world_process_zero)

    # -- any training loop (landscape finetune drives these) -------------------------------------
    def begin(self, model, tokenizer, step: int = 0, state=None, out=None) -> None:
        """Before the first step: the probe batches (and step-0 weights/scores), then a measurement."""
        self._t_start = time.perf_counter()
        self._tokenizer = self.tokenizer or tokenizer or _tokenizer_of(model)
        self.out = Path(out) if out is not None else self.out
        self._setup(model)
        if not self.records or self.records[0]["step"] != step:
            self._probe(model, step, state)
        elif self._suites is not None:  # a resumed trajectory has its step 0, but not the step-0 scores
            from landscape.measures.forgetting import score_suite

            with frozen_run(model):
                self._scores0 = {s.name: score_suite(model, self._tokenizer, s) for s in self._suites}

    def at_step(self, model, step: int, max_steps: int, state=None) -> None:
        """After optimizer step ``step``: a measurement every ``every`` steps (the last one in :meth:`end`)."""
        if step % self.cfg.probe_every == 0 and step < max_steps:
            self._probe(model, step, state)

    def end(self, model, step: int, state=None, main: bool = True) -> dict:
        """After training: the last step's measurement and the cost summary (printed on rank 0)."""
        if not self.records or self.records[-1]["step"] != step:
            self._probe(model, step, state)
        total = time.perf_counter() - (self._t_start or time.perf_counter())
        share = self.seconds / total if total > 0 else None
        self.summary = {"probes": len(self.records), "probe_seconds": round(self.seconds, 3),
                        "run_seconds": round(total, 3), "share": share}
        self._write()
        if main:
            import sys

            pct = f"{100 * share:.1f}%" if share is not None else "?"
            print(f"landscape: {len(self.records)} probes took {self.seconds:.1f} s, {pct} of the run's "
                  f"{total:.1f} s", file=sys.stderr)
        return self.document()

    # -- measurement ---------------------------------------------------------------------------
    def _setup(self, model) -> None:
        from landscape.foundation import data as D
        from landscape.foundation.loss import param_device

        tok = self._tokenizer
        if hasattr(tok, "tokenizer") and not hasattr(tok, "apply_chat_template"):
            tok = tok.tokenizer  # a processor: its text tokenizer
        def batches(path, num_batches):
            return D.load_batches(path, tok, batch_size=self.cfg.probe_batch_size, num_batches=num_batches,
                                  max_length=D.resolve_max_length(model.config, self.cfg.probe_max_length),
                                  vocab_size=model.get_input_embeddings().num_embeddings).to(param_device(model))

        metrics = self.cfg.probe_metrics
        if GENERAL_METRICS & set(metrics):  # the metrics measured on general text
            if not self.cfg.probe_data:
                D.refuse_toy_default(tok, "probe_data")
            self._batches = batches(self.cfg.probe_data or D.default_eval_data(), self.cfg.probe_num_batches)
        if "task_loss" in metrics:
            self._task = batches(self.cfg.probe_task_data, None)
        if "predictors" in metrics and lora_deltas(model) is None:
            # the step-0 weights, held on the host: a GPU run keeps all its memory (restored per probe)
            self._w0 = [p.detach().to("cpu", copy=True) for p in P.select(model).values()]
        if "forgetting" in metrics:
            from landscape.measures.forgetting import load_suites

            if not self.cfg.probe_suites:
                D.refuse_toy_default(tok, "probe_suites")
            self._suites = load_suites(list(self.cfg.probe_suites) or None)
            if self.cfg.probe_suite_items:  # a fixed subset: every probe scores the same items
                self._suites = [replace(s, items=s.items[:self.cfg.probe_suite_items]) for s in self._suites]

    def _probe(self, model, step: int, state=None) -> None:
        t0 = time.perf_counter()
        with frozen_run(model):
            values = self._measure(model, step)
        dt = time.perf_counter() - t0
        self.seconds += dt
        values["probe_seconds"] = round(dt, 3)
        self.records.append({"step": step, **values})
        if state is not None:
            self._log(state, {f"landscape/{k}": v for k, v in values.items() if isinstance(v, (int, float))})
        self._write()

    def _measure(self, model, step: int) -> dict:
        from landscape.foundation.objective import ModelObjective

        out: dict = {}
        metrics = self.cfg.probe_metrics
        trainable = P.select(model)
        if {"loss", "lambda_max"} & set(metrics):
            with P.grad_only(model, trainable.values()):
                obj = ModelObjective(model, self._batches, trainable)
                if "loss" in metrics:
                    out["loss"] = obj.value()
                if "lambda_max" in metrics:
                    out.update(self._lambda_max(model, obj))
        if "meter" in metrics:
            out.update(self._meter(model, trainable))
        if "predictors" in metrics and step > 0:
            out.update(self._predictors(model, trainable))
        if "forgetting" in metrics:
            out.update(self._forgetting(model, step))
        if "task_loss" in metrics:
            from landscape.foundation.loss import evaluate

            out["task_loss"] = evaluate(model, self._task).loss
        return out

    def _hvp_method(self, model) -> str:
        asked = self.cfg.probe_hvp_method
        if asked == "auto" and not _twice_differentiable(model):
            return "fd"  # checkpointed blocks, FlashAttention kernels, compiled graphs: no double backward
        return asked

    def _lambda_max(self, model, obj) -> dict:
        """λ_max as `landscape sharpness` measures it — the same memory plan (exact or fd products, the
        saved weights and the Lanczos direction in memory or on disk, the float32 view of bf16/fp16
        weights), and a result that cannot be trusted to ``probe_tol`` is null with its reason. A plan
        that does not fit beside the training run is a null with the refusal's line (warned once), never
        an out-of-memory in the run it was added to."""
        from landscape.foundation.configs import SharpnessConfig
        from landscape.foundation.errors import UserError
        from landscape.measures import sharpness

        cfg = SharpnessConfig(metrics=("lambda_max",), max_iter=self.cfg.probe_max_iter, tol=self.cfg.probe_tol,
                              seed=0, hvp_method=self._hvp_method(model))
        try:
            r = sharpness.measure(model, obj.batches, cfg)
        except UserError as e:
            self._skip("lambda_max", str(e))
            return {"lambda_max": None, "lambda_max_null": str(e)}
        eigen = r["metrics"].get("details", {}).get("eigen") or {}
        out = {"lambda_max": r["metrics"]["lambda_max"], "lambda_max_hvps": r["cost"]["hvps"],
               "lambda_max_converged": bool(eigen.get("converged")), "lambda_max_hvp_method": r["hvp"]["hvp_method"]}
        if r.get("nulls", {}).get("lambda_max"):
            out["lambda_max_null"] = r["nulls"]["lambda_max"]
        return out

    def _skip(self, what: str, why: str) -> None:
        """A probe metric left out at this step: warned once per metric, recorded in every record."""
        if what not in self._skipped:
            self._skipped.add(what)
            import warnings

            warnings.warn(f"LandscapeCallback: {what} not measured: {why}", stacklevel=2)

    def _predictors(self, model, trainable) -> dict:
        from landscape.measures.sharpness import float32_view

        with float32_view(model, trainable.values(), "the callback's predictors"):  # bf16/fp16: see there
            return self._predictors_now(model, trainable)

    def _predictors_now(self, model, trainable) -> dict:
        from landscape.foundation.objective import ModelObjective
        from landscape.measures.predictors import measure_pair

        cfg = PredictConfig(line=LINE, lambda_max=False, at_tuned=False, hvp_method=self._hvp_method(model))
        lora = lora_deltas(model)
        if lora is not None:  # merged space, at the base: the adapter disabled, Δw along the base weights
            named, delta = lora
            with model.disable_adapter(), P.grad_only(model, named.values()):
                r = measure_pair(ModelObjective(model, self._batches, named), delta, cfg)
        else:
            ps = list(trainable.values())
            why = self._predictors_do_not_fit(model, trainable, cfg.hvp_method)
            if why:
                self._skip("predictors", why)
                return {k: None for k in PREDICTOR_KEYS} | {"predictors_null": why}
            delta = [p.detach().to(t := torch.promote_types(p.dtype, torch.float32)) - w.to(p.device, t)
                     for p, w in zip(ps, self._w0)]
            with P.grad_only(model, ps), P.perturbed(ps):  # the current weights come back bit-exactly
                with torch.no_grad():
                    for p, w in zip(ps, self._w0):  # the step-0 weights
                        p.copy_(w)
                r = measure_pair(ModelObjective(model, self._batches, trainable), delta, cfg)
        return {k: r["metrics"][k] for k in PREDICTOR_KEYS}

    # -- the forgetting meter ------------------------------------------------------------------
    def _meter(self, model, trainable) -> dict:
        """‖Δw‖, gᵀΔw and KL(base ‖ now) both ways against the step-0 weights, on the general probe
        data — the cheap predictors (`landscape predict`'s values of the same names, for Δw = now − step
        0): the general gradient g and the base's next-token log-probabilities are taken once, at the
        first probe, and held in host memory; each later probe costs one forward a probe batch and two
        dot products over the weights. LoRA: Δw in the merged space, g along the base weights."""
        with frozen_run(model):
            if self._meter_base is None:
                self._meter_base = self._meter_setup(model, trainable)
            named, g0, w0, cached = self._meter_base
            lora = lora_deltas(model)
            if lora is not None:
                deltas = iter(lora[1])
            else:
                deltas = (P.local(p).detach().to(torch.promote_types(p.dtype, torch.float32)) - w.to(p.device)
                          for p, w in zip(named.values(), w0))
            dn2 = gd = 0.0
            split = lora is None and P.any_sharded(named.values())  # FSDP rows: sums over the ranks
            for g, d in zip(g0, deltas):
                dn2 += float(P.dot([d], [d], split))
                gd += float(P.dot([d], [g.to(d.device)], split))
                del d
            kl = self._meter_kl(model, cached)
        return {"delta_norm": math.sqrt(dn2), "grad_delta": gd, **kl}

    def _meter_setup(self, model, trainable):
        """(the weights Δw is over, g at step 0 on the host, the step-0 weights on the host — none for
        LoRA, whose Δw is its own —, the base's log-probabilities of each probe batch on the host)."""
        from landscape.foundation.objective import ModelObjective, gradient

        lora = lora_deltas(model)
        named = lora[0] if lora is not None else trainable
        off = model.disable_adapter() if lora is not None else contextlib.nullcontext()
        with off, P.grad_only(model, named.values()):
            obj = ModelObjective(model, self._batches, named)
            _, g = gradient(obj, dtype=torch.float32)
            cached = self._log_probs(model, obj)
        g0 = [x.to("cpu") for x in g]
        del g
        w0 = None if lora is not None else [P.local(p).detach().to("cpu", torch.promote_types(p.dtype, torch.float32),
                                                                    copy=True) for p in named.values()]
        return named, g0, w0, cached

    def _log_probs(self, model, obj) -> list:
        """Per local probe batch: (its weight, the loss-bearing positions' next-token log-probabilities
        at the current weights, on the host)."""
        from landscape.measures.predictors import next_token_log_probs

        return [(weight, next_token_log_probs(model, b).to("cpu")) for b, weight in obj.local_batches]

    def _meter_kl(self, model, cached) -> dict:
        from landscape.foundation import distributed as dist
        from landscape.foundation.objective import ModelObjective
        from landscape.measures.predictors import kl_sums

        now = self._log_probs(model, ModelObjective(model, self._batches, P.select(model)))
        sums, n = [0.0, 0.0], 0
        for (weight, lb), (_, lt) in zip(cached, now):
            bt, tb = kl_sums(lb, lt)
            sums[0] += bt * weight
            sums[1] += tb * weight
            n += int(lb.shape[0] * weight)
        n = dist.all_reduce_scalar(float(n))
        return {"kl_base_tuned": dist.all_reduce_scalar(sums[0]) / n, "kl_tuned_base": dist.all_reduce_scalar(sums[1]) / n}

    def _predictors_do_not_fit(self, model, trainable, asked: str) -> str | None:
        """The refusal line when the predictors' plan (``landscape predict``'s: Δw, H·Δw, the saved
        weights, one HVP) does not fit the memory the training run leaves, else None."""
        from landscape.foundation import plan as plans
        from landscape.foundation.errors import UserError
        from landscape.foundation.objective import ModelObjective

        with P.grad_only(model, trainable.values()):
            obj = ModelObjective(model, self._batches, trainable)
            dev = obj.params[0].device
            act = plans.activation_bytes(obj.model, obj.batches)
            start = plans.start_bytes(obj.model, dev)
            free = plans.free_bytes(dev)
            method = plans.resolve_hvp_method(obj.params, act, asked, start, free, sharded=obj.sharded)
            try:
                plans.check_fits(plans.predict(obj.params, act, method, start), free, "the callback's predictors")
            except UserError as e:
                return str(e)
        return None

    def _forgetting(self, model, step: int) -> dict:
        from landscape.measures.forgetting import compare, score_suite

        scores = {s.name: score_suite(model, self._tokenizer, s) for s in self._suites}
        if self._scores0 is None:
            self._scores0 = scores
        c = compare(self._scores0, scores, self._suites)
        out = {f"forgetting/{n}": row["delta"] for n, row in c["suites"].items()}
        if c["average"] is not None:
            out["forgetting"] = c["average"]["delta"]
        return out

    # -- output --------------------------------------------------------------------------------
    def _log(self, state, logs: dict) -> None:
        if self.trainer is not None:
            from transformers import Trainer

            control = self.trainer.control
            flags = (control.should_log, control.should_evaluate, control.should_save)
            Trainer.log(self.trainer, dict(logs))  # the stock log: a subclass's own metrics are not mixed in
            # Trainer.log's on_log event clears should_log; the step's own loss log must still happen
            control.should_log, control.should_evaluate, control.should_save = flags
        else:  # no trainer found: the history only (report_to integrations do not see these)
            state.log_history.append({**logs, "step": state.global_step})

    def _write(self) -> None:
        if self.out is None or not _is_main():
            return
        from landscape.foundation.io import dumps

        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(dumps(self.document()))
        os.replace(tmp, self.out)

    def document(self) -> dict:
        """The trajectory as JSON-ready data (what ``out`` holds)."""
        return {"kind": "landscape-trajectory", "config": self.cfg.as_dict(), "records": self.records,
                "cost": getattr(self, "summary", {"probe_seconds": round(self.seconds, 3)}),
                "version": landscape.__version__}


def _is_main() -> bool:
    from landscape.foundation import distributed

    return distributed.is_main()


GENERAL_METRICS = {"loss", "meter", "lambda_max", "predictors"}  # measured on the general probe data
METER_KEYS = ("delta_norm", "grad_delta", "kl_base_tuned", "kl_tuned_base")


def _tokenizer_of(model):
    """The tokenizer saved beside the model's weights (``name_or_path``, when it is a local directory that
    holds one): a Trainer built without ``processing_class`` (pre-tokenized data, an own collator)."""
    from landscape.foundation.checkpoint import load_tokenizer

    for m in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        path = getattr(m, "name_or_path", None) or getattr(getattr(m, "config", None), "_name_or_path", None)
        if path and Path(path).is_dir():
            tok = load_tokenizer(path)
            if tok is not None:
                return tok
    return None


def read_trajectory(path) -> dict:
    """A trajectory JSON written by :class:`LandscapeCallback` (errors: one line naming the file)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: not a readable trajectory JSON ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "landscape-trajectory":
        raise UserError(f"{p}: not a trajectory written by LandscapeCallback")
    return doc


def _twice_differentiable(model) -> bool:
    """Whether exact (double-backward) products can run through the model as it trains: not with
    activation checkpointing, FlashAttention kernels (no double backward; our exact products swap
    in math attention only for SDPA/eager) or a ``torch.compile``d module."""
    attn = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    compiled = hasattr(model, "_orig_mod") or type(model).__name__ == "OptimizedModule"
    from landscape.foundation.checkpoint import recomputes_activations

    return not (recomputes_activations(model) or attn.startswith("flash") or compiled)
