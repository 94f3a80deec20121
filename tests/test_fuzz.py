"""Differential fuzzing: every optimizer that has a reference (torch.optim, lion-pytorch, the dense Shampoo reference,
the Signum reference; see tests/test_registry.py) against that reference, on inputs that Hypothesis draws:

- shapes, 0-d and empty tensors included (matrix optimizers get matrices, one of them possibly with a zero dimension
  where the reference accepts it);
- dtypes float64, float32, bfloat16 and float16, each with a tolerance suited to it;
- the entry's option grid (every flag the registry compares), with the learning rate scaled to the edges of its range;
- one or two parameter groups, the second with its own learning rate;
- gradients that are None for some parameters on some steps;
- a save and load of both optimizers in the middle of the run (state_dict through torch.save/torch.load).

A case the reference itself cannot run is drawn again (it says nothing about optbook); every optimizer must still
complete at least 10 compared examples. A failure that Hypothesis shrinks is kept in REGRESSIONS below and runs first,
every time, by name (the first one found: Shampoo crashed on an empty (0, 4) matrix, fixed in 83ec31d).
`FUZZ_EXAMPLES` (default 60 per optimizer) sets the budget; the number of examples that ran is printed at the end.
"""
import io, os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st

from test_registry import WITH_REF

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
# (rtol, atol) per dtype: float64 tight enough to catch a wrong formula; the others at a few units of their rounding,
# compounded over at most five steps
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-6),
       torch.bfloat16: (3e-2, 3e-2), torch.float16: (5e-3, 5e-3)}
VECTOR_SHAPES = [(), (0,), (1,), (3,), (2, 3), (0, 4), (3, 1, 2), (5,)]
MATRIX_SHAPES = [(2, 3), (3, 2), (1, 4), (4, 4), (3, 5)]
LR_SCALE = [1e-6, 0.1, 1.0, 3.0]
SIGN_BASED = {"SignSGD", "Lion", "Rprop"}   # a sign can flip on a rounding difference: low precision is compared on one step
ENTRIES = [e for e in WITH_REF if not e.needs_closure]
# References whose own iterates change when they are saved and loaded (optbook's do not: the registry's resume test
# checks bit-identity); after a reload they are compared at float32 precision.
RELOAD_QUIRKS = {"NAdam": "torch keeps mu_product in float32 (its scalar dtype) until load_state_dict casts it to the "
                          "parameter's dtype, so a float64 run continues with another rounding after a reload"}
RAN = {}


@st.composite
def cases(draw, entry):
    shapes = draw(st.lists(st.sampled_from(MATRIX_SHAPES if entry.matrices_only else VECTOR_SHAPES), min_size=1, max_size=4))
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]))
    kw = dict(draw(st.sampled_from(entry.options)))
    if "lr" in kw: kw["lr"] = kw["lr"] * draw(st.sampled_from(LR_SCALE))
    steps = 1 if dtype in (torch.bfloat16, torch.float16) and entry.name in SIGN_BASED else draw(st.integers(1, 5))
    two_groups = len(shapes) > 1 and draw(st.booleans())
    has_grad = [[draw(st.booleans()) or (k == 0 and i == 0) for i in range(len(shapes))] for k in range(steps)]
    reload_at = draw(st.one_of(st.none(), st.integers(1, steps))) if steps > 1 else None
    seed = draw(st.integers(0, 2**16))
    return dict(shapes=shapes, dtype=dtype, kw=kw, steps=steps, two_groups=two_groups, has_grad=has_grad,
                reload_at=reload_at, seed=seed)


def param_groups(ps, kw, two):
    return [{"params": ps[:1]}, {"params": ps[1:], "lr": kw.get("lr", 1e-3) * 0.5}] if two else [{"params": ps}]


def roundtrip(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def run_one(make, case):
    gen = torch.Generator().manual_seed(case["seed"])
    start = [torch.randn(s, generator=gen, dtype=torch.float64).to(case["dtype"]) for s in case["shapes"]]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64).to(case["dtype"]) for s in case["shapes"]]
             for _ in range(case["steps"])]
    ps = [p.clone() for p in start]
    opt = make(param_groups(ps, case["kw"], case["two_groups"]), case["kw"])
    path = []
    for k in range(case["steps"]):
        if case["reload_at"] == k:
            saved = roundtrip(opt)
            opt = make(param_groups(ps, case["kw"], case["two_groups"]), case["kw"])
            opt.load_state_dict(saved)
        for p, g, on in zip(ps, grads[k], case["has_grad"][k]): p.grad = g.clone() if on else None
        opt.step()
        path.append([p.detach().clone() for p in ps])
    return path


def check(entry, case):
    try:      # a case the reference cannot run (the dense Shampoo reference on an empty matrix, an eigh in bf16) is
        ref = run_one(lambda groups, kw: entry.reference(groups, **kw), case)   # no evidence either way: drawn again
    except (RuntimeError, NotImplementedError, ValueError):
        hypothesis.reject()
    ours = run_one(lambda groups, kw: entry.cls(groups, **kw), case)        # ours must run every case the reference runs
    rtol, atol = TOL[case["dtype"]]
    if case["reload_at"] is not None and entry.name in RELOAD_QUIRKS: rtol, atol = max(rtol, 1e-6), max(atol, 1e-7)
    scale = max(1.0, max((abs(v) for v in [case["kw"].get("lr", 1.0)]), default=1.0))
    for k, (a, b) in enumerate(zip(ours, ref)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype == case["dtype"] and x.shape == y.shape
            torch.testing.assert_close(x.double(), y.double(), rtol=rtol, atol=atol * scale, equal_nan=True,
                                       msg=lambda m: f"{entry.name} {case}: step {k + 1}, parameter {i}: {m}")
    RAN[entry.name] = RAN.get(entry.name, 0) + 1


# Shrunk failures found by this fuzzer, kept as regression examples: (entry name, case).
REGRESSIONS = [
    ("Shampoo", dict(shapes=[(0, 4), (3,)], dtype=torch.float64, kw=dict(lr=1e-7, eps=1e-3, precondition_frequency=1),
                     steps=2, two_groups=False, has_grad=[[True, True], [True, False]], reload_at=1, seed=0)),
]


def _test_for(entry):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=cases(entry))
    def test(case):
        check(entry, case)
    return test


@pytest.mark.parametrize("name,case", REGRESSIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REGRESSIONS)])
def test_regression_examples(name, case):
    "The shrunk failures, each as it was found: optbook must run it (an empty matrix is a no-op), and where the reference can, agree."
    entry = next(e for e in ENTRIES if e.name == name)
    ours = run_one(lambda groups, kw: entry.cls(groups, **kw), case)
    for step in ours: assert step[0].numel() == 0
    gen = torch.Generator().manual_seed(case["seed"])
    first = [torch.randn(s, generator=gen, dtype=torch.float64).to(case["dtype"]) for s in case["shapes"]]
    assert ours[0][0].shape == (0, 4) and not torch.equal(ours[-1][1], first[1])   # the vector still moved


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_fuzz_against_reference(entry):
    _test_for(entry)()
    assert RAN.get(entry.name, 0) >= min(EXAMPLES, 10), f"{entry.name}: only {RAN.get(entry.name, 0)} examples ran"


def test_zz_report_examples_run():
    "Printed with -s (and in the closing note): how many fuzz examples each optimizer ran against its reference."
    if not RAN: pytest.skip("the fuzz tests did not run in this session")
    print("\nfuzz examples run:", sum(RAN.values()), RAN)
