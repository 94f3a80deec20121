"""`make bench`: time one SGD-with-momentum step, optbook against torch.optim, on every available device.

Also the prototype of the coming `fused=True` path: the same rule through `optbook.core.compile_update`
(`torch.compile` of the rule over all tensors, hyperparameters as 0-dim tensors), timed after its compilation.

Not a pytest file (timings are not tests). Prints a table of milliseconds per step: the median of the
repeats within a round, and the best of several interleaved rounds (this machine's timings drift with
memory-management noise, and interleaving keeps that from favouring whichever implementation ran first).
"""
import argparse, statistics, time

import torch

import optbook
from optbook.core import compile_update, hyper_tensors


def make_params(n_params, n_tensors, device, dtype):
    size = n_params // n_tensors
    ps = [torch.randn(size, device=device, dtype=dtype, requires_grad=True) for _ in range(n_tensors)]
    for p in ps: p.grad = torch.randn_like(p)
    return ps


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def time_step(opt, device, repeats):
    opt.step(); sync(device)  # state creation is not part of a step's cost
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); opt.step(); sync(device); times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


class CompiledSGD:
    "optbook.SGD's rule over every tensor at once through compile_update (the future fused path), after one eager step."
    def __init__(self, ps, **kw):
        self.opt, self.ps = optbook.SGD(ps, **kw), ps
        self.opt.step()                                  # creates the momentum buffers (the first-step special case)
        self.fused = compile_update()
    def step(self):
        group = self.opt.param_groups[0]
        bufs = {"m": [self.opt.state[p]["momentum_buffer"] for p in self.ps]}
        self.fused(self.opt, self.ps, [p.grad for p in self.ps], bufs, hyper_tensors(self.opt.hyper(group)))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=int, default=20_000_000, help="total number of parameters")
    ap.add_argument("--tensors", type=int, default=50, help="number of parameter tensors")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    kw = dict(lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    print(f"SGD (momentum, nesterov, weight decay): {args.params / 1e6:.0f}M fp32 params in {args.tensors} tensors")
    print(f"{'device':8} {'implementation':28} {'ms/step':>8}")
    impls = [("optbook, for-loop", optbook.SGD, dict(foreach=False)),
             ("optbook, foreach", optbook.SGD, dict(foreach=True)),
             ("torch.optim, for-loop", torch.optim.SGD, dict(foreach=False)),
             ("torch.optim, foreach", torch.optim.SGD, dict(foreach=True)),
             ("torch.optim, fused", torch.optim.SGD, dict(fused=True)),
             ("optbook, compiled rule", CompiledSGD, dict())]
    for device in devices:
        best = {}
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds} on {device.type} ...", flush=True)
            for name, cls, extra in impls:
                ps = make_params(args.params, args.tensors, device, torch.float32)
                ms = time_step(cls(ps, **kw, **extra), device, args.repeats)
                best[name] = min(ms, best.get(name, float("inf")))
                del ps
        for name, _, _ in impls:
            print(f"{device.type:8} {name:28} {best[name]:8.1f}", flush=True)


if __name__ == "__main__":
    main()
