"""Point the toolkit at any local Hugging Face causal-LM directory you have.

    python examples/any_model.py /path/to/model [--data my_eval.jsonl] [--tuned /path/to/finetuned]

Needs config.json + safetensors weights (+ tokenizer files). Nothing is downloaded; pickle weights
and remote code are refused unless you set them in LoadConfig yourself.
"""

import argparse

import numpy as np

from landscape.foundation import checkpoint, data
from landscape.foundation.configs import DataConfig, LoadConfig, SharpnessConfig, SurfaceConfig
from landscape.measures import forgetting, sharpness, surface

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--data", default=None, help="jsonl of {text} or {prompt, completion}")
ap.add_argument("--tuned", default=None, help="a fine-tune of MODEL: also measure what it forgot")
ap.add_argument("--device", default="auto")
args = ap.parse_args()

load = LoadConfig(device=args.device)
ck = checkpoint.load_checkpoint(args.model, load)
print(f"{ck.path}: {ck.meta['model_type']}, {ck.meta['n_params']:,} parameters, fingerprint {ck.fingerprint[:12]}")
bs = data.batches_for(ck, DataConfig(data=args.data, batch_size=4, num_batches=4))

r = sharpness.measure(ck.model, bs, SharpnessConfig(metrics="lambda_max,trace,sam", top_k=3, trace_samples=10))
print(f"loss {r['loss']:.4f}; top eigenvalues {np.round(r['metrics']['eigenvalues'], 4).tolist()}; "
      f"trace {r['metrics']['hessian_trace']:.4g}; SAM sharpness {r['metrics']['sam_sharpness']:.4g} "
      f"({r['cost']['hvps']} HVPs, {r['cost']['seconds']} s)")

s = surface.surface(ck.model, bs, "any_model_surface.h5", SurfaceConfig(x="-1:1:11"))
print("1-D surface:", s["out"], surface.surface_metrics(s["out"]))

if args.tuned:
    (f,) = forgetting.forgetting(args.model, [args.tuned], load=load)
    print(f"forgetting (average accuracy lost on the embedded suites): {f['average']['delta']:.3f}")
