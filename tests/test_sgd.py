"""What is special to optbook.SGD; the generic checks (torch.optim.SGD iterate by iterate over the option grid,
resume, state_dict swaps, devices, compile, ...) run for every optimizer in tests/test_registry.py.

Here: torch's first-step convention and a loaded None buffer, Nesterov's argument rules, tensor hyperparameters,
momentum switched on and off mid-run, and mutants of the rule that the reference comparison must reject."""
import copy

import pytest
import torch

import optbook.sgd as sgd_module
from optbook.sgd import SGD, sgd_update
from test_registry import REGISTRY, assert_paths_close, compare_with_reference, grads_for, make_params, run, set_grads

F64 = torch.float64
ENTRY = next(e for e in REGISTRY if e.name == "SGD")
FOREACH = pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])


def hp_id(hp):
    return "-".join(f"{k}={v}" for k, v in hp.items())


@FOREACH
def test_loaded_none_momentum_buffer_makes_a_first_step_like_torch(foreach):
    "torch.optim.SGD treats a momentum_buffer of None as absent: the next step copies the gradient into a new buffer."
    kw = dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.1)
    _, ref, ref_ps = run(lambda ps: torch.optim.SGD(ps, foreach=foreach, **kw), ENTRY, 3)
    sd = copy.deepcopy(ref.state_dict())
    for s in sd["state"].values(): s["momentum_buffer"] = None
    ours_ps, back_ps = [p.clone() for p in ref_ps], [p.clone() for p in ref_ps]
    ours, back = SGD(ours_ps, foreach=foreach, **kw), torch.optim.SGD(back_ps, foreach=foreach, **kw)
    ours.load_state_dict(copy.deepcopy(sd)); back.load_state_dict(copy.deepcopy(sd))
    a, _, _ = run(lambda ps: ours, ENTRY, 5, params=ours_ps, start=3)
    b, _, _ = run(lambda ps: back, ENTRY, 5, params=back_ps, start=3)
    assert_paths_close(a, b)
    assert all(isinstance(s["momentum_buffer"], torch.Tensor) for s in ours.state.values())


@pytest.mark.parametrize("kwargs", [dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.3)])
def test_nesterov_misuse_is_rejected_like_torch(kwargs):
    with pytest.raises(ValueError, match="nesterov"):
        SGD([torch.zeros(2)], lr=0.1, **kwargs)
    with pytest.raises(ValueError):
        torch.optim.SGD([torch.zeros(2)], lr=0.1, **kwargs)


@FOREACH
def test_tensor_hyperparameters_match_torch(foreach):
    "lr and weight_decay given as 0-dim tensors, as torch.optim.SGD accepts them."
    hp = dict(lr=torch.tensor(0.05, dtype=F64), momentum=0.9, weight_decay=torch.tensor(0.01, dtype=F64))
    a, _, _ = run(lambda ps: SGD(ps, foreach=foreach, **hp), ENTRY, 5)
    b, _, _ = run(lambda ps: torch.optim.SGD(ps, foreach=foreach, **hp), ENTRY, 5)
    assert_paths_close(a, b)


@FOREACH
def test_momentum_switched_on_and_off_mid_run_matches_torch(foreach):
    "momentum 0 for 5 steps (no buffer), then 0.9 (buffer created from the current gradient), then 0 and 0.9 again."
    ours_ps, ref_ps = make_params(ENTRY), make_params(ENTRY)
    ours, ref = SGD(ours_ps, lr=0.1, foreach=foreach), torch.optim.SGD(ref_ps, lr=0.1, foreach=foreach)
    for t in range(20):
        beta = 0.0 if t < 5 or 10 <= t < 13 else 0.9
        for opt in (ours, ref):
            for group in opt.param_groups: group["momentum"] = beta
        grads = grads_for(ENTRY, t)
        set_grads(ours_ps, grads); set_grads(ref_ps, grads)
        ours.step(); ref.step()
        assert_paths_close([ours_ps], [ref_ps])


# Mutants: deliberately wrong rules, with the rule's own signature. The reference comparison must reject each.
def _dampening_on_first_step(real):
    "Ignore torch's first-step copy: m starts at 0, so m₁ = (1 − τ)ĝ₁ instead of ĝ₁."
    return lambda p, g, m=None, *, first, **kw: real(p, g, m, first=False, **kw)

def _nesterov_with_old_buffer(real):
    "Nesterov direction ĝ + βm taken with the buffer before its update (m_{t-1} instead of m_t)."
    def rule(p, g, m=None, *, eta, beta, tau, lam, nesterov, maximize, first):
        if maximize: g = -g
        if lam is not None: g = g.add(p, alpha=lam)
        d = g.add(m, alpha=beta)                      # wrong: m is still m_{t-1} here
        if first: m.copy_(g)
        else: m.mul_(beta).add_(g, alpha=1 - tau)
        p.add_(d, alpha=-eta)
    return rule

def _decoupled_weight_decay(real):
    "Decoupled (SGDW-style) decay θ ← (1 − ηλ)θ instead of torch's coupled ĝ ← g + λθ."
    def rule(p, g, m=None, *, eta, lam, **kw):
        if lam is not None: p.mul_(1 - eta * lam)
        real(p, g, m, eta=eta, lam=None, **kw)
    return rule

def _decay_before_maximize(real):
    "Add λθ before negating g for maximize (torch negates first, then adds λθ)."
    def rule(p, g, m=None, *, lam, maximize, **kw):
        if lam is not None: g = g.add(p, alpha=lam)
        real(p, -g if maximize else g, m, lam=None, maximize=False, **kw)
    return rule


@pytest.mark.parametrize("mutant, hp", [
    (_dampening_on_first_step, dict(momentum=0.9, dampening=0.3)),
    (_nesterov_with_old_buffer, dict(momentum=0.9, nesterov=True)),
    (_decoupled_weight_decay, dict(momentum=0.9, weight_decay=0.1)),
    (_decay_before_maximize, dict(momentum=0.9, weight_decay=0.1, maximize=True)),
], ids=["dampening-on-first-step", "nesterov-old-buffer", "decoupled-decay", "decay-before-maximize"])
@FOREACH
def test_comparison_catches_wrong_rules(mutant, hp, foreach, monkeypatch):
    compare_with_reference(ENTRY, dict(lr=0.1, **hp), foreach)          # the real rule passes ...
    monkeypatch.setattr(sgd_module, "sgd_update", mutant(sgd_update))
    with pytest.raises(AssertionError):                                  # ... each mutant fails
        compare_with_reference(ENTRY, dict(lr=0.1, **hp), foreach)
