"""Chapter 11 (optbook.attack): FGSM, PGD and C&W on a small digits classifier.

- invariants: every attack's output is in the pixel box and (FGSM, PGD) in the ε-ball, same shape, dtype and device;
- FGSM is PGD with one step, α = ε and no random start, bit for bit; FGSM's δ is the vertex of the ℓ∞ ball that
  maximizes the linearized loss (brute force over the 2⁶ vertices); FGSM is one `SignSGD(maximize=True)` step;
- the attacks lower the accuracy of a trained model; PGD's loss is at least FGSM's on average;
- C&W runs `optbook.Adam` (recorded by a monkeypatch) and equals an independent loop with `torch.optim.Adam` in float64;
- the model's mode, parameters, gradients and requires_grad flags are unchanged, also when the attack raises;
- bad arguments raise a ValueError naming the value; seeds reproduce; FakeTensorMode "cuda"; real CUDA when present;
- edge cases: an empty batch, a batch of one, a tie (s = 0 is no success), bf16/fp16 inputs (w kept in float32);
- margin_loss: its value and gradient, PGD with it (untargeted and targeted).
"""
import copy, math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import optbook
import optbook.attack as A
from optbook.attack import accuracy_under_attack, cw, fgsm, margin, margin_loss, pgd

pytestmark = pytest.mark.filterwarnings("error")
F64 = torch.float64


@pytest.fixture(scope="module")
def digits():
    "A 64-32-10 tanh MLP trained on the digits pixels in [0, 1] with optbook.Adam (150 full-batch steps); 300 test images."
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:1700]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    opt = optbook.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad(); torch.nn.functional.cross_entropy(net(X[tr]), y[tr]).backward(); opt.step()
    net.eval()
    return net, X[te], y[te]


def loss_each(net, x, y):
    with torch.no_grad(): return torch.nn.functional.cross_entropy(net(x), y, reduction="none")


def pgd_seeded(net, x, y, eps, seed=0, **kw):
    return pgd(net, x, y, eps, generator=torch.Generator().manual_seed(seed), **kw)


def in_ball_and_box(x_adv, x, eps, box=(0.0, 1.0)):
    return (x_adv.shape == x.shape and x_adv.dtype == x.dtype and bool(torch.isfinite(x_adv).all())
            and x_adv.min() >= box[0] and x_adv.max() <= box[1] and (x_adv - x).abs().max() <= eps * (1 + 1e-6))


@pytest.mark.parametrize("eps", [0.0, 0.03, 0.1, 0.5])
def test_outputs_stay_in_the_eps_ball_and_the_box(digits, eps):
    net, x, y = digits
    assert in_ball_and_box(fgsm(net, x, y, eps), x, eps)
    assert in_ball_and_box(fgsm(net, x, y, eps, targeted=True), x, eps)
    for random_start in (False, True):
        assert in_ball_and_box(pgd_seeded(net, x, y, eps, steps=5, random_start=random_start), x, eps)
        assert in_ball_and_box(pgd_seeded(net, x, y, eps, steps=3, alpha=1.0, random_start=random_start), x, eps)
    x_cw = cw(net, x[:50], y[:50], steps=20, lr=0.1)
    assert in_ball_and_box(x_cw, x[:50], 1.0)


class Scale(torch.nn.Module):
    "Multiply the input by a constant (puts a 0..255 to 0..1 rescaling in front of the network)."
    def __init__(self, k): super().__init__(); self.k = k
    def forward(self, t): return t * self.k


def test_other_boxes_and_dtypes(digits):
    "A 0..255 pixel range and float64 inputs: the outputs follow the box and the input's dtype."
    net, x, y = digits
    net255, x255 = torch.nn.Sequential(Scale(1 / 255), *copy.deepcopy(net)), x * 255
    assert in_ball_and_box(pgd_seeded(net255, x255, y, 8.0, steps=5, box=(0, 255)), x255, 8.0, box=(0, 255))
    assert in_ball_and_box(fgsm(net255, x255, y, 8.0, box=(0, 255)), x255, 8.0, box=(0, 255))
    assert in_ball_and_box(cw(net255, x255[:20], y[:20], steps=10, box=(0, 255)), x255[:20], 255.0, box=(0, 255))
    net64 = copy.deepcopy(net).to(F64)
    for attack in (lambda: fgsm(net64, x.double(), y, 0.1), lambda: pgd_seeded(net64, x.double(), y, 0.1, steps=2),
                   lambda: cw(net64, x[:10].double(), y[:10], steps=5)):
        assert attack().dtype == F64


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_fgsm_is_pgd_with_one_full_step_bit_for_bit(digits, eps, targeted):
    net, x, y = digits
    assert torch.equal(fgsm(net, x, y, eps, targeted=targeted),
                       pgd(net, x, y, eps, alpha=eps, steps=1, random_start=False, targeted=targeted))
    assert not torch.equal(fgsm(net, x, y, eps), pgd(net, x, y, eps, alpha=eps / 2, steps=1, random_start=False))


def test_fgsm_is_one_sign_descent_step_uphill(digits):
    net, x, y = digits
    x_param = x.clone().requires_grad_(True)
    x_param.grad = A.input_grad(net, x, y, A.cross_entropy_sum)
    optbook.SignSGD([x_param], lr=0.07, maximize=True).step()
    assert torch.equal(x_param.detach().clamp(0, 1), fgsm(net, x, y, 0.07))


def test_fgsm_maximizes_the_linearized_loss_over_the_vertices():
    "Tiny input dimension n = 6: of the 2⁶ vertices of the ε-ball, FGSM's δ maximizes gᵀδ, whose maximum is ε‖g‖₁."
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(F64)
    x = 0.3 + 0.4 * torch.rand(8, 6, dtype=F64)                 # inside the box with room: clipping inactive at ε = 0.1
    y = torch.randint(0, 3, (8,))
    eps = 0.1
    g = A.input_grad(net, x, y, A.cross_entropy_sum)
    vertices = eps * torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=F64)] * 6)   # (64, 6)
    delta = fgsm(net, x, y, eps) - x
    for i in range(8):
        gains = vertices @ g[i]
        assert torch.allclose(delta[i], vertices[gains.argmax()], atol=1e-15)
        assert torch.isclose(gains.max(), eps * g[i].abs().sum(), rtol=1e-14)
    # the first-order gain is realized: ℓ(x + δ) − ℓ(x) ≈ ε‖g‖₁ for a small ε, and no vertex does better
    small = 1e-5
    gain = loss_each(net, fgsm(net, x, y, small), y) - loss_each(net, x, y)
    assert torch.allclose(gain, small * g.abs().sum(1), rtol=1e-3)
    for v in vertices / eps * small:
        assert (loss_each(net, x + v, y) - loss_each(net, x, y) <= gain + 1e-15).all()


def test_attacks_lower_the_accuracy(digits):
    net, x, y = digits
    clean = accuracy_under_attack(net, x, y)
    acc_fgsm = accuracy_under_attack(net, x, y, fgsm, eps=0.1)
    acc_pgd = accuracy_under_attack(net, x, y, pgd, eps=0.1, steps=20, generator=torch.Generator().manual_seed(0))
    assert clean > 0.9 and acc_fgsm < clean - 0.3 and acc_pgd <= acc_fgsm + 0.01
    assert accuracy_under_attack(net, x, y, pgd, eps=0.3, steps=20) < 0.02
    x_cw = cw(net, x, y, steps=200, lr=0.05)
    with torch.no_grad(): correct, fooled = net(x).argmax(1) == y, net(x_cw).argmax(1) != y
    assert (fooled & correct).sum() > 0.9 * correct.sum()
    assert torch.equal(x_cw[~fooled], x[~fooled])                # failures come back unchanged


def test_pgd_finds_a_higher_loss_than_fgsm(digits):
    net, x, y = digits
    for eps in (0.05, 0.1):
        l_fgsm = loss_each(net, fgsm(net, x, y, eps), y)
        l_pgd = loss_each(net, pgd_seeded(net, x, y, eps, steps=20), y)
        assert l_pgd.mean() > l_fgsm.mean() > loss_each(net, x, y).mean()
        assert (l_pgd >= l_fgsm - 1e-3).float().mean() > 0.8


def test_targeted_pgd_reaches_the_target(digits):
    net, x, y = digits
    target = (y + 1) % 10
    x_t = pgd_seeded(net, x, target, 0.3, steps=30, targeted=True)
    with torch.no_grad(): hit = (net(x_t).argmax(1) == target).float().mean()
    assert hit > 0.9
    assert (margin(net(x_t), target, targeted=True) < 0).float().mean() == hit


def test_pgd_random_start_is_uniform_in_the_eps_ball():
    "A model with zero input gradient: PGD returns its projected start, x + u with u uniform on [-ε, ε] (x inside)."
    net = torch.nn.Linear(64, 10)
    torch.nn.init.zeros_(net.weight)
    x, y = torch.full((400, 64), 0.5, dtype=F64), torch.zeros(400, dtype=torch.long)
    u = (pgd_seeded(net.to(F64), x, y, 0.1, steps=1) - x) / 0.1
    assert u.min() >= -1 and u.max() <= 1 and u.min() < -0.99 and u.max() > 0.99
    assert abs(u.mean().item()) < 0.01 and abs(u.var().item() - 1 / 3) < 0.01      # U[-1, 1]: mean 0, variance 1/3
    assert torch.equal(pgd_seeded(net, x, y, 0.1, steps=1, random_start=False), x)


def test_pgd_default_step_size(digits):
    net, x, y = digits
    for eps, steps in ((0.1, 4), (0.05, 10)):
        assert torch.equal(pgd_seeded(net, x, y, eps, steps=steps), pgd_seeded(net, x, y, eps, steps=steps, alpha=2.5 * eps / steps))


def test_empty_batch_and_batch_of_one(digits):
    net, x, y = digits
    for attack in (lambda a, b: fgsm(net, a, b, 0.1), lambda a, b: pgd_seeded(net, a, b, 0.1, steps=2),
                   lambda a, b: cw(net, a, b, steps=2)):
        assert attack(x[:0], y[:0]).shape == (0, 64)
        one = attack(x[:1], y[:1])
        assert one.shape == (1, 64) and in_ball_and_box(one, x[:1], 1.0)
    assert torch.equal(fgsm(net, x[:1], y[:1], 0.1), fgsm(net, x[:5], y[:5], 0.1)[:1])   # per-input: the batch does not matter


def test_targeted_cw_reaches_the_target(digits):
    net, x, y = digits
    target = (y[:50] + 1) % 10
    x_t = cw(net, x[:50], target, c=5.0, steps=100, lr=0.05, targeted=True)
    with torch.no_grad(): pred = net(x_t).argmax(1)
    hit = pred == target
    assert hit.float().mean() > 0.9
    assert torch.equal(x_t[~hit], x[:50][~hit])                  # a miss comes back unchanged, even if misclassified


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cw_in_half_precision_moves_the_saturated_pixels(digits, dtype):
    "In bf16/fp16, 1 − 1e-6 rounds to 1: w lives in float32, so pixels at 0 and 1 can still move, and the output keeps x's dtype."
    net, x, y = digits
    net16, x16 = copy.deepcopy(net).to(dtype), x[:50].to(dtype)
    out = cw(net16, x16, y[:50], steps=100, lr=0.05)
    with torch.no_grad(): fooled = (net16(out).argmax(1) != y[:50]).float().mean()
    assert out.dtype == dtype and fooled > 0.9
    assert ((out != x16) & ((x16 == 0) | (x16 == 1))).sum() > 100


def test_cw_a_tie_is_not_a_success():
    "Logits z = x: at x = (0.5, 0.5) the two classes tie (s = 0). C&W must move on to s < 0, not stop at the tie."
    ident = lambda t: t
    x, y = torch.tensor([[0.5, 0.5]], dtype=F64), torch.tensor([0])
    out = cw(ident, x, y, c=1.0, steps=5, lr=0.01)
    assert margin(ident(out), y) < 0 and not torch.equal(out, x)


def test_margin():
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(margin(z, y), torch.tensor([1.0, 0.0]))              # 3 − 2; a tie is not a success
    assert torch.equal(margin(z, torch.tensor([2, 0]), targeted=True), torch.tensor([1.0, 5.0]))
    assert margin_loss(z, y).item() == -1.0                                  # −Σ s = −(1 + 0)


def test_pgd_with_the_margin_loss(digits):
    "PGD ascending margin_loss lowers the accuracy like the cross-entropy; targeted PGD descending it reaches the target."
    net, x, y = digits
    clean = accuracy_under_attack(net, x, y)
    x_m = pgd_seeded(net, x, y, 0.1, steps=20, loss_fn=margin_loss)
    assert in_ball_and_box(x_m, x, 0.1)
    acc_m = accuracy_under_attack(net, x_m, y)
    acc_ce = accuracy_under_attack(net, pgd_seeded(net, x, y, 0.1, steps=20), y)
    assert acc_m < clean - 0.3 and abs(acc_m - acc_ce) < 0.1
    with torch.no_grad(): assert (margin(net(x_m), y) < margin(net(x), y)).float().mean() > 0.95   # margins shrink
    target = (y + 1) % 10
    x_t = pgd_seeded(net, x, target, 0.3, steps=30, targeted=True, loss_fn=margin_loss)
    with torch.no_grad(): assert (net(x_t).argmax(1) == target).float().mean() > 0.9
    g = torch.zeros(2, 3, requires_grad=True)                                # the gradient: +1 on the runner-up, −1 on y
    margin_loss(g + torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]]), torch.tensor([0, 1])).backward()
    assert torch.equal(g.grad, torch.tensor([[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]]))


class RecordingAdam(optbook.Adam):
    made = []
    def __init__(self, params, **kw):
        params = list(params); RecordingAdam.made.append((params, kw)); super().__init__(params, **kw)


def test_cw_runs_optbook_adam(digits, monkeypatch):
    net, x, y = digits
    assert A.Adam is optbook.Adam
    monkeypatch.setattr(A, "Adam", RecordingAdam)
    RecordingAdam.made.clear()
    cw(net, x[:10], y[:10], steps=3, lr=0.02)
    (params, kw), = RecordingAdam.made
    assert kw == {"lr": 0.02} and len(params) == 1 and params[0].shape == x[:10].shape


def cw_reference(model, x, y, c, confidence, steps, lr):
    "Carlini & Wagner's ℓ2 loop, written out plainly with torch.optim.Adam: the closest successful iterate per input."
    w = torch.atanh((2 * x - 1) * (1 - 1e-6)).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best, best_d2 = x.clone(), [math.inf] * len(x)
    for _ in range(steps):
        x_new = (torch.tanh(w) + 1) / 2
        z = model(x_new)
        d2 = ((x_new - x) ** 2).sum(1)
        f = []
        for i in range(len(x)):
            others = torch.cat([z[i, :y[i]], z[i, y[i] + 1:]])
            f.append(z[i, y[i]] - others.max())
        f = torch.stack(f)
        loss = (d2 + c * torch.clamp(f, min=-confidence)).sum()
        opt.zero_grad(); loss.backward()
        for i in range(len(x)):
            if f[i] < 0 and f[i] <= -confidence and d2[i] < best_d2[i]:
                best_d2[i] = d2[i].item(); best[i] = x_new[i].detach()
        opt.step()
    return best


@pytest.mark.parametrize("c, confidence", [(1.0, 0.0), (0.3, 0.5), (torch.linspace(0.1, 3.0, 16, dtype=F64), 0.0)])
def test_cw_equals_a_reference_loop_with_torch_adam_in_float64(digits, c, confidence):
    net, x, y = digits
    net64 = copy.deepcopy(net).to(F64)
    for p in net64.parameters(): p.requires_grad_(False)
    x64, y16 = x[:16].double(), y[:16]
    ours = cw(net64, x64, y16, c=c, confidence=confidence, steps=60, lr=0.05)
    ref = cw_reference(net64, x64, y16, c, confidence, 60, 0.05)
    assert not torch.equal(ours, x64)                             # some attacks succeeded: the check has content
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    wrong = cw_reference(net64, x64, y16, c * 1.01, confidence, 60, 0.05)
    assert (ours - wrong).abs().max() > 1e-6                      # the comparison notices a different c


def test_cw_takes_one_c_per_input(digits):
    net, x, y = digits
    assert torch.equal(cw(net, x[:20], y[:20], c=torch.full((20,), 0.7), steps=10), cw(net, x[:20], y[:20], c=0.7, steps=10))
    mixed = cw(net, x[:20], y[:20], c=torch.tensor([0.0] * 10 + [5.0] * 10), steps=30, lr=0.1)
    assert torch.equal(mixed[:10], x[:10]) and not torch.equal(mixed[10:], x[10:])   # c = 0: nothing pushes to the boundary
    with pytest.raises(ValueError, match=r"Invalid c: a tensor c needs one value per input, shape \(20,\), got \(3,\)"):
        cw(net, x[:20], y[:20], c=torch.ones(3))
    with pytest.raises(ValueError, match=r"Invalid c: .*every value must be finite and >= 0"):
        cw(net, x[:2], y[:2], c=torch.tensor([1.0, -1.0]))


def snapshot(model):
    return ([m.training for m in model.modules()],
            [(p.detach().clone(), None if p.grad is None else p.grad.clone(), p.requires_grad) for p in model.parameters()])


def same(a, b):
    eq = lambda u, v: (u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))
    return a[0] == b[0] and all(eq(p, q) and eq(g, h) and f == k for (p, g, f), (q, h, k) in zip(a[1], b[1]))


def test_model_mode_parameters_grads_and_flags_are_unchanged(digits):
    net, x, y = digits
    model = torch.nn.Sequential(*copy.deepcopy(net), torch.nn.Dropout(0.0)).train()
    model[1].eval()                                               # a submodule in another mode than its parent
    for p in model.parameters(): p.requires_grad_(True)           # set here: the fixture's flags may have been changed
    model[0].weight.requires_grad_(False)
    for p in model.parameters(): p.grad = torch.full_like(p, 0.5)
    model[2].bias.grad = None
    before = snapshot(model)
    fgsm(model, x, y, 0.1); pgd_seeded(model, x, y, 0.1, steps=3); cw(model, x[:10], y[:10], steps=3)
    accuracy_under_attack(model, x, y, fgsm, eps=0.1)
    assert same(snapshot(model), before)
    def broken_loss(z, y): raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"): pgd(model, x, y, 0.1, loss_fn=broken_loss)
    assert same(snapshot(model), before)                          # restored when the attack raises, too
    model[0].weight.requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), y).backward()     # and the model still trains afterwards
    assert model[0].weight.grad is not None


def test_attacks_work_inside_no_grad(digits):
    net, x, y = digits
    expected = fgsm(net, x, y, 0.1)
    with torch.no_grad():
        assert torch.equal(fgsm(net, x, y, 0.1), expected)
        assert cw(net, x[:5], y[:5], steps=2).shape == (5, 64)


def test_plain_callables_are_accepted(digits):
    net, x, y = digits
    assert torch.equal(fgsm(lambda t: net(t), x, y, 0.1), fgsm(net, x, y, 0.1))


@pytest.mark.parametrize("call, match", [
    (lambda n, x, y: fgsm(n, x, y, -0.1), r"Invalid eps: -0\.1"),
    (lambda n, x, y: fgsm(n, x, y, float("nan")), r"Invalid eps: nan"),
    (lambda n, x, y: pgd(n, x, y, float("inf")), r"Invalid eps: inf"),
    (lambda n, x, y: pgd(n, x, y, 0.1, alpha=-1.0), r"Invalid alpha: -1\.0"),
    (lambda n, x, y: pgd(n, x, y, 0.1, steps=0), r"Invalid steps: 0"),
    (lambda n, x, y: pgd(n, x, y, 0.1, steps=2.5), r"Invalid steps: 2\.5"),
    (lambda n, x, y: pgd(n, x, y, 0.1, steps=True), r"Invalid steps: True"),
    (lambda n, x, y: cw(n, x, y, c=-1.0), r"Invalid c: -1\.0"),
    (lambda n, x, y: cw(n, x, y, confidence=-0.5), r"Invalid confidence: -0\.5"),
    (lambda n, x, y: cw(n, x, y, steps=0), r"Invalid steps: 0"),
    (lambda n, x, y: fgsm(n, x * 16, y, 0.1), r"must lie in the box \[0\.0, 1\.0\], found values in \[0\.0, 16\.0\]"),
    (lambda n, x, y: pgd(n, x - 0.5, y, 0.1), r"must lie in the box .*found values in \[-0\.5"),
    (lambda n, x, y: cw(n, x.masked_fill(x > 0.9, float("nan")), y), r"non-finite"),
    (lambda n, x, y: fgsm(n, x.masked_fill(x > 0.9, float("inf")), y, 0.1), r"non-finite"),
    (lambda n, x, y: fgsm(n, (x * 16).long(), y, 0.1), r"floating-point"),
    (lambda n, x, y: fgsm(n, x, y[:-1], 0.1), r"y must be a tensor of shape \(300,\)"),
    (lambda n, x, y: fgsm(n, x, y, 0.1, box=(1, 0)), r"Invalid box: \(1, 0\)"),
    (lambda n, x, y: pgd(n, x, y, 0.1, box=(0, math.inf)), r"Invalid box"),
    (lambda n, x, y: cw(n, x, y, box="01x"), r"Invalid box"),
    (lambda n, x, y: fgsm(n, x, y, "0.1"), r"Invalid eps: '0\.1' \(must be a number\)"),
    (lambda n, x, y: pgd(n, x, y, True), r"Invalid eps: True \(must be a number\)"),
    (lambda n, x, y: fgsm(n, x, y.double(), 0.1), r"y must hold integer class indices, got dtype torch\.float64"),
    (lambda n, x, y: pgd(n, x, y == 1, 0.1), r"y must hold integer class indices, got dtype torch\.bool"),
    (lambda n, x, y: cw(n, x, y - 1), r"y must hold class indices >= 0, found -1"),
])
def test_bad_arguments_raise_naming_the_value(digits, call, match):
    net, x, y = digits
    with pytest.raises(ValueError, match=match): call(net, x, y)


def test_steps_accept_any_integer_type(digits):
    import numpy as np
    net, x, y = digits
    assert torch.equal(pgd_seeded(net, x, y, 0.1, steps=np.int64(3)), pgd_seeded(net, x, y, 0.1, steps=3))
    assert torch.equal(cw(net, x[:5], y[:5], steps=np.int32(4)), cw(net, x[:5], y[:5], steps=4))
    with pytest.raises(ValueError, match=r"Invalid steps: 2\.0"): pgd(net, x, y, 0.1, steps=2.0)


def test_seeds_reproduce(digits):
    net, x, y = digits
    assert torch.equal(pgd_seeded(net, x, y, 0.1, seed=5, steps=2), pgd_seeded(net, x, y, 0.1, seed=5, steps=2))
    assert not torch.equal(pgd_seeded(net, x, y, 0.1, seed=5, steps=2), pgd_seeded(net, x, y, 0.1, seed=6, steps=2))
    torch.manual_seed(1); a = pgd(net, x, y, 0.1, steps=2)         # generator=None: torch's global generator
    torch.manual_seed(1); b = pgd(net, x, y, 0.1, steps=2)
    assert torch.equal(a, b)
    assert torch.equal(cw(net, x[:20], y[:20], steps=5), cw(net, x[:20], y[:20], steps=5))


def test_progress_bar_and_its_fallback(digits, monkeypatch, capsys):
    net, x, y = digits
    expected = pgd_seeded(net, x, y, 0.1, steps=3)
    assert torch.equal(pgd_seeded(net, x, y, 0.1, steps=3, progress=True), expected)
    assert "PGD" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)   # tqdm missing: a plain loop
    assert torch.equal(pgd_seeded(net, x, y, 0.1, steps=3, progress=True), expected)
    assert capsys.readouterr().err == ""


def test_importing_the_module_loads_nothing_heavy():
    import subprocess, sys
    code = ("import sys, optbook.attack; heavy = {'matplotlib', 'sympy', 'sklearn', 'scipy', 'optuna'} & "
            "{m.split('.')[0] for m in sys.modules}; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fake_cuda_tensors_follow_the_input_device():
    """Under FakeTensorMode with a 'cuda' batch: the feasible box, the random start (no generator, or a CPU one), a signed
    step with its projection, and the margin all stay on the input's device and dtype.

    The gradient itself is not run here: autograd on a fake CUDA tensor aborts the process on a CPU-only torch
    (no CUDA device guard), so the attacks end to end are checked on a real GPU by the test below.
    """
    with FakeTensorMode():
        for dtype in (torch.float32, torch.float64):
            x = torch.empty(8, 64, device="cuda", dtype=dtype)
            lower, upper = A._ball_in_box(x, 0.1, (0.0, 1.0))
            for gen in (None, torch.Generator()):
                start = A._uniform_start(x, 0.1, lower, upper, gen)
                A.sign_update(start, torch.empty_like(x), eta=0.01, beta=None, lam=None, maximize=True)
                projected = torch.minimum(torch.maximum(start, lower), upper)
                for t in (lower, upper, start, projected):
                    assert t.device.type == "cuda" and t.dtype == dtype and t.shape == x.shape
            s = margin(torch.empty(8, 10, device="cuda", dtype=dtype), torch.zeros(8, dtype=torch.long, device="cuda"))
            assert s.device.type == "cuda" and s.dtype == dtype and s.shape == (8,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_matches_the_cpu(digits):
    net, x, y = digits
    net_cpu = copy.deepcopy(net).double()
    net_gpu = copy.deepcopy(net_cpu).to("cuda")
    x64 = x.double()
    gpu = fgsm(net_gpu, x64.cuda(), y.cuda(), 0.1)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() != fgsm(net_cpu, x64, y, 0.1)).float().mean() < 0.01   # signs of gradients near 0 may differ
    out = pgd(net_gpu, x64.cuda(), y.cuda(), 0.1, steps=3, generator=torch.Generator(device="cuda").manual_seed(0))
    assert in_ball_and_box(out, x64.cuda(), 0.1)
    assert in_ball_and_box(cw(net_gpu, x64[:20].cuda(), y[:20].cuda(), steps=10), x64[:20].cuda(), 1.0)
