"""What is special to chapter 5 (optbook.shampoo); the registry (tests/test_registry.py) runs the shared checks.

- `KronShampooReference`: Shampoo written independently of optbook, with the full (P ⊗ Q) preconditioner built by
  `torch.kron` and its −1/4 power taken as one (pq × pq) matrix; the registry compares optbook.Shampoo with it;
- vectors follow torch.optim.Adagrad(initial_accumulator_value=eps, eps=0); convolutions are (out, −1) matrices;
- precondition_frequency keeps the roots fixed between refreshes; refused options; bf16 runs;
- beta2 < 1 (bias-corrected moving averages) and grafting="adagrad" (Shampoo's direction, AdaGrad's norm).
"""
import pytest
import torch


pytestmark = pytest.mark.filterwarnings("error")
F64 = torch.float64


class KronShampooReference(torch.optim.Optimizer):
    "Shampoo from Gupta, Koren & Singer (2018), written without optbook: the dense Kronecker form, in float64."
    def __init__(self, params, lr=1e-2, eps=1e-6, precondition_frequency=1, momentum=0, weight_decay=0, *,
                 beta2=1.0, grafting=None, maximize=False, foreach=None):
        super().__init__(params, dict(lr=lr, eps=eps, precondition_frequency=precondition_frequency,
                                      momentum=momentum, weight_decay=weight_decay, beta2=beta2, grafting=grafting,
                                      maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        for group in self.param_groups:
            eps, b2 = group["eps"], group["beta2"]
            w = 1.0 if b2 == 1 else 1 - b2                      # sums (the paper), or moving averages
            for p in group["params"]:
                if p.grad is None: continue
                g = (-p.grad if group["maximize"] else p.grad).to(F64)
                st = self.state[p]
                st["t"] = st.get("t", 0) + 1
                bc = 1.0 if b2 == 1 else 1 - b2 ** st["t"]      # bias correction of the moving averages
                st["diag"] = b2 * st.get("diag", torch.full(p.shape, eps, dtype=F64)) + w * g * g
                adagrad_step = g / torch.sqrt(st["diag"] / bc)  # AdaGrad's (RMSprop's) step: vectors, and the graft
                if p.dim() >= 2:
                    G = g.reshape(p.shape[0], -1)
                    if "left" not in st:
                        st["left"] = eps * torch.eye(G.shape[0], dtype=F64)
                        st["right"] = eps * torch.eye(G.shape[1], dtype=F64)
                    st["left"] = b2 * st["left"] + w * G @ G.T
                    st["right"] = b2 * st["right"] + w * G.T @ G
                    if (st["t"] - 1) % group["precondition_frequency"] == 0:
                        K = torch.kron(st["left"] / bc, st["right"] / bc)  # (P ⊗ Q): row-major vec(P X Q) = (P ⊗ Q) vec(X)
                        h, V = torch.linalg.eigh(K)
                        st["kron_inv_root"] = V @ torch.diag(h.clamp_min(eps * eps) ** -0.25) @ V.T
                    d = (st["kron_inv_root"] @ G.flatten()).reshape(p.shape)
                    if group["grafting"] == "adagrad":
                        d = d * torch.linalg.norm(adagrad_step) / torch.linalg.norm(d)
                else:
                    d = adagrad_step
                if group["momentum"]:
                    st["buf"] = group["momentum"] * st.get("buf", torch.zeros_like(d)) + d
                    d = st["buf"]
                new = p.to(F64) * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * d
                p.copy_(new.to(p.dtype))
        return loss


def test_reference_kron_form_equals_the_two_sided_product():
    "The identity the reference relies on: (P ⊗ Q)^{-1/4} vec(G) = vec(P^{-1/4} G Q^{-1/4}) for symmetric P, Q."
    gen = torch.Generator().manual_seed(0)
    A, B, G = (torch.randn(s, generator=gen, dtype=F64) for s in ((4, 4), (3, 3), (4, 3)))
    P, Q = A @ A.T + 0.1 * torch.eye(4, dtype=F64), B @ B.T + 0.1 * torch.eye(3, dtype=F64)
    def root(S):
        h, V = torch.linalg.eigh(S); return V @ torch.diag(h ** -0.25) @ V.T
    torch.testing.assert_close(root(torch.kron(P, Q)) @ G.flatten(), (root(P) @ G @ root(Q)).flatten())


def test_vectors_follow_torch_adagrad():
    from optbook.shampoo import Shampoo
    a, b = torch.randn(5, dtype=F64), None
    b = a.clone()
    ours, ref = Shampoo([a], lr=0.1, eps=1e-3), torch.optim.Adagrad([b], lr=0.1, initial_accumulator_value=1e-3, eps=0)
    for k in range(20):
        g = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(k))
        a.grad, b.grad = g.clone(), g.clone(); ours.step(); ref.step()
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(ours.state[a]["sum"], ref.state[b]["sum"])


def test_beta2_vectors_are_bias_corrected_rmsprop():
    "With beta2 < 1 a vector's step is g/sqrt(G/(1 - beta2^t)), G a moving average of g*g started at eps."
    from optbook.shampoo import Shampoo
    a = torch.randn(5, dtype=F64)
    x, opt = a.clone(), Shampoo([a], lr=0.1, eps=1e-3, beta2=0.9)
    G = torch.full((5,), 1e-3, dtype=F64)
    for t in range(1, 11):
        g = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(t))
        a.grad = g.clone(); opt.step()
        G = 0.9 * G + 0.1 * g * g
        x = x - 0.1 * g / torch.sqrt(G / (1 - 0.9**t))
    torch.testing.assert_close(a, x, rtol=1e-13, atol=1e-15)


def test_grafting_keeps_the_direction_and_takes_the_adagrad_norm():
    from optbook.shampoo import Shampoo
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, dtype=F64, generator=gen)
    grads = [torch.randn(4, 3, dtype=F64, generator=gen) for _ in range(6)]
    plain, graft = x0.clone(), x0.clone()
    o_p, o_g = Shampoo([plain], lr=0.1, eps=1e-3), Shampoo([graft], lr=0.1, eps=1e-3, grafting="adagrad")
    G = torch.full((4, 3), 1e-3, dtype=F64)
    for g in grads:
        before_p, before_g = plain.clone(), graft.clone()
        plain.grad, graft.grad = g.clone(), g.clone(); o_p.step(); o_g.step()
        G = G + g * g
        step_p, step_g = before_p - plain, before_g - graft
        assert abs(torch.linalg.norm(step_g) - 0.1 * torch.linalg.norm(g / G.sqrt())) < 1e-12
        torch.testing.assert_close(step_g / torch.linalg.norm(step_g), step_p / torch.linalg.norm(step_p))
    torch.testing.assert_close(o_g.state[graft]["sum"], G)
    assert "sum" not in o_p.state[plain]
    v, w = torch.randn(5, dtype=F64), None        # vectors: grafting AdaGrad onto AdaGrad changes nothing
    w = v.clone()
    o_v, o_w = Shampoo([v], lr=0.1, grafting="adagrad"), Shampoo([w], lr=0.1)
    for g in grads:
        v.grad, w.grad = g[0, :].repeat(2)[:5].clone(), g[0, :].repeat(2)[:5].clone(); o_v.step(); o_w.step()
    assert torch.equal(v, w)


def test_convolution_is_an_out_by_rest_matrix():
    from optbook.shampoo import Shampoo
    w = torch.randn(4, 2, 3, 3, dtype=F64)
    m = w.reshape(4, -1).clone()
    o_w, o_m = Shampoo([w], lr=0.1, eps=1e-3), Shampoo([m], lr=0.1, eps=1e-3)
    for k in range(5):
        g = torch.randn(4, 2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(k))
        w.grad, m.grad = g.clone(), g.reshape(4, -1).clone(); o_w.step(); o_m.step()
    assert torch.equal(w.reshape(4, -1), m)
    assert o_w.state[w]["L"].shape == (4, 4) and o_w.state[w]["R"].shape == (18, 18)


def test_roots_stay_fixed_between_refreshes():
    from optbook.shampoo import Shampoo
    x = torch.randn(3, 2, dtype=F64)
    opt = Shampoo([x], lr=0.1, eps=1e-3, precondition_frequency=3)
    roots = []
    for k in range(7):
        x.grad = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(k)); opt.step()
        roots.append(opt.state[x]["L_inv_root"].clone())
    same = [torch.equal(roots[k], roots[k - 1]) for k in range(1, 7)]
    assert same == [True, True, False, True, True, False]     # refreshed at steps 1, 4, 7


@pytest.mark.parametrize("kw", [dict(eps=0.0), dict(eps=-1.0), dict(precondition_frequency=0),
                                dict(precondition_frequency=1.5), dict(momentum=1.0), dict(weight_decay=-1.0),
                                dict(beta2=0.0), dict(beta2=1.5), dict(grafting="adam")])
def test_bad_options_are_refused(kw):
    from optbook.shampoo import Shampoo
    with pytest.raises(ValueError, match=next(iter(kw))): Shampoo([torch.zeros(2, 2)], **kw)


def test_refused_features():
    from optbook.shampoo import Shampoo
    with pytest.raises(NotImplementedError): Shampoo([torch.zeros(2, 2)], fused=True)
    with pytest.raises(ValueError, match="complex"): Shampoo([torch.zeros(2, 2, dtype=torch.complex64)])
    assert not hasattr(torch.optim, "Shampoo")


def test_bf16_matrix_steps_stay_finite():
    from optbook.shampoo import Shampoo
    x = torch.randn(8, 4).to(torch.bfloat16)
    opt = Shampoo([x], lr=1e-2)
    for k in range(5):
        x.grad = torch.randn(8, 4, generator=torch.Generator().manual_seed(k)).to(torch.bfloat16); opt.step()
    assert torch.isfinite(x).all() and all(s.dtype == torch.bfloat16 for k, s in opt.state[x].items() if k != "step")


def test_registry_reference_is_this_module():
    import test_registry as R   # imported here: test_registry imports this module while building its REGISTRY
    entry = next(e for e in R.REGISTRY if e.name == "Shampoo")
    assert entry.reference.__name__ == "KronShampooReference"


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 2, 3), (0,)])
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, weight_decay=0.1, grafting="adagrad", beta2=0.99)])
def test_empty_parameter_is_a_no_op(shape, kw):
    "An empty parameter (found by fuzzing: (0, 4) divided by zero in init_state) steps like torch's optimizers do: nothing."
    from optbook.shampoo import Shampoo
    x, w = torch.zeros(shape, dtype=F64, requires_grad=True), torch.randn(3, 2, dtype=F64, requires_grad=True)
    w0 = w.detach().clone()
    opt, ref = Shampoo([x, w], lr=0.1, **kw), Shampoo([w0], lr=0.1, **kw)
    for k in range(3):
        x.grad = torch.zeros(shape, dtype=F64)
        w.grad = torch.randn(3, 2, generator=torch.Generator().manual_seed(k), dtype=F64); w0.grad = w.grad.clone()
        opt.step(); ref.step()
    assert x.shape == shape and torch.equal(w.detach(), w0) and int(opt.state[x]["step"]) == 3
    opt.load_state_dict(opt.state_dict())


def test_bf16_state_is_built_without_torch_eye_in_bf16(monkeypatch):
    "torch 2.1's CPU has no bfloat16 kernel for torch.eye: Shampoo must not ask for one (εI is zeros with ε on the diagonal)."
    from optbook.shampoo import Shampoo
    eye = torch.eye
    def old_eye(*args, dtype=None, **kw):
        if dtype == torch.bfloat16: raise RuntimeError('"eye" not implemented for \'BFloat16\'')
        return eye(*args, dtype=dtype, **kw)
    monkeypatch.setattr(torch, "eye", old_eye)
    x = torch.randn(5, 3).to(torch.bfloat16); x.grad = torch.randn(5, 3).to(torch.bfloat16)
    opt = Shampoo([x], lr=1e-2, eps=1e-3); opt.step()
    for key, n in (("L", 5), ("R", 3)):   # the statistic is εI + g gᵀ: its off-diagonal part is g gᵀ's
        S = opt.state[x][key]
        assert S.dtype == torch.bfloat16 and tuple(S.shape) == (n, n) and torch.isfinite(S).all()
    want = (1e-3 * eye(5)).to(torch.bfloat16).float() + (x.grad.float() @ x.grad.float().T).to(torch.bfloat16).float()
    torch.testing.assert_close(opt.state[x]["L"].float(), want, rtol=2e-2, atol=1e-2)
