"""Chapter 12 (前沿): Schedule-Free AdamW, AdEMAMix, SOAP and Prodigy against their references.

Test-only references (settings.ini's dev_requirements; the book does not install them): `schedulefree==1.4.1`,
`pytorch-optimizer==4.1.0` and `prodigyopt==1.1.2`. The independent references below (the papers' algorithms written
without optbook) are also the registry's references for these optimizers (tests/test_registry.py)."""
import copy
import inspect
import io
import math

import pytest
import torch

import optbook
from optbook.frontier import AdamWScheduleFree, AdEMAMix, SOAP, soap_refresh

F64 = torch.float64
RTOL, ATOL = 1e-12, 1e-15
pytestmark = pytest.mark.filterwarnings("error")
try: import schedulefree                 # test-only references: the registry imports this module without them too
except ImportError: schedulefree = None
try: import pytorch_optimizer
except ImportError: pytorch_optimizer = None
needs_schedulefree = pytest.mark.skipif(schedulefree is None, reason="schedulefree==1.4.1 (a test-only reference) is not installed")
needs_pytorch_optimizer = pytest.mark.skipif(pytorch_optimizer is None,
                                             reason="pytorch-optimizer==4.1.0 (a test-only reference) is not installed")


# ------------------------------------------------------------------------------------------------------------------
# References

def _train_at_once(cls):
    "schedulefree 1.4.1's AdamWScheduleFree, put in train mode at construction (the registry's checks step at once)."
    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        self.train()
        for p in [p for p, s in self.state.items() if not s]: del self.state[p]   # train() leaves empty entries behind
    return type("ScheduleFreeReference", (cls,), {"__init__": __init__, "__doc__": _train_at_once.__doc__})

ScheduleFreeReference = None if schedulefree is None else _train_at_once(schedulefree.AdamWScheduleFree)


def _real(x): return torch.view_as_real(x) if x.is_complex() else x


class AdEMAMixReference(torch.optim.Optimizer):
    "Pagliardini, Ablin & Grangier (2024), Algorithm 1, written without optbook; t per parameter; complex as real pairs."
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha_beta3=None, eps=1e-8,
                 weight_decay=0.0, *, maximize=False, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, t_alpha_beta3=t_alpha_beta3, eps=eps,
                                      weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            alpha, T, lr = group["alpha"], group["t_alpha_beta3"], group["lr"]
            for p in group["params"]:
                if p.grad is None: continue
                st = self.state[p]
                if not st: st.update(t=0, m1=torch.zeros_like(_real(p)), m2=torch.zeros_like(_real(p)),
                                     nu=torch.zeros_like(_real(p)))
                st["t"] += 1
                t = st["t"]
                g = _real(p.grad) * (-1 if group["maximize"] else 1)
                if T is None: a_t, b3_t = alpha, b3
                else:
                    a_t = min(t * alpha / T, alpha)
                    b3_t = min(math.exp(math.log(b1) * math.log(b3) / ((1 - t / T) * math.log(b3) + t / T * math.log(b1))), b3)
                st["m1"] = b1 * st["m1"] + (1 - b1) * g
                st["m2"] = b3_t * st["m2"] + (1 - b3_t) * g
                st["nu"] = b2 * st["nu"] + (1 - b2) * g * g
                theta = _real(p)
                upd = (st["m1"] / (1 - b1 ** t) + a_t * st["m2"]) / ((st["nu"] / (1 - b2 ** t)).sqrt() + group["eps"])
                theta.copy_(theta - lr * (upd + group["weight_decay"] * theta))
        return loss


def _eigenbasis(S):
    "Eigenvectors by decreasing eigenvalue (the same tiny 1e-30·I as the SOAP authors' code)."
    return torch.linalg.eigh(S + 1e-30 * torch.eye(S.shape[0], dtype=S.dtype))[1].flip(1)


def _power_qr(S, B):
    "One step of orthogonal (power) iteration from B, columns ordered by Rayleigh quotient; QR in float32 as the authors."
    SB = S @ B
    # the Rayleigh quotients bᵢᵀ S bᵢ summed in the same order as the code under test: in the null space of a rank-deficient
    # S they are round-off, and their order (which the QR and the permutation of v follow) is decided by it
    order = torch.argsort((B * SB).sum(0), descending=True)
    return torch.linalg.qr(SB[:, order].float())[0].to(S.dtype), order


class DenseSOAPReference(torch.optim.Optimizer):
    """SOAP (Vyas et al. 2024) in its dense form, written without optbook: a p×q matrix is a pq-vector, rotated by the
    Kronecker product B_P ⊗ B_Q, and Adam runs on the rotated vector (v kept as a pq-vector and permuted at refreshes)."""
    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=None, weight_decay=1e-2,
                 precondition_frequency=10, eps=1e-8, *, maximize=False, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, weight_decay=weight_decay,
                                      precondition_frequency=precondition_frequency, eps=eps, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            bs = b2 if group["shampoo_beta"] is None else group["shampoo_beta"]
            lr, eps, wd, f = group["lr"], group["eps"], group["weight_decay"], group["precondition_frequency"]
            for p in group["params"]:
                if p.grad is None: continue
                g = p.grad * (-1 if group["maximize"] else 1)
                mat = p.dim() >= 2
                G = g.reshape(p.shape[0], -1) if mat else g.reshape(-1)
                st = self.state[p]
                if not st:
                    st.update(t=0, m=torch.zeros(G.numel(), dtype=p.dtype), v=torch.zeros(G.numel(), dtype=p.dtype))
                    if mat: st.update(P=torch.zeros(G.shape[0], G.shape[0], dtype=p.dtype),
                                      Q=torch.zeros(G.shape[1], G.shape[1], dtype=p.dtype))
                st["t"] += 1
                t = st["t"]
                gv = G.reshape(-1)
                if t > 1:
                    s = t - 1
                    K = torch.kron(st["BP"], st["BQ"]) if mat else torch.eye(gv.numel(), dtype=p.dtype)  # vec(Bᵀ G C) = Kᵀ vec(G)
                    st["m"] = b1 * st["m"] + (1 - b1) * gv
                    st["v"] = b2 * st["v"] + (1 - b2) * (K.T @ gv) ** 2
                    d = K @ ((K.T @ st["m"]) / (st["v"].sqrt() + eps))
                    p.copy_((p.reshape(-1) - lr * math.sqrt(1 - b2 ** s) / (1 - b1 ** s) * d).reshape(p.shape))
                    p.mul_(1 - lr * wd)
                if mat:
                    # lerp_, for the same bits as the code under test: the first statistics are rank-deficient (rank 1
                    # at step 1), and eigh picks its null space's basis from round-off, so 1 ulp changes every later iterate
                    st["P"].lerp_(G @ G.T, 1 - bs)
                    st["Q"].lerp_(G.T @ G, 1 - bs)
                    if t == 1:
                        st["BP"], st["BQ"] = _eigenbasis(st["P"]), _eigenbasis(st["Q"])
                    elif (t - 1) % f == 0:
                        V = st["v"].reshape(G.shape)
                        st["BP"], order = _power_qr(st["P"], st["BP"]); V = V[order]
                        st["BQ"], order = _power_qr(st["Q"], st["BQ"]); V = V[:, order]
                        st["v"] = V.reshape(-1)
        return loss


# ------------------------------------------------------------------------------------------------------------------
# Helpers: two groups, a parameter that gets a gradient only on even steps

SHAPES = [(4, 3), (5,), (3, 6), (), (2, 5)]


def params(seed=0, dtype=F64, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=F64).to(dtype) for s in shapes]


def groups(ps, lr):
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": lr * 0.3}]


def run(opt, ps, steps, start=0, sometimes=None, modes=False, seed=1):
    "Step `opt`; the iterates after each step (and, with `modes`, in eval mode every 3 steps)."
    out = []
    for k in range(start, start + steps):
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        for i, p in enumerate(ps):
            g = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
            p.grad = None if (i == sometimes and k % 2) else g
        opt.step()
        out.append([p.detach().clone() for p in ps])
        if modes and k % 3 == 2:
            opt.eval(); out.append([p.detach().clone() for p in ps]); opt.train()
    return out


def assert_close_paths(a, b, rtol=RTOL, atol=ATOL):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        for i, (u, w) in enumerate(zip(x, y)):
            torch.testing.assert_close(u, w, rtol=rtol, atol=atol, msg=lambda m: f"iterate {k}, parameter {i}: {m}")


# ------------------------------------------------------------------------------------------------------------------
# Schedule-Free AdamW

SF_SETTINGS = [dict(), dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, warmup_steps=7, r=1.0, weight_lr_power=1.5),
               dict(lr=0.05, warmup_steps=3, weight_lr_power=0.0), dict(lr=0.02, r=0.5, eps=1e-3)]


@needs_schedulefree
def test_schedulefree_signature_and_defaults_match_the_package():
    ours, ref = inspect.signature(AdamWScheduleFree), inspect.signature(schedulefree.AdamWScheduleFree)
    n = len(ref.parameters)
    assert list(ours.parameters)[:n] == list(ref.parameters)
    own = list(ours.parameters.values())[n:]       # optbook's own switch, last, keyword-only, off by default
    assert [(p.name, p.kind, p.default) for p in own] == [("fused", inspect.Parameter.KEYWORD_ONLY, None)]
    for name, p in ref.parameters.items():
        assert ours.parameters[name].default == p.default, name
    a = AdamWScheduleFree(params()[:1]).param_groups[0]
    b = schedulefree.AdamWScheduleFree(params()[:1]).param_groups[0]
    assert {k: v for k, v in a.items() if k != "params"} == {k: v for k, v in b.items() if k != "params"}


@needs_schedulefree
@pytest.mark.parametrize("kw", SF_SETTINGS)
@pytest.mark.parametrize("foreach", [False, True])
def test_schedulefree_matches_the_package_in_both_modes(kw, foreach):
    pa, pb = params(), params()
    a = AdamWScheduleFree(groups(pa, kw.get("lr", 0.0025)), foreach=foreach, **kw); a.train()
    b = schedulefree.AdamWScheduleFree(groups(pb, kw.get("lr", 0.0025)), foreach=foreach, **kw); b.train()
    assert_close_paths(run(a, pa, 25, sometimes=4, modes=True), run(b, pb, 25, sometimes=4, modes=True))
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode"): assert ga[key] == pytest.approx(gb[key], rel=1e-14)


@needs_schedulefree
def test_schedulefree_catches_a_tiny_lr_error():
    class Off(AdamWScheduleFree):
        def hyper(self, group):
            h = super().hyper(group); h["eta"] *= 1 + 1e-9; return h
    pa, pb = params(), params()
    a, b = Off(pa, lr=0.01), schedulefree.AdamWScheduleFree(pb, lr=0.01); a.train(); b.train()
    with pytest.raises(AssertionError): assert_close_paths(run(a, pa, 10), run(b, pb, 10))


@needs_schedulefree
@pytest.mark.parametrize("foreach", [False, True])
def test_schedulefree_state_dicts_swap_with_the_package_and_resume(foreach):
    "Saved in eval mode (as one must), loaded into the other implementation, train() again: the runs continue together."
    kw = SF_SETTINGS[1]
    pa = params()
    a = AdamWScheduleFree(groups(pa, 0.01), foreach=foreach, **kw); a.train()
    run(a, pa, 8)
    a.eval()
    buf = io.BytesIO(); torch.save(a.state_dict(), buf); buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    pb = [p.clone() for p in pa]           # the weights as checkpointed: x
    b = schedulefree.AdamWScheduleFree(groups(pb, 0.01), foreach=foreach, **kw); b.load_state_dict(copy.deepcopy(saved))
    pc = [p.clone() for p in pa]
    c = AdamWScheduleFree(groups(pc, 0.01), foreach=foreach, **kw); c.load_state_dict(saved)
    for opt in (a, b, c): opt.train()
    ra, rb, rc = run(a, pa, 8, start=8, modes=True), run(b, pb, 8, start=8, modes=True), run(c, pc, 8, start=8, modes=True)
    assert_close_paths(ra, rb)
    for x, y in zip(ra, rc):
        for u, w in zip(x, y): assert torch.equal(u, w)       # our own resume: bit for bit
    # and the package's state_dict into ours
    d = AdamWScheduleFree(groups([p.clone() for p in pb], 0.01), foreach=foreach, **kw)
    d.load_state_dict(copy.deepcopy(b.state_dict()))
    assert d.param_groups[0]["k"] == b.param_groups[0]["k"] == 16


def test_schedulefree_modes():
    p = torch.randn(5, dtype=F64)
    opt = AdamWScheduleFree([p], lr=0.1)
    for k in range(3):                             # a fresh optimizer enters train mode by itself (train() would move nothing)
        p.grad = torch.randn(5, dtype=F64); opt.step()
    assert opt.param_groups[0]["train_mode"]
    y = p.clone()
    opt.eval(); opt.eval()                         # idempotent
    x = p.clone()
    assert not torch.equal(x, y)
    with pytest.raises(RuntimeError, match="train"):
        opt.step()                                 # after training, stepping in eval mode is an error, as in the package
    opt.train(); opt.train()
    torch.testing.assert_close(p, y, rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="beta1"): AdamWScheduleFree([p], betas=(0.0, 0.999))
    with pytest.raises(ValueError, match="warmup_steps"): AdamWScheduleFree([p], warmup_steps=-1)


# ------------------------------------------------------------------------------------------------------------------
# AdEMAMix

AD_SETTINGS = [dict(lr=0.01), dict(lr=0.01, t_alpha_beta3=10), dict(lr=0.01, betas=(0.8, 0.99, 0.999), alpha=3.0,
               t_alpha_beta3=7, weight_decay=0.1, eps=1e-6)]


@needs_pytorch_optimizer
@pytest.mark.parametrize("kw", AD_SETTINGS)
@pytest.mark.parametrize("foreach", [False, True])
def test_ademamix_matches_the_paper_and_pytorch_optimizer(kw, foreach):
    pa, pb, pc = params(), params(), params()
    a = AdEMAMix(groups(pa, kw["lr"]), foreach=foreach, **kw)
    b = AdEMAMixReference(groups(pb, kw["lr"]), **kw)
    ra, rb = run(a, pa, 30, sometimes=4), run(b, pb, 30, sometimes=4)
    assert_close_paths(ra, rb)
    # pytorch-optimizer counts t per group: compare where every parameter has a gradient at every step,
    # with the paper's decoupled decay (its default, weight_decouple=False, is L2)
    pa, pc = params(), params()
    a = AdEMAMix(groups(pa, kw["lr"]), foreach=foreach, **kw)
    c = pytorch_optimizer.AdEMAMix(groups(pc, kw["lr"]), foreach=foreach, weight_decouple=True, **kw)
    assert_close_paths(run(a, pa, 30), run(c, pc, 30))


@needs_pytorch_optimizer
def test_ademamix_differs_from_pytorch_optimizer_defaults_only_by_l2():
    pa, pc = params(), params()
    a = AdEMAMix(pa, lr=0.01, weight_decay=0.1)
    c = pytorch_optimizer.AdEMAMix(pc, lr=0.01, weight_decay=0.1)          # L2 by default
    with pytest.raises(AssertionError): assert_close_paths(run(a, pa, 5), run(c, pc, 5))
    assert inspect.signature(pytorch_optimizer.AdEMAMix).parameters["weight_decouple"].default is False


def test_ademamix_schedules():
    from optbook.frontier import ademamix_schedules
    assert ademamix_schedules(3, 5.0, 0.9, 0.9999, None) == (5.0, 0.9999)
    a0, b0 = ademamix_schedules(0, 5.0, 0.9, 0.9999, 100)
    assert a0 == 0 and b0 == pytest.approx(0.9, rel=1e-12)
    assert ademamix_schedules(100, 5.0, 0.9, 0.9999, 100) == (5.0, pytest.approx(0.9999, rel=1e-12))
    assert ademamix_schedules(500, 5.0, 0.9, 0.9999, 100) == (5.0, 0.9999)
    with pytest.raises(ValueError, match="betas"): AdEMAMix(params()[:1], betas=(0.9, 0.999))
    with pytest.raises(ValueError, match="t_alpha_beta3"): AdEMAMix(params()[:1], t_alpha_beta3=0)


# ------------------------------------------------------------------------------------------------------------------
# SOAP

SOAP_SETTINGS = [dict(), dict(lr=0.01, precondition_frequency=1, weight_decay=0.0),
                 dict(lr=0.01, precondition_frequency=3, betas=(0.9, 0.99), shampoo_beta=0.9, eps=1e-6)]


@pytest.mark.parametrize("kw", SOAP_SETTINGS)
def test_soap_matches_the_dense_reference(kw):
    pa, pb = params(), params()
    lr = kw.get("lr", 3e-3)
    a, b = SOAP(groups(pa, lr), **kw), DenseSOAPReference(groups(pb, lr), **kw)
    assert_close_paths(run(a, pa, 25, sometimes=4), run(b, pb, 25, sometimes=4), rtol=1e-10, atol=1e-12)


@needs_pytorch_optimizer
@pytest.mark.parametrize("kw", SOAP_SETTINGS)
def test_soap_matches_pytorch_optimizer(kw):
    "pytorch-optimizer 4.1's SOAP with precondition_1d=False, merge_dims=False (its defaults); every parameter gets a gradient at every step (t per group there)."
    pa, pc = params(), params()
    lr = kw.get("lr", 3e-3)
    a, c = SOAP(groups(pa, lr), **kw), pytorch_optimizer.SOAP(groups(pc, lr), **kw)
    assert_close_paths(run(a, pa, 25), run(c, pc, 25), rtol=1e-10, atol=1e-12)


def test_soap_catches_a_wrong_refresh():
    "A refresh that forgets to permute v's rows fails the comparison (so the refresh is tested, not only the steady state)."
    import optbook.frontier as fr
    pa, pb = params(), params()
    a, b = SOAP(pa, lr=0.01, precondition_frequency=2), DenseSOAPReference(pb, lr=0.01, precondition_frequency=2)
    good = fr.soap_refresh
    try:
        fr.soap_refresh = lambda S, B: (good(S, B)[0], torch.arange(B.shape[1]))
        with pytest.raises(AssertionError): assert_close_paths(run(a, pa, 12), run(b, pb, 12), rtol=1e-10, atol=1e-12)
    finally:
        fr.soap_refresh = good


def test_soap_refresh_converges_to_the_eigenbasis():
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))
    S = U @ torch.diag(torch.tensor([16., 8., 4., 2., 1.], dtype=F64)) @ U.T
    B = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))[0]
    for _ in range(40): B, _ = soap_refresh(S, B)
    torch.testing.assert_close((B.T @ U).abs(), torch.eye(5, dtype=F64), rtol=0, atol=1e-5)


def test_soap_first_step_only_builds_the_bases():
    p = torch.randn(4, 3, dtype=F64); p0 = p.clone()
    opt = SOAP([p]); p.grad = torch.randn(4, 3, dtype=F64); opt.step()
    assert torch.equal(p, p0)
    B = opt.state[p]["Q_left"]
    torch.testing.assert_close(B.T @ B, torch.eye(4, dtype=F64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="precondition_frequency"): SOAP([p], precondition_frequency=0)
    with pytest.raises(ValueError, match="shampoo_beta"): SOAP([p], shampoo_beta=1.0)


def test_star_import_exports_the_new_optimizers():
    ns = {}
    exec("from optbook import *", ns)
    for name in ("AdamWScheduleFree", "AdEMAMix", "SOAP"): assert ns[name] is getattr(optbook.frontier, name)


# ------------------------------------------------------------------------------------------------------------------
# Cautious updates (Liang et al. 2024): the core's `cautious=True` against the authors' C-AdamW and C-Lion, written
# here from the paper's Algorithm (mask φ = 1(u⊙g > 0), step scaled by d/(‖φ‖₀ + 1), decoupled decay unmasked)

def _c_adamw_reference(ps, grads, lr, betas, eps, weight_decay):
    b1, b2 = betas
    m = [torch.zeros_like(p) for p in ps]; v = [torch.zeros_like(p) for p in ps]
    for t, gs in enumerate(grads, 1):
        for p, g, mi, vi in zip(ps, gs, m, v):
            p.mul_(1 - lr * weight_decay)
            mi.mul_(b1).add_(g, alpha=1 - b1); vi.mul_(b2).addcmul_(g, g, value=1 - b2)
            u = (mi / (1 - b1 ** t)) / ((vi / (1 - b2 ** t)).sqrt() + eps)
            phi = (u * g > 0).to(p.dtype)
            p.add_(u * phi * (phi.numel() / (phi.sum() + 1)), alpha=-lr)


def _c_lion_reference(ps, grads, lr, betas, weight_decay):
    b1, b2 = betas
    m = [torch.zeros_like(p) for p in ps]
    for gs in grads:
        for p, g, mi in zip(ps, gs, m):
            p.mul_(1 - lr * weight_decay)
            u = (b1 * mi + (1 - b1) * g).sign()
            phi = (u * g > 0).to(p.dtype)
            p.add_(u * phi * (phi.numel() / (phi.sum() + 1)), alpha=-lr)
            mi.mul_(b2).add_(g, alpha=1 - b2)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["AdamW", "Lion"])
def test_cautious_adamw_and_lion_follow_the_paper(name, foreach):
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (7,), (3, 2, 2)]
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(8)]
    kw = dict(lr=0.05, betas=(0.9, 0.99), weight_decay=0.1)
    ends = {}
    for cautious in (True, False):
        ps = [p.clone() for p in start]
        opt = getattr(optbook, name)(ps, foreach=foreach, cautious=cautious, **kw)
        for gs in grads:
            for p, g in zip(ps, gs): p.grad = g.clone()
            opt.step()
        ends[cautious] = ps
    qs = [p.clone() for p in start]
    if name == "AdamW": _c_adamw_reference(qs, grads, eps=1e-8, **kw)
    else: _c_lion_reference(qs, grads, **kw)
    for p, q in zip(ends[True], qs): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # the mask acted (random gradients disagree with the momentum often): the plain path ends elsewhere
    assert max((a - b).abs().max().item() for a, b in zip(ends[True], ends[False])) > 1e-2


# ------------------------------------------------------------------------------------------------------------------
# Prodigy (Mishchenko & Defazio 2023) against the authors' package, prodigyopt==1.1.2 (a test-only reference), and
# an independent reference written from the paper (the registry's: it allows groups with different learning rates)

from optbook.frontier import Prodigy
try: import prodigyopt
except ImportError: prodigyopt = None
needs_prodigyopt = pytest.mark.skipif(prodigyopt is None, reason="prodigyopt==1.1.2 (a test-only reference) is not installed")


class ProdigyReference(torch.optim.Optimizer):
    """Prodigy's Adam version from the paper (Algorithm 4), written without optbook, with prodigyopt 1.1.2's conventions:
    no (1 − β₃) factors in r and s, both scaled by d/d₀; ε scaled by the updated d; the step size d_t·η·(bias correction)
    with the d from before the update; a step with ‖s‖₁ = 0 does nothing. Each group uses its own lr (the package
    refuses different ones); `foreach` is ignored. The estimate lives in the first group, so it survives a state_dict.
    The tensor operations take prodigyopt's forms (in-place, with alpha/value), so that low precision rounds alike."""
    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0, decouple=True,
                 use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=float("inf"),
                 fsdp_in_use=False, slice_p=1, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, decouple=decouple,
                                      bias=use_bias_correction, safeguard=safeguard_warmup, d_coef=d_coef,
                                      growth=growth_rate, slice_p=slice_p, d0=d0, d=d0, d_max=d0, r=0.0, k=0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        G = self.param_groups[0]
        b1, b2 = G["betas"]
        b3 = math.sqrt(b2) if G["beta3"] is None else G["beta3"]
        bc = math.sqrt(1 - b2 ** (G["k"] + 1)) / (1 - b1 ** (G["k"] + 1)) if G["bias"] else 1.0
        d, d0, r, norm, todo = G["d"], G["d0"], G["r"] * b3, 0.0, []
        for group in self.param_groups:
            size, sp = d * group["lr"] * bc, group["slice_p"]
            for p in group["params"]:
                if p.grad is None: continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if not group["decouple"] and group["weight_decay"] else p.grad
                st = self.state[p]
                if not st:
                    st.update(x0=p.flatten()[::sp].clone(), s=torch.zeros_like(p.flatten()[::sp]),
                              m=torch.zeros_like(p), v=torch.zeros_like(p))
                if group["lr"] > 0:
                    gs = g.flatten()[::sp]
                    r += (d / d0) * size * torch.dot(gs, st["x0"] - p.flatten()[::sp]).item()
                    st["m"].mul_(b1).add_(g, alpha=d * (1 - b1))
                    st["v"].mul_(b2).addcmul_(g, g, value=d * d * (1 - b2))
                    st["s"].mul_(b3).add_(gs, alpha=(d / d0) * (d if group["safeguard"] else size))
                    norm += st["s"].abs().sum().item()
                todo.append((p, g, st, group, size))
        if norm == 0: return loss
        d_hat = G["d_coef"] * r / norm
        if d == d0: d = max(d, d_hat)
        G["d_max"] = max(G["d_max"], d_hat)
        G["d"], G["r"], G["k"] = min(G["d_max"], d * G["growth"]), r, G["k"] + 1
        d = G["d"]
        for p, g, st, group, size in todo:
            if group["lr"] == 0: continue
            denom = st["v"].sqrt().add_(d * group["eps"])
            if group["decouple"] and group["weight_decay"] != 0: p.add_(p, alpha=-group["weight_decay"] * size)
            if b1 > 0: p.addcdiv_(st["m"], denom, value=-size)
            else: p.addcdiv_(g, denom, value=-size * d)
        return loss


def run_pull(opt, ps, steps, start=0, sometimes=None):
    "Like `run`, with gradients that pull each parameter towards a target (plus noise), so that d really grows."
    out = []
    for k in range(start, start + steps):
        gen = torch.Generator().manual_seed(1000 + k)
        for i, p in enumerate(ps):
            target = torch.full(p.shape, 1.0 + i, dtype=F64).to(p.dtype)
            g = (p.detach() - target) * (i + 1) + 0.3 * torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
            p.grad = None if (i == sometimes and k % 2) else g
        opt.step()
        out.append([p.detach().clone() for p in ps])
    return out


PRODIGY_SETTINGS = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decouple=False), dict(use_bias_correction=True),
                    dict(safeguard_warmup=True, use_bias_correction=True), dict(d_coef=0.5), dict(growth_rate=1.02),
                    dict(betas=(0.0, 0.99), beta3=0.9), dict(lr=0.5, d0=1e-3, eps=1e-6), dict(slice_p=3, weight_decay=0.05)]


def _quiet_prodigyopt(*args, **kwargs):
    "prodigyopt.Prodigy, without the line it prints when the decay is decoupled."
    import contextlib
    with contextlib.redirect_stdout(io.StringIO()): return prodigyopt.Prodigy(*args, **kwargs)


@needs_prodigyopt
def test_prodigy_signature_and_defaults_match_the_package():
    ours, ref = inspect.signature(Prodigy), inspect.signature(prodigyopt.Prodigy)
    assert list(ours.parameters)[:len(ref.parameters)] == list(ref.parameters)
    assert list(ours.parameters)[len(ref.parameters):] == ["foreach"]          # optbook's one addition, ignored
    for name, p in ref.parameters.items():
        assert ours.parameters[name].default == p.default, name
    a = Prodigy(params()[:1]).param_groups[0]
    b = prodigyopt.Prodigy(params()[:1]).param_groups[0]
    assert {k: v for k, v in a.items() if k not in ("params", "foreach")} == \
        {k: (tuple(v) if k == "betas" else v) for k, v in b.items() if k != "params"}


@needs_prodigyopt
@pytest.mark.parametrize("kw", PRODIGY_SETTINGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_prodigy_matches_the_package(kw):
    "Two groups with the same lr (the package refuses others), a parameter with a gradient every other step: 30 steps."
    pa, pb = params(), params()
    a = Prodigy([{"params": pa[:2]}, {"params": pa[2:]}], **kw)
    b = _quiet_prodigyopt([{"params": pb[:2]}, {"params": pb[2:]}], **kw)
    assert_close_paths(run_pull(a, pa, 30, sometimes=4), run_pull(b, pb, 30, sometimes=4))
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key in ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k"): assert ga[key] == pytest.approx(gb[key], rel=1e-12), key
    assert a.param_groups[0]["d"] > kw.get("d0", 1e-6), "the estimate grew"


@needs_prodigyopt
def test_prodigy_catches_a_tiny_lr_error():
    class Off(Prodigy):
        def hyper(self, group):
            h = super().hyper(group); h["eta"] *= 1 + 1e-9; return h
    pa, pb = params(), params()
    with pytest.raises(AssertionError): assert_close_paths(run_pull(Off(pa), pa, 10), run_pull(prodigyopt.Prodigy(pb), pb, 10))


@needs_prodigyopt
def test_prodigy_state_dicts_swap_with_the_package_and_resume():
    kw = dict(weight_decay=0.1, use_bias_correction=True)
    pa = params()
    a = Prodigy(pa, **kw); run_pull(a, pa, 8)
    buf = io.BytesIO(); torch.save(a.state_dict(), buf); buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    pb, pc = [p.clone() for p in pa], [p.clone() for p in pa]
    b = _quiet_prodigyopt(pb, **kw); b.load_state_dict(copy.deepcopy(saved))
    c = Prodigy(pc, **kw); c.load_state_dict(saved)
    ra, rb, rc = run_pull(a, pa, 8, start=8), run_pull(b, pb, 8, start=8), run_pull(c, pc, 8, start=8)
    assert_close_paths(ra, rb)
    for x, y in zip(ra, rc):
        for u, w in zip(x, y): assert torch.equal(u, w)                        # our own resume: bit for bit
    d = Prodigy([p.clone() for p in pb], **kw)
    d.load_state_dict(copy.deepcopy(b.state_dict()))                          # and the package's state_dict into ours
    assert d.param_groups[0]["k"] == b.param_groups[0]["k"] == 16 and d.param_groups[0]["d"] == b.param_groups[0]["d"]


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1, decouple=False, use_bias_correction=True),
                                dict(betas=(0.0, 0.99), safeguard_warmup=True, growth_rate=1.05)])
def test_prodigy_matches_the_independent_reference_with_group_lrs(kw):
    "Groups with different learning rates (which prodigyopt refuses): each group's η enters its own step."
    pa, pb = params(), params()
    a = Prodigy(groups(pa, 1.0), **kw)
    b = ProdigyReference(groups(pb, 1.0), **kw)
    assert_close_paths(run_pull(a, pa, 25, sometimes=4), run_pull(b, pb, 25, sometimes=4))
    assert a.param_groups[0]["d"] == pytest.approx(b.param_groups[0]["d"], rel=1e-12)


def test_prodigy_estimate_is_a_lower_bound_on_a_convex_problem():
    "On a convex quadratic, d̂ = r/‖s‖₁ <= ‖θ₀ − θ*‖∞ at every step, and d grows monotonically to that order."
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(10, 10, generator=gen, dtype=F64); A = M @ M.T / 10 + 0.1 * torch.eye(10, dtype=F64)
    star = 2 * torch.randn(10, generator=gen, dtype=F64)
    th = torch.zeros(10, dtype=F64, requires_grad=True)
    D = (th.detach() - star).abs().max().item()
    opt, ds = Prodigy([th]), []
    for _ in range(200):
        opt.zero_grad(); (0.5 * (th - star) @ A @ (th - star)).backward(); opt.step()
        ds.append(opt.param_groups[0]["d"]); assert opt.param_groups[0]["d_hat"] <= D
    assert ds == sorted(ds) and 0.05 * D < ds[-1] <= D


def test_prodigy_leaves_the_gradient_and_frozen_groups_alone():
    p, q = torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)
    opt = Prodigy([{"params": [p]}, {"params": [q], "lr": 0.0}], weight_decay=0.1, decouple=False)
    q0 = q.clone()
    for _ in range(3):
        g = torch.randn(4, dtype=F64); p.grad, q.grad = g.clone(), torch.randn(3, dtype=F64)
        opt.step()
        assert torch.equal(p.grad, g)                                          # the coupled decay is not written into p.grad
    assert torch.equal(q, q0)                                                  # lr = 0: frozen
    with pytest.raises(ValueError, match="d0"): Prodigy([p], d0=0.0)
    with pytest.raises(ValueError, match="growth_rate"): Prodigy([p], growth_rate=0.5)
    with pytest.raises(ValueError, match="slice_p"): Prodigy([p], slice_p=0)
