"""Run by tests/test_sam.py in a fresh process: the host memory SAM's perturbation adds on bf16 weights
(10 parameters of 10M entries), in MB; usage: sam_peak_check.py REPO_ROOT."""
import sys, torch
sys.path.insert(0, sys.argv[1])
from landscape.training.sam import Perturbation

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
torch.manual_seed(0)
ps = [torch.nn.Parameter(torch.randn(10_000_000).bfloat16()) for _ in range(10)]
for p in ps:
    p.grad = torch.randn(p.shape).bfloat16()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status("VmRSS:")
Perturbation(ps, rho=0.05).perturb()
print((status("VmHWM:") - before) / 2**20)
