"""optbook.SGD against torch.optim.SGD: iterate by iterate in float64, state_dicts, resume, closures,
schedulers, the foreach path, validation, devices (FakeTensorMode "cuda", and real CUDA when present),
and mutants that the comparison must catch."""
import copy
import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import optbook.sgd as sgd_module
from optbook.sgd import SGD, sgd_update

F64 = torch.float64
# Shapes of the parameters: a matrix, a 0-dim scalar, a vector, a 3-d tensor, and one that never gets a grad.
SHAPES = [(4, 3), (), (6,), (2, 2, 2), (3,)]
NO_GRAD = 4          # index of the parameter whose grad stays None
STEPS = 30
RTOL, ATOL = 1e-12, 1e-15   # the comparison's tolerance; the mutants below must fail it

VALID = [dict(momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x)
         for m, d, n, w, x in itertools.product((0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 0.1), (False, True))
         if not (n and (m == 0 or d != 0))]          # nesterov needs momentum > 0 and dampening == 0 (both refuse)


def hp_id(hp):
    return "-".join(f"{k}={v}" for k, v in hp.items())


def make_params(device="cpu", dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=F64).to(device=device, dtype=dtype) for s in SHAPES]


def param_groups(ps):
    "Two groups with different learning rates and shapes."
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}]


def gradients(steps, device="cpu", dtype=F64, seed=1):
    "One list of random gradients per step, for every parameter but the one without a grad."
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=F64).to(device=device, dtype=dtype) for s in SHAPES[:NO_GRAD]]
            for _ in range(steps)]


def set_grads(ps, grads):
    "Give each optimizer its own copy: torch's foreach Nesterov path writes into p.grad."
    for p, g in zip(ps, grads): p.grad = g.clone()


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def assert_state_dicts_equal(ours, ref):
    "Same param_groups, same parameters in the state (no empty entries), same keys and values."
    assert ours["param_groups"] == ref["param_groups"]
    assert ours["state"].keys() == ref["state"].keys()
    for i in ref["state"]:
        assert ours["state"][i].keys() == ref["state"][i].keys()
        for k in ref["state"][i]: assert_close(ours["state"][i][k], ref["state"][i][k])


def compare_with_torch(hp, foreach, steps=STEPS, device="cpu", dtype=F64):
    "Step optbook.SGD and torch.optim.SGD with the same gradients; compare every iterate and the final state."
    ours_ps, ref_ps = make_params(device, dtype), make_params(device, dtype)
    ours = SGD(param_groups(ours_ps), lr=0.1, foreach=foreach, **hp)
    ref = torch.optim.SGD(param_groups(ref_ps), lr=0.1, foreach=foreach, **hp)
    for grads in gradients(steps, device, dtype):
        set_grads(ours_ps, grads); set_grads(ref_ps, grads)
        ours.step(); ref.step()
        for a, b in zip(ours_ps, ref_ps): assert_close(a, b)
    assert_state_dicts_equal(ours.state_dict(), ref.state_dict())
    return ours, ours_ps


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("hp", VALID, ids=hp_id)
def test_matches_torch(hp, foreach):
    opt, ps = compare_with_torch(hp, foreach)
    untouched = make_params()[NO_GRAD]
    assert torch.equal(ps[NO_GRAD], untouched), "a parameter without grad must not move"
    assert ps[NO_GRAD] not in opt.state, "a parameter without grad must get no state"
    has_buffer = [("momentum_buffer" in opt.state[p]) for p in ps[:NO_GRAD]]
    assert all(has_buffer) if hp["momentum"] else not any(has_buffer)


def test_no_empty_state_entries():
    ours_ps, ref_ps = make_params(), make_params()
    ours, ref = SGD(param_groups(ours_ps), lr=0.1), torch.optim.SGD(param_groups(ref_ps), lr=0.1)
    for grads in gradients(2):
        set_grads(ours_ps, grads); set_grads(ref_ps, grads)
        ours.step(); ref.step()
    assert_state_dicts_equal(ours.state_dict(), ref.state_dict())


@pytest.mark.parametrize("hp", [VALID[0], dict(momentum=0.9, dampening=0.3), dict(momentum=0.9, nesterov=True,
                                 weight_decay=0.1, maximize=True)], ids=hp_id)
def test_foreach_equals_forloop_exactly(hp):
    runs = []
    for foreach in (False, True):
        ps = make_params()
        opt = SGD(param_groups(ps), lr=0.1, foreach=foreach, **hp)
        for grads in gradients(STEPS):
            set_grads(ps, grads); opt.step()
        runs.append((ps, opt.state_dict()))
    (ps_loop, sd_loop), (ps_each, sd_each) = runs
    assert all(torch.equal(a, b) for a, b in zip(ps_loop, ps_each))
    for i in sd_loop["state"]:
        for k in sd_loop["state"][i]: assert torch.equal(sd_loop["state"][i][k], sd_each["state"][i][k])


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("hp", [dict(momentum=0.9, dampening=0.3, weight_decay=0.1),
                                dict(momentum=0.9, nesterov=True, maximize=True)], ids=hp_id)
def test_resume_from_torch_state_dict(hp, foreach):
    "Run torch 10 steps, load its state_dict into optbook.SGD, continue both 20 steps; and the other way round."
    grads = gradients(STEPS)
    ref_ps = make_params()
    ref = torch.optim.SGD(param_groups(ref_ps), lr=0.1, foreach=foreach, **hp)
    for g in grads[:10]:
        set_grads(ref_ps, g); ref.step()
    ours_ps = [p.clone() for p in ref_ps]
    ours = SGD(param_groups(ours_ps), lr=0.1, foreach=foreach, **hp)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))   # as from disk: torch's loader does not copy
    for g in grads[10:20]:
        set_grads(ours_ps, g); set_grads(ref_ps, g)
        ours.step(); ref.step()
        for a, b in zip(ours_ps, ref_ps): assert_close(a, b)
    back_ps = [p.clone() for p in ours_ps]                  # and torch resumes from optbook's state_dict
    back = torch.optim.SGD(param_groups(back_ps), lr=0.1, foreach=foreach, **hp)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    for g in grads[20:]:
        set_grads(ours_ps, g); set_grads(back_ps, g)
        ours.step(); back.step()
        for a, b in zip(ours_ps, back_ps): assert_close(a, b)
    assert_state_dicts_equal(ours.state_dict(), back.state_dict())


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_closure_and_step_lr(foreach):
    "A closure that recomputes the loss, and a StepLR scheduler, on both optimizers."
    hp = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)
    target = [torch.randn(s, dtype=F64) for s in SHAPES]
    runs = []
    for cls in (SGD, torch.optim.SGD):
        ps = [p.requires_grad_() for p in make_params()]
        opt = cls(param_groups(ps), foreach=foreach, **hp)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        def closure():
            opt.zero_grad()
            loss = sum(((p - t) ** 2).sum() * (i + 1) for i, (p, t) in enumerate(zip(ps[:NO_GRAD], target)))
            loss.backward()
            return loss
        losses, lrs, iterates = [], [], []
        for _ in range(STEPS):
            losses.append(opt.step(closure).item())
            sched.step()
            lrs.append(sched.get_last_lr())
            iterates.append([p.detach().clone() for p in ps])
        runs.append((losses, lrs, iterates, ps))
    (l_o, lr_o, it_o, ps_o), (l_r, lr_r, it_r, _) = runs
    assert lr_o == lr_r and lr_o[-1] == [0.05 * 0.5 ** 6, 0.03 * 0.5 ** 6]
    torch.testing.assert_close(torch.tensor(l_o), torch.tensor(l_r), rtol=RTOL, atol=ATOL)
    for a, b in zip(it_o, it_r):
        for x, y in zip(a, b): assert_close(x, y)
    assert ps_o[NO_GRAD].grad is None and l_o[-1] < l_o[0]


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-0.1), "lr"), (dict(momentum=-0.5), "momentum"), (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(lr=float("nan")), "lr")])
def test_negative_hyperparameters_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        SGD([torch.zeros(2)], **kwargs)
    assert str(kwargs[name]) in str(err.value), "the message names the value"


@pytest.mark.parametrize("kwargs", [dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.3)])
def test_nesterov_misuse_is_rejected_like_torch(kwargs):
    with pytest.raises(ValueError, match="nesterov"):
        SGD([torch.zeros(2)], lr=0.1, **kwargs)
    with pytest.raises(ValueError):
        torch.optim.SGD([torch.zeros(2)], lr=0.1, **kwargs)


def test_defaults_match_torch():
    ours = SGD([torch.zeros(2)]).param_groups[0]
    ref = torch.optim.SGD([torch.zeros(2)]).param_groups[0]
    assert {k: v for k, v in ours.items() if k != "params"} == {k: v for k, v in ref.items() if k != "params"}


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_state_lives_on_the_params_device_fake_cuda(foreach):
    "Under FakeTensorMode, 'cuda' params of two dtypes: every state tensor has its param's device and dtype."
    with FakeTensorMode():
        ps = [torch.randn(3, 4, device="cuda", dtype=torch.float32), torch.randn(5, device="cuda", dtype=torch.float64),
              torch.randn((), device="cuda", dtype=torch.float32)]
        opt = SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True, foreach=foreach)
        for _ in range(3):
            for p in ps: p.grad = torch.randn_like(p)
            opt.step()
        for p in ps:
            buf = opt.state[p]["momentum_buffer"]
            assert p.device.type == "cuda" and buf.device == p.device and buf.dtype == p.dtype
            assert buf.shape == p.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("foreach", [None, False, True], ids=["default", "forloop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_matches_torch_on_cuda(foreach, dtype):
    for hp in (dict(momentum=0.9, dampening=0.3, weight_decay=0.1), dict(momentum=0.9, nesterov=True, maximize=True)):
        if dtype == F64:
            compare_with_torch(hp, foreach, device="cuda", dtype=dtype)
        else:  # float32 kernels may fuse differently: compare at float32 precision
            ours_ps, ref_ps = make_params("cuda", dtype), make_params("cuda", dtype)
            ours = SGD(param_groups(ours_ps), lr=0.1, foreach=foreach, **hp)
            ref = torch.optim.SGD(param_groups(ref_ps), lr=0.1, foreach=foreach, **hp)
            for grads in gradients(STEPS, "cuda", dtype):
                set_grads(ours_ps, grads); set_grads(ref_ps, grads)
                ours.step(); ref.step()
            for a, b in zip(ours_ps, ref_ps): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert all(s["momentum_buffer"].is_cuda for s in ours.state.values())


# Mutants: deliberately wrong rules. The comparison above must reject each of them.
def _dampening_on_first_step(real):
    "Ignore torch's first-step copy: m starts at 0, so m₁ = (1 − τ)g₁ instead of g₁."
    return lambda p, g, m, *, first, **kw: real(p, g, m, first=False, **kw)

def _nesterov_with_old_buffer(real):
    "Nesterov direction g + βm taken with the buffer before its update (m_{t-1} instead of m_t)."
    def rule(p, g, m, *, lr, momentum, dampening, weight_decay, nesterov, maximize, first):
        if maximize: g = -g
        if weight_decay != 0: g = g.add(p, alpha=weight_decay)
        d = g.add(m, alpha=momentum)                     # wrong: m is still m_{t-1} here
        if first: m.copy_(g)
        else: m.mul_(momentum).add_(g, alpha=1 - dampening)
        p.add_(d, alpha=-lr)
    return rule

def _lr_off_by_one_part_in_1e9(real):
    "A tiny relative error in the step size, to show the tolerance is tight."
    return lambda p, g, m, *, lr, **kw: real(p, g, m, lr=lr * (1 + 1e-9), **kw)


@pytest.mark.parametrize("mutant, hp", [
    (_dampening_on_first_step, dict(momentum=0.9, dampening=0.3)),
    (_nesterov_with_old_buffer, dict(momentum=0.9, nesterov=True)),
    (_lr_off_by_one_part_in_1e9, dict(momentum=0.9)),
], ids=["dampening-on-first-step", "nesterov-old-buffer", "lr-1e-9"])
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_comparison_catches_wrong_rules(mutant, hp, foreach, monkeypatch):
    monkeypatch.setattr(sgd_module, "sgd_update", mutant(sgd_update))
    with pytest.raises(AssertionError):
        compare_with_torch(hp, foreach)


@pytest.mark.parametrize("foreach", [False, True])
def test_tensor_hyperparameters_match_torch(foreach):
    "lr and weight_decay given as 0-dim tensors, as torch.optim.SGD accepts them."
    ours_ps, ref_ps = make_params(), make_params()
    hp = dict(lr=torch.tensor(0.05, dtype=F64), momentum=0.9, weight_decay=torch.tensor(0.01, dtype=F64))
    ours, ref = SGD(ours_ps, foreach=foreach, **hp), torch.optim.SGD(ref_ps, foreach=foreach, **hp)
    for grads in gradients(5):
        set_grads(ours_ps, grads); set_grads(ref_ps, grads)
        ours.step(); ref.step()
    for a, b in zip(ours_ps, ref_ps): assert_close(a, b)


def _decoupled_weight_decay(real):
    "Decoupled (SGDW-style) decay θ ← (1 − ηλ)θ instead of torch's coupled g ← g + λθ."
    def rule(p, g, m, *, lr, weight_decay, **kw):
        p.mul_(1 - lr * weight_decay)
        real(p, g, m, lr=lr, weight_decay=0.0, **kw)
    return rule

def _decay_before_maximize(real):
    "Add λθ before negating g for maximize (torch negates first, then adds λθ)."
    def rule(p, g, m, *, weight_decay, maximize, **kw):
        if weight_decay != 0: g = g.add(p, alpha=weight_decay)
        real(p, -g if maximize else g, m, weight_decay=0.0, maximize=False, **kw)
    return rule


@pytest.mark.parametrize("mutant, hp", [
    (_decoupled_weight_decay, dict(momentum=0.9, weight_decay=0.1)),
    (_decay_before_maximize, dict(momentum=0.9, weight_decay=0.1, maximize=True)),
], ids=["decoupled-decay", "decay-before-maximize"])
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_comparison_catches_wrong_weight_decay(mutant, hp, foreach, monkeypatch):
    monkeypatch.setattr(sgd_module, "sgd_update", mutant(sgd_update))
    with pytest.raises(AssertionError):
        compare_with_torch(hp, foreach)


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_momentum_switched_on_mid_run_matches_torch(foreach):
    "momentum 0 for 5 steps (no buffer), then 0.9 (buffer created from the current gradient), then 0 and 0.9 again."
    ours_ps, ref_ps = make_params(), make_params()
    ours = SGD(param_groups(ours_ps), lr=0.1, foreach=foreach)
    ref = torch.optim.SGD(param_groups(ref_ps), lr=0.1, foreach=foreach)
    for t, grads in enumerate(gradients(20)):
        beta = 0.0 if t < 5 or 10 <= t < 13 else 0.9
        for opt in (ours, ref):
            for group in opt.param_groups: group["momentum"] = beta
        set_grads(ours_ps, grads); set_grads(ref_ps, grads)
        ours.step(); ref.step()
        for a, b in zip(ours_ps, ref_ps): assert_close(a, b)
    assert_state_dicts_equal(ours.state_dict(), ref.state_dict())
