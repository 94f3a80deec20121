"""One registry, every optimizer: the checks each optbook optimizer must pass, whatever its algorithm.

A new chapter adds its optimizer to REGISTRY with a few settings; these tests then check that it
- converges on the ill-conditioned quadratic and makes progress on Rosenbrock (optbook.landscapes),
- follows its reference implementation there iterate by iterate (float64, tight tolerance),
- resumes bit-identically from a `state_dict` saved with torch.save and read with `weights_only=True`,
- keeps every state tensor on the parameter's device and dtype (FakeTensorMode "cuda").
"""
import io
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import optbook
from optbook import landscapes

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("error")  # a diverging run or a deprecation is a failure here


@dataclass
class Entry:
    name: str
    cls: Callable                       # the optbook optimizer
    reference: Optional[Callable]       # the reference implementation with the same arguments, if any
    settings: list                      # keyword arguments to test with; each must converge on the quadratic
    quadratic_steps: int = 300          # steps allowed to reach f − f* < 1e-8 on quadratic(kappa=10)
    rosenbrock: dict = field(default_factory=dict)  # settings for Rosenbrock, whose curvature needs a small lr
    rosenbrock_steps: int = 2000        # steps allowed to shrink Rosenbrock's f − f* a hundredfold


REGISTRY = [
    Entry("SGD", optbook.SGD, torch.optim.SGD, [
        dict(lr=0.09),
        dict(lr=0.02, momentum=0.9),
        dict(lr=0.02, momentum=0.9, nesterov=True),
        dict(lr=0.02, momentum=0.9, dampening=0.5, weight_decay=1e-9),
    ], rosenbrock=dict(lr=1e-3, momentum=0.9)),
]
CASES = [(e, s) for e in REGISTRY for s in e.settings]
IDS = [f"{e.name}-{'-'.join(f'{k}={v}' for k, v in s.items())}" for e, s in CASES]


def gap(landscape, path):
    return (landscape(path[-1]) - landscape.f_min).item()


@pytest.mark.parametrize("entry,kw", CASES, ids=IDS)
def test_converges_on_the_quadratic(entry, kw):
    q = landscapes.quadratic(kappa=10.0, angle=0.3)
    path = landscapes.trajectory(q, lambda ps: entry.cls(ps, **kw), entry.quadratic_steps)
    assert gap(q, path) < 1e-8, f"{entry.name}{kw}: f − f* = {gap(q, path):.2e} after {entry.quadratic_steps} steps"


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda e: e.name)
def test_progress_on_rosenbrock(entry):
    r = landscapes.rosenbrock()
    path = landscapes.trajectory(r, lambda ps: entry.cls(ps, **entry.rosenbrock), entry.rosenbrock_steps)
    start = (r(torch.tensor(r.start, dtype=F64)) - r.f_min).item()
    assert gap(r, path) < start / 100, f"{entry.name}{entry.rosenbrock}: {start:.3g} → {gap(r, path):.3g}"


@pytest.mark.parametrize("entry,kw", [(e, s) for e, s in CASES if e.reference], ids=[i for (e, _), i in zip(CASES, IDS) if e.reference])
def test_follows_reference_on_landscapes(entry, kw):
    "On curved landscapes too (a smaller lr there, so that no run diverges: a warning fails this test)."
    for land, lr in ((landscapes.quadratic(kappa=10.0, angle=0.3), kw["lr"]), (landscapes.rosenbrock(), 1e-3),
                     (landscapes.beale(), 1e-3)):
        kw = dict(kw, lr=lr)
        ours = landscapes.trajectory(land, lambda ps: entry.cls(ps, **kw), 100, start=land.start)
        ref = landscapes.trajectory(land, lambda ps: entry.reference(ps, **kw), 100, start=land.start)
        assert ours.shape == ref.shape == (101, 2)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def train(opt, ps, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in ps: p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize("entry,kw", CASES, ids=IDS)
@pytest.mark.parametrize("foreach", [False, True])
def test_resume_is_bit_identical(entry, kw, foreach):
    def fresh():
        gen = torch.Generator().manual_seed(0)
        return [torch.randn(s, generator=gen, dtype=F64) for s in [(3, 4), (), (7,)]]
    a = fresh(); opt_a = entry.cls(a, foreach=foreach, **kw)
    train(opt_a, a, 5, seed=1); train(opt_a, a, 5, seed=2)
    b = fresh(); opt_b = entry.cls(b, foreach=foreach, **kw)
    train(opt_b, b, 5, seed=1)
    buf = io.BytesIO(); torch.save(opt_b.state_dict(), buf); buf.seek(0)
    b2 = [t.clone() for t in b]
    opt_c = entry.cls(b2, foreach=foreach, **kw)
    opt_c.load_state_dict(torch.load(buf, weights_only=True))
    train(opt_c, b2, 5, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b2))
    sa, sc = opt_a.state_dict()["state"], opt_c.state_dict()["state"]
    assert sa.keys() == sc.keys() and all(torch.equal(sa[i][k], sc[i][k]) for i in sa for k in sa[i])


@pytest.mark.parametrize("entry,kw", CASES, ids=IDS)
@pytest.mark.parametrize("foreach", [False, True])
def test_state_follows_the_device(entry, kw, foreach):
    with FakeTensorMode():
        ps = [torch.empty(8, 3, device="cuda", dtype=dt) for dt in (torch.float32, torch.float64)]
        for p in ps: p.grad = torch.empty_like(p)
        opt = entry.cls(ps, foreach=foreach, **kw)
        for _ in range(2): opt.step()
        for p in ps:
            for s in opt.state[p].values():
                if isinstance(s, torch.Tensor) and s.dim() > 0:
                    assert s.device == p.device and s.dtype == p.dtype
