"""What is special to chapter 4 (optbook.adam): the registry (tests/test_registry.py) runs the checks every optimizer shares.

- the textbook slips (bias correction off by one step, ε inside the square root, AdamW as L2, AMSGrad over v̂) are
  each rejected by the comparison with torch.optim;
- AMSGrad's max state, and switching amsgrad off mid-run, as torch does;
- NAdam's ω-product (`mu_product`) stays float32 through a bf16 save/load, and its state_dict swaps with torch's;
- AdamW stays decoupled after loading an Adam state_dict; the options optbook refuses.
"""
import copy
import io

import inspect
import pytest
import torch

from optbook.adam import Adam, AdamW, Adamax, NAdam, adam_update
from test_registry import Entry, compare_with_reference, make_params, run

pytestmark = pytest.mark.filterwarnings("error")
F64 = torch.float64
ENTRY = {cls.__name__: Entry(cls.__name__, cls, ref, [dict(lr=0.1)], torch_state=True)   # this chapter's classes,
         for cls, ref in ((Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW), (NAdam, torch.optim.NAdam))}  # registry-independent
KW = dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6)


def mutant(base, rule):
    "`base` whose update calls `rule(p, g, m, v, v_max, t=..., **h)` instead of Adam's."
    class Mutant(base):
        def update(self, p, g, s, h, *, t=None, first=False):
            h = dict(h); amsgrad = h.pop("amsgrad")
            rule(p, g, s["m"], s["v"], s.get("v^{\\max}") if amsgrad else None, t=t, **h)
    Mutant.__name__ = base.__name__
    return Mutant


def off_by_one(p, g, m, v, v_max=None, *, t, **h):
    "Bias corrections 1 − β^{t+1}: the step index one too large."
    adam_update(p, g, m, v, v_max, t=t + 1, **h)


def eps_inside(p, g, m, v, v_max=None, *, t, eta, beta1, beta2, eps, lam, decoupled, maximize):
    "θ ← θ − η m̂/√(v̂ + ε)."
    if maximize: g = -g
    if lam is not None:
        if decoupled: p.mul_(1 - eta * lam)
        else: g = g.add(p, alpha=lam)
    m.lerp_(g, 1 - beta1); v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if v_max is not None: v_max.clamp_min_(v); v = v_max
    p.addcdiv_(m, (v / (1 - beta2 ** t)).add(eps).sqrt(), value=-eta / (1 - beta1 ** t))


def amsgrad_over_v_hat(p, g, m, v, v_max=None, *, t, eta, beta1, beta2, eps, lam, decoupled, maximize):
    "AMSGrad keeping the maximum of the bias-corrected v̂ instead of torch's maximum of v."
    if maximize: g = -g
    if lam is not None:
        if decoupled: p.mul_(1 - eta * lam)
        else: g = g.add(p, alpha=lam)
    m.lerp_(g, 1 - beta1); v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    v_max.clamp_min_(v / (1 - beta2 ** t))
    p.addcdiv_(m, v_max.sqrt().add(eps), value=-eta / (1 - beta1 ** t))


def test_the_rule_itself_passes():
    compare_with_reference(ENTRY["Adam"], dict(KW, amsgrad=True, weight_decay=0.1), foreach=False)
    compare_with_reference(ENTRY["AdamW"], dict(KW, weight_decay=0.1), foreach=True)


@pytest.mark.parametrize("rule,kw", [(off_by_one, KW), (eps_inside, dict(KW, eps=1e-2)),
                                     (amsgrad_over_v_hat, dict(KW, amsgrad=True))],
                         ids=["bias-correction-off-by-one", "eps-inside-sqrt", "amsgrad-over-v-hat"])
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_textbook_slips_are_rejected(rule, kw, foreach):
    with pytest.raises(AssertionError):
        compare_with_reference(Entry(**{**ENTRY["Adam"].__dict__, "cls": mutant(Adam, rule)}), kw, foreach)


def test_adamw_as_l2_is_rejected():
    class L2AdamW(AdamW):
        def hyper(self, group): return {**super().hyper(group), "decoupled": False}
    with pytest.raises(AssertionError):
        compare_with_reference(Entry(**{**ENTRY["AdamW"].__dict__, "cls": L2AdamW}), dict(KW, weight_decay=0.1), False)


def test_amsgrad_keeps_the_running_max_of_v():
    x = torch.zeros(5, dtype=F64, requires_grad=True)
    opt = Adam([x], lr=0.1, betas=(0.5, 0.9), amsgrad=True)
    gen, running = torch.Generator().manual_seed(0), torch.zeros(5, dtype=F64)
    for k in range(30):
        x.grad = torch.randn(5, generator=gen, dtype=F64) * (10.0 if k == 3 else 1.0)   # one large gradient
        opt.step()
        running = torch.maximum(running, opt.state[x]["exp_avg_sq"])
        assert torch.equal(opt.state[x]["max_exp_avg_sq"], running)
    assert (opt.state[x]["max_exp_avg_sq"] > opt.state[x]["exp_avg_sq"]).all()   # the large gradient is still remembered


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_switching_amsgrad_off_mid_run_follows_torch(foreach):
    paths = []
    for cls in (Adam, torch.optim.Adam):
        ps = make_params(ENTRY["Adam"])
        opt = cls(ps, amsgrad=True, foreach=foreach, **KW)
        first, _, _ = run(lambda _: opt, ENTRY["Adam"], 5, params=ps)
        opt.param_groups[0]["amsgrad"] = False          # the max state stays, and is no longer used
        second, _, _ = run(lambda _: opt, ENTRY["Adam"], 5, params=ps, start=5)
        paths.append(first + second)
    for a, b in zip(*paths):
        for x, y in zip(a, b): torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)


def nadam_bf16(exact_keys):
    "NAdam on bf16 parameters, 5 steps, then its state_dict through torch.save/torch.load(weights_only=True)."
    cls = NAdam if exact_keys else type("NAdamNoExact", (NAdam,), {"exact_keys": ()})
    w = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    opt = cls([w], lr=1e-3)
    for _ in range(5): w.grad = torch.ones(4, dtype=torch.bfloat16); opt.step()
    buf = io.BytesIO(); torch.save(opt.state_dict(), buf); buf.seek(0)
    opt2 = cls([w], lr=1e-3)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    return opt.state[w]["mu_product"], opt2.state[w]["mu_product"]


def test_nadam_mu_product_stays_float32_through_bf16_save_and_load():
    before, after = nadam_bf16(exact_keys=True)
    assert before.dtype == after.dtype == torch.float32 and torch.equal(before, after)
    _, cast = nadam_bf16(exact_keys=False)              # what exact_keys prevents: torch's loader casts it to bf16
    assert cast.dtype == torch.bfloat16 and cast.item() != before.item()


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_nadam_state_dicts_swap_with_torch(foreach):
    "torch → optbook is exact; optbook → torch drifts only by torch multiplying the loaded product in float64."
    entry, kw = ENTRY["NAdam"], dict(KW, weight_decay=0.1, momentum_decay=0.1)
    _, ref, ref_ps = run(lambda ps: torch.optim.NAdam(ps, foreach=foreach, **kw), entry, 10)
    ours_ps = [p.clone() for p in ref_ps]
    ours = NAdam(ours_ps, foreach=foreach, **kw)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    a, _, _ = run(lambda _: ours, entry, 10, params=ours_ps, start=10)
    b, _, _ = run(lambda _: ref, entry, 10, params=ref_ps, start=10)
    for x, y in zip(a, b):
        for s, r in zip(x, y): torch.testing.assert_close(s, r, rtol=1e-12, atol=1e-15)
    back_ps = [p.clone() for p in ours_ps]
    back = torch.optim.NAdam(back_ps, foreach=foreach, **kw)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    a, _, _ = run(lambda _: ours, entry, 10, params=ours_ps, start=20)
    b, _, _ = run(lambda _: back, entry, 10, params=back_ps, start=20)
    for x, y in zip(a, b):
        for s, r in zip(x, y): torch.testing.assert_close(s, r, rtol=1e-10, atol=1e-13)
    so, sb = ours.state_dict()["state"], back.state_dict()["state"]
    assert so.keys() == sb.keys()
    for i in so:
        assert so[i]["mu_product"].dtype == torch.float32           # ours: exact, as a fresh torch.optim.NAdam keeps it
        torch.testing.assert_close(so[i]["mu_product"], sb[i]["mu_product"], rtol=1e-6, atol=0, check_dtype=False)
        for k in ("exp_avg", "exp_avg_sq", "step"): torch.testing.assert_close(so[i][k], sb[i][k], rtol=1e-12, atol=1e-15)


@pytest.mark.skipif("decoupled_weight_decay" not in inspect.signature(torch.optim.Adam).parameters,
                    reason=f"torch {torch.__version__}'s Adam has no decoupled_weight_decay (make test-floor)")
def test_adamw_stays_decoupled_after_loading_an_adam_state_dict():
    src = Adam(make_params(ENTRY["Adam"])[:1], lr=0.1)
    for cls in (AdamW, torch.optim.AdamW):
        opt = cls(make_params(ENTRY["Adam"])[:1], lr=0.1)
        opt.load_state_dict(copy.deepcopy(src.state_dict()))
        assert opt.param_groups[0]["decoupled_weight_decay"] is True, cls


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax, NAdam], ids=lambda c: c.__name__)
def test_refused_options_say_why(cls):
    with pytest.raises(ValueError, match="capturable"): cls([torch.zeros(2)], capturable=True)
    with pytest.raises(ValueError, match="differentiable"): cls([torch.zeros(2)], differentiable=True)
    # fused=True is accepted now (the performance appendix's compiled path; tests/test_fused.py); with foreach it is refused
    if cls in (Adam, AdamW):
        with pytest.raises(ValueError, match="fused"): cls([torch.zeros(2)], fused=True, foreach=True)


def adamax_bound(b1, b2, steps):
    "B_t/η = Σ_{j<t}(β₁/β₂)^j / Σ_{j<t}β₁^j: the largest step Adamax can take at step t (chapter 4)."
    j = torch.arange(steps, dtype=F64)
    return ((b1 / b2) ** j).cumsum(0) / (b1 ** j).cumsum(0)


def adamax_moves(cls, grads, betas, eps):
    theta = torch.zeros(grads.shape[1], dtype=F64, requires_grad=True)
    opt, moves = cls([theta], lr=1.0, betas=betas, eps=eps), []
    for g in grads:
        before = theta.detach().clone()
        theta.grad = g.clone()
        opt.step()
        moves.append((theta.detach() - before).abs())
    return torch.stack(moves)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.4, 0.5), (0.5, 0.5)], ids=str)
@pytest.mark.parametrize("cls", [Adamax, torch.optim.Adamax], ids=lambda c: c.__module__.split(".")[0])
def test_adamax_step_bound_is_attained_and_never_exceeded(cls, betas):
    b1, b2 = betas
    steps = 300
    bound = adamax_bound(b1, b2, steps)
    worst = torch.tensor([b2 ** k for k in range(1, steps + 1)], dtype=F64)[:, None]   # same sign, shrinking by β₂
    torch.testing.assert_close(adamax_moves(cls, worst, betas, 0.0)[:, 0], bound, rtol=1e-12, atol=0)
    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(steps, 200, generator=gen, dtype=F64) * torch.exp(3 * torch.randn(steps, 200, generator=gen, dtype=F64))
    assert (adamax_moves(cls, noisy, betas, 1e-8) <= bound[:, None] * (1 + 1e-12)).all()
    if b1 < b2:
        assert bound[-1] > 1 and abs(bound[-1] - (1 - b1) * b2 / (b2 - b1)) < 1e-9    # above η, at the limit
    else:
        assert bound[-1] > 0.99 * steps * (1 - b1)                                   # β₁ = β₂: grows like t(1 − β₁)


def test_docstrings_render_symbols_and_state_the_true_adamax_bound():
    assert "$omega_prod$" not in NAdam.__doc__ and r"| `mu_product` | $\omega_{1:t}$ |" in NAdam.__doc__
    assert "bounded by η per" not in Adamax.__doc__
    assert r"\eta(1-\beta_1)\beta_2/(\beta_2-\beta_1)" in Adamax.__doc__
