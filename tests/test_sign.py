"""What is special to chapter 6 (optbook.sign): the registry (tests/test_registry.py) runs the checks every optimizer shares.

- `LionReference`: lion-pytorch's `Lion` behind a thin adapter, the registry's reference for `optbook.Lion`;
- Rprop's conventions (the gradient zeroed after a sign flip, the clip at every step, the first step) and Lion's order
  (the sign of c_t before m is updated, decay scaled by lr) are each rejected when wrong, by the comparisons with the
  references;
- Rprop's lr sets σ₀ only, and a σ₀ wrong by 1e-9 is caught; Lion with β₁ = β₂ is Signum; Adam at β → 0 is sign descent;
- Lion's two decay forms under a schedule: the default is the paper's θ ← θ − η(sign(c) + λθ); decoupled_weight_decay=True
  is Loshchilov–Hutter's (1 − (η/η₀)λ), both equal to lion-pytorch's, and equal to each other with λ' = η₀λ;
- Lion with β₁ = β₂² is the sign of torch's Nesterov direction; Rprop's step sizes shrink by 0.6^(1/3) per step on pure noise;
- signatures: Rprop's equals torch.optim.Rprop's, Lion's shared arguments equal lion-pytorch's; the options refused.
- the core's NaN policy through nan_sign: a NaN or ±inf gradient makes its coordinate NaN (also after an Rprop sign
  flip), in both paths, while the other coordinates stay equal to torch's and lion-pytorch's.
"""
import inspect

import pytest
import torch
from lion_pytorch import Lion as _LionPytorch
from lion_pytorch.lion_pytorch import update_fn as _lion_update_fn


def _real(x): return torch.view_as_real(x) if x.is_complex() else x


class LionReference(_LionPytorch):
    "lion-pytorch's Lion; accepts torch's `foreach` (ignored), does `maximize` by negating g, and views complex tensors as real pairs."
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, decoupled_weight_decay=False,
                 maximize=False, foreach=None):
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay)
        def update_fn(p, grad, exp_avg, *args):
            _lion_update_fn(_real(p), _real(-grad if maximize else grad), _real(exp_avg), *args)
        self.update_fn = update_fn


# Defined above before this import: test_registry's entry imports LionReference from this (maybe half-loaded) module.
import test_registry as R  # noqa: E402
from optbook import Adam, SignSGD  # noqa: E402
from optbook.sign import Lion, Rprop, lion_update, rprop_update  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error")
F64 = torch.float64
RPROP = R.Entry("Rprop", Rprop, torch.optim.Rprop, [dict(lr=0.01)], torch_state=True)   # registry-independent
LION = R.Entry("Lion", Lion, LionReference, [dict(lr=0.01)])
RPROP_KW = dict(lr=0.01, etas=(0.4, 1.5), step_sizes=(1e-4, 0.05))
LION_KW = dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)


def with_update(base, update):
    "`base` whose update calls `update(self, p, g, s, h)` instead."
    Mutant = type(base.__name__, (base,), {"update": lambda self, p, g, s, h, *, t=None, first=False: update(p, g, s, h)})
    return Mutant


def rprop_no_zeroing(p, g, s, h):
    "Rprop− : after a sign flip the coordinate still moves, and the flip is remembered (shrinks twice)."
    if h["maximize"]: g = -g
    prev, sigma = s[r"\check g"], s[r"\sigma"]
    sg = (g * prev).sign()
    zeta = torch.where(sg > 0, h["zeta_plus"], torch.where(sg < 0, h["zeta_minus"], sg + 1))
    sigma.mul_(zeta).clamp_min_(h["sigma_min"]).clamp_max_(h["sigma_max"])
    p.addcmul_(g.sign(), sigma, value=-1); prev.copy_(g)


def rprop_clip_only_on_change(p, g, s, h):
    "The step sizes clipped only when they changed (so σ₀ = lr outside [σ_min, σ_max] survives the first steps)."
    if h["maximize"]: g = -g
    prev, sigma = s[r"\check g"], s[r"\sigma"]
    sg = (g * prev).sign()
    zeta = torch.where(sg > 0, h["zeta_plus"], torch.where(sg < 0, h["zeta_minus"], sg + 1))
    sigma.copy_(torch.where(sg.ne(0), (sigma * zeta).clamp(h["sigma_min"], h["sigma_max"]), sigma))
    g = torch.where(sg < 0, 0, g)
    p.addcmul_(g.sign(), sigma, value=-1); prev.copy_(g)


def rprop_plain_sign(p, g, s, h):
    "Sign descent with a fixed step lr: what the chapter's seed called Rprop."
    if h["maximize"]: g = -g
    p.addcmul_(g.sign(), s[r"\sigma"], value=-1)


def lion_m_first(p, g, s, h):
    "Lion updating m before taking the sign (so c_t = β₁m_t + (1 − β₁)g_t)."
    m = s["m"]
    if h["maximize"]: g = -g
    if h["lam"] is not None: p.mul_(1 - h["eta"] * h["lam"])
    m.mul_(h["beta2"]).add_(g, alpha=1 - h["beta2"])
    p.add_(m.mul(h["beta1"]).add_(g, alpha=1 - h["beta1"]).sign_(), alpha=-h["eta"])


def lion_sign_of_m(p, g, s, h):
    "Signum with β₂: sign(m_t) instead of sign(c_t)."
    m = s["m"]
    if h["maximize"]: g = -g
    if h["lam"] is not None: p.mul_(1 - h["eta"] * h["lam"])
    m.mul_(h["beta2"]).add_(g, alpha=1 - h["beta2"])
    p.add_(m.sign(), alpha=-h["eta"])


def lion_decay_not_scaled_by_lr(p, g, s, h):
    "θ ← (1 − λ)θ: a decay not multiplied by η, neither the Lion paper's (1 − ηλ) nor Loshchilov–Hutter's (1 − (η/η₀)λ)."
    h = dict(h)
    if h["lam"] is not None: h["lam"] = h["lam"] / h["eta"]
    lion_update(p, g, s["m"], **h)


def test_the_rules_pass_the_same_comparisons():
    R.compare_with_reference(RPROP, dict(RPROP_KW, lr=0.2), foreach=False)   # lr > σ_max: clipped at step 1
    R.compare_with_reference(LION, LION_KW, foreach=True)


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("update,kw", [(rprop_no_zeroing, RPROP_KW), (rprop_clip_only_on_change, dict(RPROP_KW, lr=0.2)),
                                       (rprop_plain_sign, RPROP_KW)],
                         ids=["no-zeroing-after-flip", "clip-only-on-change", "plain-sign-descent"])
def test_rprop_slips_are_rejected(update, kw, foreach):
    with pytest.raises(AssertionError):
        R.compare_with_reference(R.Entry(**{**RPROP.__dict__, "cls": with_update(Rprop, update)}), kw, foreach)


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("update", [lion_m_first, lion_sign_of_m, lion_decay_not_scaled_by_lr],
                         ids=["m-updated-before-sign", "sign-of-m", "decay-not-scaled-by-lr"])
def test_lion_slips_are_rejected(update, foreach):
    with pytest.raises(AssertionError):
        R.compare_with_reference(R.Entry(**{**LION.__dict__, "cls": with_update(Lion, update)}), LION_KW, foreach)


def test_rprop_sigma0_off_by_1e9_is_caught():
    class Mutant(Rprop):
        def init_state(self, p, group):
            s = super().init_state(p, group); s[r"\sigma"].mul_(1 + 1e-9); return s
    with pytest.raises(AssertionError):
        R.compare_with_reference(R.Entry(**{**RPROP.__dict__, "cls": Mutant}), RPROP_KW, foreach=False)


def test_rprop_lr_only_sets_the_initial_step_size():
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = Rprop([x], lr=0.01)
    x.grad = torch.tensor([1.0, -2.0, 0.0], dtype=F64); opt.step()
    assert torch.equal(x.detach(), torch.tensor([-0.01, 0.01, 0.0], dtype=F64))   # σ₀ = η, sign(0) = 0
    opt.param_groups[0]["lr"] = 100.0
    x.grad = torch.tensor([1.0, 3.0, 1.0], dtype=F64); opt.step()
    torch.testing.assert_close(opt.state[x]["step_size"], torch.tensor([0.012, 0.005, 0.01], dtype=F64), rtol=1e-15, atol=0)
    assert opt.state[x]["prev"][1] == 0                                            # zeroed after the flip


def test_lion_with_equal_betas_is_signum():
    ps = [R.make_params(LION), R.make_params(LION)]
    a, _, _ = R.run(lambda _: Lion(ps[0], lr=0.01, betas=(0.9, 0.9), weight_decay=0.1), LION, 30, params=ps[0])
    b, _, _ = R.run(lambda _: SignSGD(ps[1], lr=0.01, momentum=0.9, weight_decay=0.1), LION, 30, params=ps[1])
    R.assert_paths_close(a, b)


def test_adam_at_tiny_betas_is_sign_descent():
    ps = [R.make_params(LION), R.make_params(LION)]
    a, _, _ = R.run(lambda _: Adam(ps[0], lr=0.01, betas=(1e-14, 1e-14), eps=1e-300), LION, 30, params=ps[0])
    b, _, _ = R.run(lambda _: SignSGD(ps[1], lr=0.01), LION, 30, params=ps[1])
    R.assert_paths_close(a, b, rtol=1e-10, atol=1e-12)


def test_signatures():
    ours, ref = inspect.signature(Rprop).parameters, inspect.signature(torch.optim.Rprop).parameters
    own = ("fused", "cautious")   # optbook's own keyword-only options, last (the registry checks where they sit)
    assert [(n, p.kind, p.default) for n, p in ours.items() if n not in own] == [(n, p.kind, p.default) for n, p in ref.items()]
    a, b = Rprop([torch.zeros(2)]).param_groups[0], torch.optim.Rprop([torch.zeros(2)]).param_groups[0]
    assert {k: v for k, v in a.items() if k not in ("params", *own)} == {k: v for k, v in b.items() if k != "params"}
    ours, ref = inspect.signature(Lion).parameters, inspect.signature(_LionPytorch).parameters
    shared = ["params", "lr", "betas", "weight_decay"]
    assert list(ours)[:4] == shared and all(ours[n].default == ref[n].default for n in shared)
    assert ours["decoupled_weight_decay"].default == ref["decoupled_weight_decay"].default
    for name in ("decoupled_weight_decay", "maximize", "foreach", "differentiable", "fused"):
        assert ours[name].kind == inspect.Parameter.KEYWORD_ONLY
    assert set(Lion([torch.zeros(2, requires_grad=True)]).init_state(torch.zeros(2), {})) == {"m"}


@pytest.mark.parametrize("make,err", [
    (lambda ps: Rprop(ps, capturable=True), "capturable"), (lambda ps: Rprop(ps, differentiable=True), "differentiable"),
    (lambda ps: Lion(ps, fused=True, foreach=True), "fused"), (lambda ps: Lion(ps, differentiable=True), "differentiable"),
    (lambda ps: Lion(ps, lr=0.0, decoupled_weight_decay=True), "lr"), (lambda ps: Rprop(ps, etas=(0.5,)), "etas")])
def test_refused_options_say_why(make, err):
    with pytest.raises((ValueError, NotImplementedError), match=err):
        make([torch.zeros(2, requires_grad=True)])


def _lion_path(make, schedule, eta0, seed=0, d=30):
    "Iterates under the learning rates η₀·s_t, with one fixed stream of random gradients."
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen, dtype=F64).requires_grad_()
    opt, path = make([w]), []
    for s in schedule:
        for group in opt.param_groups: group["lr"] = eta0 * s
        w.grad = torch.randn(d, generator=gen, dtype=F64)
        opt.step(); path.append(w.detach().clone())
    return torch.stack(path)


def test_lion_decay_forms_paper_and_loshchilov_hutter():
    import math
    eta0, lam, schedule = 0.02, 0.3, [0.5 * (1 + math.cos(math.pi * t / 40)) for t in range(40)]
    paper = _lion_path(lambda ps: Lion(ps, lr=eta0, weight_decay=lam), schedule, eta0)
    assert torch.equal(paper, _lion_path(lambda ps: _LionPytorch(ps, lr=eta0, weight_decay=lam), schedule, eta0))
    # by hand, the paper's form: θ ← θ − η_t (sign(c_t) + λθ)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(30, generator=gen, dtype=F64); m, want = torch.zeros_like(theta), []
    for s in schedule:
        g = torch.randn(30, generator=gen, dtype=F64); c = 0.9 * m + 0.1 * g
        theta = theta - eta0 * s * (torch.sign(c) + lam * theta); m = 0.99 * m + 0.01 * g; want.append(theta)
    torch.testing.assert_close(paper, torch.stack(want), rtol=1e-12, atol=1e-14)
    lh = lambda lam_: (lambda ps: Lion(ps, lr=eta0, weight_decay=lam_, decoupled_weight_decay=True))
    lh_ref = lambda lam_: (lambda ps: _LionPytorch(ps, lr=eta0, weight_decay=lam_, decoupled_weight_decay=True))
    assert torch.equal(_lion_path(lh(eta0 * lam), schedule, eta0), _lion_path(lh_ref(eta0 * lam), schedule, eta0))
    torch.testing.assert_close(_lion_path(lh(eta0 * lam), schedule, eta0), paper, rtol=1e-12, atol=1e-14)   # λ' = η₀λ
    assert not torch.allclose(_lion_path(lh(lam), schedule, eta0), paper, rtol=1e-3, atol=1e-6)       # the same λ differs


def test_lion_with_beta1_the_square_of_beta2_is_the_sign_of_nesterov():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(25, generator=gen, dtype=F64) for _ in range(60)]
    def run(betas, eta=0.01):
        w = torch.zeros(25, dtype=F64, requires_grad=True); opt, path = Lion([w], lr=eta, betas=betas), []
        for g in grads: w.grad = g.clone(); opt.step(); path.append(w.detach().clone())
        return torch.stack(path)
    for mu in (0.9, 0.99):
        probe = torch.zeros(25, dtype=F64, requires_grad=True)
        nest = torch.optim.SGD([probe], lr=1.0, momentum=mu, nesterov=True)
        theta, path = torch.zeros(25, dtype=F64), []
        for g in grads:
            before = probe.detach().clone(); probe.grad = g.clone(); nest.step()
            theta = theta - 0.01 * torch.sign(before - probe.detach()); path.append(theta)
        assert torch.equal(run((mu * mu, mu)), torch.stack(path))
        if mu == 0.99: assert not torch.allclose(run((0.9, 0.99)), torch.stack(path))


def test_rprop_step_sizes_shrink_by_the_cube_root_of_0_6_on_noise():
    import math
    gen = torch.Generator().manual_seed(0)
    d, steps = 20000, 300
    p, prev, sigma = torch.zeros(d, dtype=F64), torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64)
    for _ in range(steps):
        rprop_update(p, torch.randn(d, generator=gen, dtype=F64), prev, sigma, zeta_minus=0.5, zeta_plus=1.2,
                     sigma_min=0.0, sigma_max=math.inf, maximize=False)
    factor = math.exp(sigma.log().mean().item() / steps)
    assert abs(factor - 0.6 ** (1 / 3)) < 3e-3 and abs(factor - 0.6 ** 0.5) > 0.05


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["Rprop", "Lion"])
def test_a_nonfinite_gradient_makes_only_its_coordinate_nan_and_the_rest_follows_the_reference(which, bad, foreach):
    "The core's policy through nan_sign: torch's sign would hide NaN (sign = 0) and ±inf (sign = ±1); the other coordinates are the reference's."
    cls, ref, kw = (Rprop, torch.optim.Rprop, RPROP_KW) if which == "Rprop" else (Lion, LionReference, LION_KW)
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(5, generator=gen, dtype=F64), torch.randn(2, 3, generator=gen, dtype=F64)]
    grads = [[torch.randn(x.shape, generator=gen, dtype=F64) for x in start] for _ in range(3)]
    grads[1][0][2] = bad
    paths = []
    for c in (cls, ref):
        ps = [x.clone().requires_grad_() for x in start]
        opt = c(ps, foreach=foreach, **kw)
        for gs in grads:
            for p, g in zip(ps, gs): p.grad = g.clone()
            opt.step()
        paths.append([p.detach() for p in ps])
    (a0, a1), (b0, b1) = paths
    assert a0[2].isnan(), f"{which}: a {bad} gradient must make its parameter NaN"
    keep = torch.arange(5) != 2
    assert torch.equal(a0[keep], b0[keep]) and torch.equal(a1, b1)
    if bad != bad: assert not b0[2].isnan(), "the reference hides it (else this test shows nothing)"
