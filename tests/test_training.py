"""Whole training steps: `torch.compile` of zero_grad → forward → backward → `opt.step()` for every elementwise optimizer
in the registry, against the same steps run eagerly; and mixed precision (bfloat16 autocast on the CPU with a
`torch.amp.GradScaler`), where a step whose gradient holds an inf is skipped and leaves parameters and state untouched.

The elementwise optimizers are taken from tests/test_registry.py (every entry whose rule is not per-matrix and whose
step needs no closure), so an optimizer added there is compiled here too. Each uses the registry's richest setting
(its last), in float32, on a two-layer MLP for a few steps. The compiled step is not one graph: dynamo breaks at
`Optimizer.zero_grad` (skipped by torch) and at `loss.backward()`; the test asserts the iterates, that dynamo compiled
graphs at all, and that it never gave up on a frame (the recompile limit).

The step count: under torch.compile the core hands the rules t as the counter tensor itself (`Optimizer._count_step`),
as torch.optim does, so `Optimizer.step` has no graph break of its own and a model with more parameter tensors than
`torch._dynamo.config.recompile_limit` compiles within it (before, `int(state["step"])` broke the graph once per
parameter and dynamo recompiled the resumed loop for each one). `torch.compile(opt.step, fullgraph=True)` is checked
for every elementwise optimizer below: one graph, no recompile after the first step, the eager iterates.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import test_registry as R

pytestmark = [pytest.mark.filterwarnings("error"),   # torch's own compile stack warns about its own jit internals:
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]
STEPS = 3
ELEMENTWISE = [e for e in R.REGISTRY if not e.needs_closure and not getattr(e.cls, "per_matrix", False)]
# Known gaps: strict xfails, so that the owner's fix shows up as XPASS (a failure) and the entry goes.
RECOMPILES = dict(strict=True, raises=torch._dynamo.exc.FailOnRecompileLimitHit)
KNOWN = {}      # name -> pytest.mark.xfail(strict=True, ...): none at present
CASES = [pytest.param(e, e.settings[-1], id=e.name, marks=KNOWN.get(e.name, ())) for e in ELEMENTWISE]
KNOWN_STEP = {}
# Optimizers whose step is never traced (torch.compiler.disable), by design: the step reads host numbers at every step.
EAGER_STEP = {"Prodigy": "the estimate d is a host float read from sums over every tensor (as in prodigyopt)"}
CASES += [pytest.param(e, e.settings[i], id=f"{e.name}-{i}") for e in ELEMENTWISE if e.name == "SGD"
          for i in range(1, len(e.settings) - 1)]                         # the SGD variants: momentum, Nesterov


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)


def data(seed=1, n=32, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=dtype), torch.randn(n, 1, generator=gen, dtype=dtype)


def train(model, opt, step_fn, steps=STEPS):
    x, y = data()
    losses = [step_fn(x, y) for _ in range(steps)]
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("entry, kw", CASES)
def test_compiled_training_step_matches_eager(entry, kw):
    "zero_grad → forward → backward → step under torch.compile (default backend): the eager run's losses and parameters in float32."
    base = mlp()
    runs = []
    for compiled in (False, True):
        model = copy.deepcopy(base)
        opt = entry.cls(model.parameters(), **kw)
        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            value = loss.detach()      # not `return loss`: dynamo's resume after backward() would read loss.grad (a warning)
            loss.backward()
            opt.step()
            return value
        if compiled:
            torch._dynamo.reset(); counters.clear()
            step = torch.compile(step)
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):   # no silent fallback to eager
            runs.append(train(model, opt, step))
        if compiled:
            assert counters["stats"]["unique_graphs"] >= 1, "dynamo compiled nothing"
    (loss_e, ps_e), (loss_c, ps_c) = runs
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(ps_c, ps_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(ps_e, base.parameters())), "the optimizer moved the parameters"
    torch._dynamo.reset()


def _snapshot(opt, model):
    "Parameters and every state tensor (and number), cloned."
    state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
             for i, p in enumerate(model.parameters()) if p in opt.state}
    return [p.detach().clone() for p in model.parameters()], state


def _same(a, b):
    (pa, sa), (pb, sb) = a, b
    return (all(torch.equal(x, y) for x, y in zip(pa, pb)) and sa.keys() == sb.keys()
            and all(sa[i].keys() == sb[i].keys() and all(torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k]))
                                                        for k in sa[i]) for i in sa))


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01))])
def test_gradscaler_skips_a_step_with_an_inf_gradient_under_bfloat16_autocast(name, kw):
    "autocast('cpu', bfloat16) + GradScaler('cpu'): the inf step changes neither θ nor the state; the rest equals a run without it."
    cls = next(e.cls for e in R.REGISTRY if e.name == name)
    try: torch.amp.GradScaler("cpu")
    except (AttributeError, RuntimeError, TypeError, ValueError) as err: pytest.skip(f"no CPU GradScaler in this torch: {err}")
    x, y = data()
    poison = 2                                   # the step whose gradient gets an inf
    def run(with_poison):
        model = mlp()
        opt = cls(model.parameters(), **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
        skipped = []
        for k in range(5):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                assert out.dtype == torch.bfloat16, "autocast is on"
                loss = F.mse_loss(out.float(), y)
            scaler.scale(loss).backward()
            if with_poison and k == poison: next(model.parameters()).grad.view(-1)[3] = float("inf")
            before, scale = _snapshot(opt, model), scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if _same(_snapshot(opt, model), before):          # neither θ nor any state entry changed
                skipped.append(k)
                assert scaler.get_scale() == scale * 0.5, "the scale backed off"
        assert all(torch.isfinite(p).all() for p in model.parameters())
        return model, opt, skipped
    model_p, opt_p, skipped = run(True)
    assert skipped == [poison], f"{name}: exactly the inf step is skipped, untouched (skipped: {skipped})"
    if name == "Adam":
        assert int(opt_p.state[next(model_p.parameters())]["step"]) == 4, "the skipped step was not counted"
    # Full batch, so the four steps taken (0, 1, 3, 4) are four clean steps: a run without scaler nor inf takes them too
    # (the scales 2⁸ and 2⁷ are powers of two, so unscaling is exact up to bfloat16's range).
    model_c = mlp(); opt_c = cls(model_c.parameters(), **kw)
    for _ in range(4):
        opt_c.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(model_c(x).float(), y)
        loss.backward(); opt_c.step()
    for a, b in zip(model_p.parameters(), model_c.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def deep_mlp(layers=2):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[m for _ in range(layers) for m in (torch.nn.Linear(4, 4), torch.nn.Tanh())],
                               torch.nn.Linear(4, 1))


def test_compiled_training_step_with_more_parameters_than_the_recompile_limit():
    "Adam (which counts steps) on a 6-tensor MLP, recompile_limit 4: a whole compiled step needs no compile per parameter."
    model = deep_mlp()
    ref = copy.deepcopy(model)
    opts = [torch.optim.Adam(ref.parameters(), lr=0.01),
            R.REGISTRY[[e.name for e in R.REGISTRY].index("Adam")].cls(model.parameters(), lr=0.01)]
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    def make(m, opt):
        def step():
            opt.zero_grad(); loss = F.mse_loss(m(x), y); value = loss.detach(); loss.backward(); opt.step(); return value
        return step
    eager, compiled = make(ref, opts[0]), torch.compile(make(model, opts[1]))
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=4):
            for _ in range(3): torch.testing.assert_close(compiled(), eager(), rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()
    for a, b in zip(model.parameters(), ref.parameters()): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_training_step_without_a_step_count_takes_any_number_of_parameters():
    "SGD keeps no step count: the same 6-tensor MLP compiles within recompile_limit 4 (the gap above is the count's)."
    model = deep_mlp()
    ref = copy.deepcopy(model)
    opts = [torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9),
            R.REGISTRY[[e.name for e in R.REGISTRY].index("SGD")].cls(model.parameters(), lr=0.05, momentum=0.9)]
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    def make(m, opt):
        def step():
            opt.zero_grad(); loss = F.mse_loss(m(x), y); value = loss.detach(); loss.backward(); opt.step(); return value
        return step
    eager, compiled = make(ref, opts[0]), torch.compile(make(model, opts[1]))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=4):
        for _ in range(2): torch.testing.assert_close(compiled(), eager(), rtol=1e-5, atol=1e-6)
    for a, b in zip(model.parameters(), ref.parameters()): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name, marks=KNOWN_STEP.get(e.name, ())) for e in ELEMENTWISE])
def test_compiled_step_is_one_graph(entry):
    """torch.compile(opt.step, fullgraph=True): no graph break (fullgraph raises on one), at most three compilations
    (the first step creates the state; dynamo may specialize a Python number once before it makes it dynamic, as for
    Schedule-Free's step counter k), none after the fourth step; the eager iterates (float32)."""
    from torch._dynamo.testing import CompileCounter
    if entry.name in EAGER_STEP: pytest.skip(f"{entry.name}.step runs eagerly under torch.compile: {EAGER_STEP[entry.name]}")
    kw = entry.settings[-1]
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen) for s in [(5, 4), (4,), (3, 5), (2, 2, 2)]]
    grads = [[torch.randn(b.shape, generator=gen) for b in base] for _ in range(10)]
    ends, counter = [], CompileCounter()
    torch._dynamo.reset()
    try:
        for compiled in (False, True):
            ps = [b.clone() for b in base]
            opt = entry.cls(ps, **kw)
            step = torch.compile(opt.step, backend=counter, fullgraph=True) if compiled else opt.step
            for k, gs in enumerate(grads):
                for p, g in zip(ps, gs): p.grad = g.clone()
                step()
                if k == 3: warm = counter.frame_count
            ends.append(ps)
    finally:
        torch._dynamo.reset()
    assert warm <= 3 and counter.frame_count == warm, f"{warm} compilations in 4 steps, {counter.frame_count} in {len(grads)}"
    for a, b in zip(*ends): torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
