"""What is special to optbook.Adagrad, optbook.RMSprop and optbook.Adadelta; the generic checks (torch.optim iterate by
iterate over each option grid, resume, state_dict swaps, devices, compile, ...) run for every optimizer in
tests/test_registry.py.

Here: Adagrad's state created at construction, lr_decay with per-parameter steps and initial_accumulator_value;
where RMSprop's lr goes under a scheduler with centered + momentum; all three under a LambdaLR that changes lr at
every step (iterates and state equal torch's), and Graves's form of RMSprop (lr inside the momentum buffer) failing
that check on the iterates; Adadelta's rho = 1 edge; capturable refused; and mutants of the rules (ε inside or outside
the root, Adadelta's lr ignored) that the comparison with torch must reject."""
import copy

import pytest
import torch

import optbook.adaptive as adaptive
from optbook.adaptive import Adadelta, Adagrad, RMSprop, adadelta_update, adagrad_update, rmsprop_update
from test_registry import REGISTRY, assert_paths_close, assert_states_equal, groups, make_params, run

F64 = torch.float64
ENTRIES = {e.name: e for e in REGISTRY if e.name in ("Adagrad", "RMSprop", "Adadelta")}
FOREACH = pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])


def paths(name, kw, foreach, steps=20, cls=None):
    "optbook's and torch's iterates on the registry's random problem (two groups, parameters without grad)."
    e = ENTRIES[name]
    ours, _, _ = run(lambda ps: (cls or e.cls)(groups(ps, kw), foreach=foreach, **kw), e, steps)
    ref, _, _ = run(lambda ps: e.reference(groups(ps, kw), foreach=foreach, **kw), e, steps)
    return ours, ref


def test_adagrad_state_exists_at_construction_like_torch():
    "torch.optim.Adagrad creates `sum` and `step` for every parameter in __init__: the state_dicts agree before any step."
    kw = dict(lr=0.1, initial_accumulator_value=0.25)
    ours, ref = Adagrad(groups(make_params(ENTRIES["Adagrad"]), kw), **kw), torch.optim.Adagrad(groups(make_params(ENTRIES["Adagrad"]), kw), **kw)
    a, b = ours.state_dict(), ref.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in b["state"]:
        assert torch.equal(a["state"][i]["sum"], b["state"][i]["sum"]) and torch.equal(a["state"][i]["step"], b["state"][i]["step"])


@FOREACH
def test_adagrad_lr_decay_uses_each_parameters_own_step(foreach):
    "lr_decay: η_t = η/(1 + (t − 1)ν) with t per parameter; the registry's SOMETIMES parameter gets half the steps."
    ours, ref = paths("Adagrad", dict(lr=0.3, lr_decay=0.5, initial_accumulator_value=0.1), foreach, steps=30)
    assert_paths_close(ours, ref)


@FOREACH
@pytest.mark.parametrize("G0", [0.0, 1e6])
def test_adagrad_initial_accumulator_value(G0, foreach):
    "A huge G₀ all but freezes the parameters, exactly as in torch; G₀ = 0 with eps = 0 still works (g ≠ 0)."
    ours, ref = paths("Adagrad", dict(lr=0.1, initial_accumulator_value=G0, eps=0.0), foreach)
    assert_paths_close(ours, ref)


def test_adagrad_initial_accumulator_value_is_read_from_the_constructor_like_torch():
    "A per-group initial_accumulator_value is ignored by torch (it reads the constructor's); optbook does the same."
    mk = lambda cls: cls([{"params": [torch.ones(3, dtype=F64)], "initial_accumulator_value": 5.0}], initial_accumulator_value=0.5)
    for opt in (Adagrad, torch.optim.Adagrad):
        assert all(torch.equal(s["sum"], torch.full((3,), 0.5, dtype=F64)) for s in mk(opt).state.values())


@FOREACH
def test_rmsprop_centered_momentum_lr_outside_the_buffer_under_a_scheduler(foreach):
    "torch keeps b ← βb + ḡ/r and steps θ ← θ − η·b: when StepLR halves η, the whole buffer is rescaled at once."
    e, kw = ENTRIES["RMSprop"], dict(lr=0.02, alpha=0.9, momentum=0.9, centered=True, eps=1e-4, weight_decay=0.01)
    out = []
    for cls in (e.cls, e.reference):
        ps = make_params(e)
        opt = cls(groups(ps, kw), foreach=foreach, **kw)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        path, _, _ = run(lambda _: opt, e, 1, params=ps)
        for k in range(1, 15):
            sched.step()
            p, _, _ = run(lambda _: opt, e, 1, params=ps, start=k); path += p
        out.append(path)
    assert_paths_close(*out)


def test_adadelta_rho_one_is_accepted_like_torch_and_steps_by_g():
    "rho = 1: v and a stay 0, so d = √ε/√ε·g = g and θ ← θ − ηg (torch accepts rho in [0, 1])."
    x = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    x.grad = torch.tensor([0.5, 3.0], dtype=F64)
    Adadelta([x], lr=0.1, rho=1.0).step()
    torch.testing.assert_close(x.detach(), torch.tensor([0.95, -2.3], dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [RMSprop, Adadelta])
def test_capturable_is_refused(cls):
    with pytest.raises(ValueError, match="capturable"): cls([torch.zeros(2)], capturable=True)
    cls([torch.zeros(2)], capturable=False)


# Mutants: deliberately wrong rules, with the rule's own signature. The reference comparison must reject each.
def _adagrad_eps_inside(p, g, G, *, t, eta, nu, lam, eps, maximize):
    "ε inside the root: √(G + ε) instead of √G + ε."
    if maximize: g = -g
    if lam is not None: g = g.add(p, alpha=lam)
    G.addcmul_(g, g)
    eta_t = eta if nu is None else eta / (1 + (t - 1) * nu)
    p.addcdiv_(g, G.add(eps).sqrt(), value=-eta_t)

def _adagrad_decay_from_t(p, g, G, *, t, eta, nu, lam, eps, maximize):
    "lr_decay off by one step: η/(1 + tν) instead of η/(1 + (t − 1)ν)."
    adagrad_update(p, g, G, t=t + 1, eta=eta, nu=nu, lam=lam, eps=eps, maximize=maximize)

def _rmsprop_eps_inside(p, g, v, m=None, b=None, *, eta, beta2, eps, lam, beta, maximize):
    "ε inside the root: √(v + ε) instead of √v + ε."
    if maximize: g = -g
    if lam is not None: g = g.add(p, alpha=lam)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if m is not None:
        m.lerp_(g, 1 - beta2); r = v.addcmul(m, m, value=-1).add_(eps).sqrt_()
    else: r = v.add(eps).sqrt_()
    if b is not None: b.mul_(beta).addcdiv_(g, r); p.add_(b, alpha=-eta)
    else: p.addcdiv_(g, r, value=-eta)

def _rmsprop_lr_inside_buffer(p, g, v, m=None, b=None, *, eta, beta2, eps, lam, beta, maximize):
    "Graves's form: b ← βb + η·ḡ/r, θ ← θ − b (equal for a constant η; differs under a scheduler)."
    if maximize: g = -g
    if lam is not None: g = g.add(p, alpha=lam)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    r = v.sqrt().add_(eps) if m is None else v.addcmul(m.lerp_(g, 1 - beta2), m, value=-1).sqrt_().add_(eps)
    b.mul_(beta).add_(eta * g / r); p.sub_(b)

def _rmsprop_uncentered_variance(p, g, v, m=None, b=None, **kw):
    "Centered flag ignored: divides by the RMS instead of the standard deviation."
    rmsprop_update(p, g, v, None, b, **kw)

def _adadelta_lr_ignored(p, g, v, a, *, eta, **kw):
    "Zeiler's algorithm with torch's lr dropped (η = 1 always)."
    adadelta_update(p, g, v, a, eta=1.0, **kw)

def _adadelta_eps_outside(p, g, v, a, *, eta, beta2, eps, lam, maximize):
    "ε outside the roots: (√a + ε)/(√v + ε) instead of √(a + ε)/√(v + ε)."
    if maximize: g = -g
    if lam is not None: g = g.add(p, alpha=lam)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    d = a.sqrt().add_(eps).div_(v.sqrt().add_(eps)).mul_(g)
    a.mul_(beta2).addcmul_(d, d, value=1 - beta2)
    p.add_(d, alpha=-eta)

def _adadelta_lr_in_accumulator(p, g, v, a, *, eta, beta2, eps, lam, maximize):
    "a accumulates the scaled step (ηd)² instead of d²."
    if maximize: g = -g
    if lam is not None: g = g.add(p, alpha=lam)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    d = a.add(eps).sqrt_().div_(v.add(eps).sqrt_()).mul_(g).mul_(eta)
    a.mul_(beta2).addcmul_(d, d, value=1 - beta2)
    p.sub_(d)


MUTANTS = [
    ("Adagrad", _adagrad_eps_inside, dict(lr=0.1, eps=1e-2)),
    ("Adagrad", _adagrad_decay_from_t, dict(lr=0.1, lr_decay=0.1)),
    ("RMSprop", _rmsprop_eps_inside, dict(lr=0.01, eps=1e-4)),
    ("RMSprop", _rmsprop_uncentered_variance, dict(lr=0.01, centered=True)),
    ("Adadelta", _adadelta_lr_ignored, dict(lr=0.5)),
    ("Adadelta", _adadelta_eps_outside, dict(lr=1.0, eps=1e-3)),
    ("Adadelta", _adadelta_lr_in_accumulator, dict(lr=0.5)),
]


def _install(monkeypatch, name, mutant):
    "Adagrad calls its `rule`; RMSprop and Adadelta call the module's function from `update`."
    if name == "Adagrad": monkeypatch.setattr(Adagrad, "rule", staticmethod(mutant))
    else: monkeypatch.setattr(adaptive, f"{name.lower()}_update", mutant)


@pytest.mark.parametrize("name, mutant, kw", MUTANTS, ids=[m.__name__.strip("_") for _, m, _ in MUTANTS])
@FOREACH
def test_comparison_catches_wrong_rules(name, mutant, kw, foreach, monkeypatch):
    assert_paths_close(*paths(name, kw, foreach))          # the real rule passes ...
    _install(monkeypatch, name, mutant)
    with pytest.raises(AssertionError):                     # ... each mutant fails
        assert_paths_close(*paths(name, kw, foreach))


# Under a learning-rate schedule that changes lr at every step. With a constant lr, Graves's form of RMSprop with momentum
# (η inside the buffer) gives the same iterates as torch's (η outside), so only a changing lr tells them apart on the
# iterates themselves; the state_dict comparison would notice the buffer's scale (w = ηb), but that is indirect.
LR_FACTORS = (1.0, 0.3, 2.0, 0.7, 1.5, 0.1)          # LambdaLR's factor at scheduler count k: lr changes at every step

def every_step(k): return LR_FACTORS[k % len(LR_FACTORS)]

SCHEDULED = [
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.02, alpha=0.9, momentum=0.5, centered=True, eps=1e-4, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1, weight_decay=0.01)),
    ("Adadelta", dict(lr=0.5, rho=0.9, eps=1e-4, weight_decay=0.01)),
]


def scheduled(cls, name, kw, foreach, factor=every_step, steps=24):
    "Iterates (and the optimizer) of `cls` under LambdaLR(factor) on the registry's problem; lr is read before each step."
    e = ENTRIES[name]
    ps = make_params(e)
    opt = cls(groups(ps, kw), foreach=foreach, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    path, lrs = [], []
    for k in range(steps):
        lrs.append([g["lr"] for g in opt.param_groups])
        p, _, _ = run(lambda _: opt, e, 1, params=ps, start=k); path += p
        sched.step()
    return path, lrs, opt


@FOREACH
@pytest.mark.parametrize("name, kw", SCHEDULED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULED)])
def test_under_a_schedule_that_changes_lr_every_step(name, kw, foreach):
    "float64, tight tolerance: every iterate and the final state_dict equal torch.optim's while lr changes at every step."
    e = ENTRIES[name]
    ours, lrs_o, o = scheduled(e.cls, name, kw, foreach)
    ref, lrs_r, r = scheduled(e.reference, name, kw, foreach)
    assert lrs_o == lrs_r and all(a[0] != b[0] for a, b in zip(lrs_o, lrs_o[1:]))   # lr really changes every step
    assert_paths_close(ours, ref)
    assert_states_equal(o.state_dict()["state"], r.state_dict()["state"], close=True)


@FOREACH
@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_graves_form_fails_the_schedule_check(momentum, foreach, monkeypatch):
    """The Graves-form mutant (η inside the momentum buffer) matches torch's iterates for a constant lr, to rounding, and
    is caught by the iterates alone (not by the state) as soon as the schedule changes lr."""
    e, kw = ENTRIES["RMSprop"], dict(lr=0.01, momentum=momentum)
    constant = lambda k: 1.0
    ref_const, _, _ = scheduled(e.reference, "RMSprop", kw, foreach, constant)
    ref_sched, _, _ = scheduled(e.reference, "RMSprop", kw, foreach)
    assert_paths_close(scheduled(e.cls, "RMSprop", kw, foreach)[0], ref_sched)           # the real rule passes
    monkeypatch.setattr(adaptive, "rmsprop_update", _rmsprop_lr_inside_buffer)
    assert_paths_close(scheduled(e.cls, "RMSprop", kw, foreach, constant)[0], ref_const, rtol=1e-10, atol=1e-13)
    with pytest.raises(AssertionError, match="step 2,"):                                   # lr changed after step 1
        assert_paths_close(scheduled(e.cls, "RMSprop", kw, foreach)[0], ref_sched)
