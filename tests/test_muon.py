"""Chapter 07 (Muon): the Newton–Schulz polynomial, conv flattening, the parameter-group helper, batched NS,
torch 2.13's in-place bf16 bug, and mutants that the reference comparison must catch."""
import copy
import inspect
import math

import pytest
import torch

import optbook.muon as M
from optbook.muon import Muon, MuonWithAuxAdam, newton_schulz, muon_param_groups, muon_with_adamw, lr_ratio, NS_COEFFICIENTS

F64 = torch.float64
# torch.optim.Muon, the reference, exists from torch 2.9 on; on an older torch (`make test-floor`) these checks skip
needs_torch_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"),
                                      reason=f"torch {torch.__version__} has no torch.optim.Muon (added in 2.9)")


def run_pair(make_ours, steps=8, dtype=F64, shapes=((8, 5), (5, 8), (6, 6), (12, 3)), **kw):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=F64).to(dtype) for s in shapes]
    qs = [p.clone() for p in ps]
    ours, ref = make_ours(ps, **kw), torch.optim.Muon(qs, **kw)
    for _ in range(steps):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=gen, dtype=F64).to(dtype); q.grad = p.grad.clone()
        ours.step(); ref.step()
    return ps, qs, ours, ref


@needs_torch_muon
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust", [None, "original", "match_rms_adamw"])
def test_bit_identical_to_torch_in_float64(nesterov, adjust):
    ps, qs, ours, ref = run_pair(Muon, lr=0.02, nesterov=nesterov, adjust_lr_fn=adjust)
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    a, b = ours.state_dict()["state"], ref.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in a)


EXTRA = ["foreach", "polar_express", "normuon", "beta2"]   # optbook's keyword-only options, all off by default


@needs_torch_muon
def test_signature_and_defaults_extend_torch():
    "torch's parameters, kinds and defaults in torch's order, then optbook's keyword-only options."
    ours, ref = inspect.signature(Muon).parameters, inspect.signature(torch.optim.Muon).parameters
    assert list(ours)[:len(ref)] == list(ref) and list(ours)[len(ref):] == EXTRA
    for name, p in ref.items():
        assert ours[name].kind == p.kind and ours[name].default == p.default, name
    assert all(ours[k].kind == inspect.Parameter.KEYWORD_ONLY for k in EXTRA)
    assert [ours[k].default for k in EXTRA] == [None, False, False, None]
    w = torch.zeros(3, 3)
    a = {k: v for k, v in Muon([w]).param_groups[0].items() if k not in ["params"] + EXTRA}
    b = {k: v for k, v in torch.optim.Muon([w.clone()]).param_groups[0].items() if k != "params"}
    assert a == b


def mutant(ns):
    "Muon with another Newton–Schulz."
    class Mutant(Muon):
        def update(self, p, g, s, h, **kw):
            d = M._direction(g, s["m"], h["beta"], h["nesterov"])
            M._apply(p, ns(d, h["coefficients"], h["ns_steps"], h["eps"]), h["eta"], h["lam"], h["adjust_lr_fn"])
    return Mutant


def no_transpose(G, coefficients, steps, eps):
    X = G.bfloat16(); X = X / X.norm().clamp(min=eps)
    c1, c3, c5 = coefficients
    for _ in range(steps):
        A = X @ X.mT; X = torch.addmm(X, torch.addmm(A, A, A, beta=c3, alpha=c5), X, beta=c1)
    return X


@pytest.mark.parametrize("ns", [lambda G, c, k, e: newton_schulz(G, (c[0], c[1], 2.03), k, e), no_transpose,
                                newton_schulz], ids=["wrong_c5", "no_transpose", "correct"])
@needs_torch_muon
def test_mutants_are_caught_at_registry_tolerance(ns):
    ps, qs, _, _ = run_pair(mutant(ns), lr=0.02)
    close = all(torch.allclose(p, q, rtol=1e-12, atol=1e-15) for p, q in zip(ps, qs))
    assert close == (ns is newton_schulz)


def test_polynomial_pushes_singular_values_toward_one():
    c1, c3, c5 = NS_COEFFICIENTS
    assert c1 + c3 + c5 == pytest.approx(0.701)                     # φ(1) ≠ 1: not a fixed point
    s = torch.linspace(0.002, 1, 1000, dtype=F64)
    for _ in range(5): s = c1 * s + c3 * s**3 + c5 * s**5
    assert s.min() > 0.68 and s.max() < 1.22
    G = torch.randn(12, 7, dtype=F64)
    X = G / G.norm(); A = X @ X.T
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    torch.testing.assert_close(c1 * X + (c3 * A + c5 * A @ A) @ X, U @ torch.diag(c1 * S + c3 * S**3 + c5 * S**5) @ Vh)


def test_tall_matrices_are_nearly_orthogonal_and_input_untouched():
    G = torch.randn(256, 64, dtype=torch.float64)
    G0 = G.clone()
    sv = torch.linalg.svdvals(newton_schulz(G).double())
    assert 0.6 < sv.min() and sv.max() < 1.25
    assert torch.equal(G, G0)
    Gb = G.bfloat16(); Gb0 = Gb.clone(); newton_schulz(Gb); assert torch.equal(Gb, Gb0)


@needs_torch_muon
def test_torch_bf16_nesterov_false_rescales_buffer_and_ours_does_not():
    g = torch.randn(6, 4).bfloat16()
    p1, p2 = torch.zeros(6, 4, dtype=torch.bfloat16), torch.zeros(6, 4, dtype=torch.bfloat16)
    o1, o2 = Muon([p1], lr=0.02, nesterov=False), torch.optim.Muon([p2], lr=0.02, nesterov=False)
    p1.grad, p2.grad = g.clone(), g.clone(); o1.step(); o2.step()
    expected = torch.zeros_like(g).lerp_(g, 1 - 0.95)
    assert torch.equal(o1.state[p1]["momentum_buffer"], expected)
    m2 = o2.state[p2]["momentum_buffer"]
    assert not torch.equal(m2, expected) and abs(m2.float().norm().item() - 1) < 1e-2   # torch 2.13's bug


def test_conv_weight_is_its_flattened_matrix():
    W = torch.randn(16, 8, 3, 3, dtype=F64); g = torch.randn_like(W)
    W4, W2 = W.clone(), W.reshape(16, -1).clone()
    W4.grad, W2.grad = g.clone(), g.reshape(16, -1).clone()
    Muon([W4], lr=0.02, adjust_lr_fn="match_rms_adamw").step(); Muon([W2], lr=0.02, adjust_lr_fn="match_rms_adamw").step()
    assert torch.equal(W4.reshape(16, -1), W2)
    assert lr_ratio("match_rms_adamw", W4.shape) == 0.2 * math.sqrt(72)
    with pytest.raises(ValueError, match="matrices only"): Muon([torch.zeros(3)])


def test_batched_ns_equals_per_matrix_up_to_bf16_rounding():
    G = torch.randn(6, 48, 24, dtype=F64)
    O = newton_schulz(G).double()
    one = torch.stack([newton_schulz(G[i]).double() for i in range(6)])
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    assert (O - one).norm() < 0.1 * (one - U @ Vh).norm()
    ps = [torch.randn(32, 16, dtype=F64) for _ in range(4)] + [torch.randn(8, 8, dtype=F64)]
    qs, start = [p.clone() for p in ps], [p.clone() for p in ps]
    a, b = Muon(ps, lr=0.02, foreach=False), Muon(qs, lr=0.02, foreach=True)
    for _ in range(3):
        for p, q in zip(ps, qs): p.grad = torch.randn_like(p); q.grad = p.grad.clone()
        a.step(); b.step()
    for p, q, s in zip(ps, qs, start):
        assert not torch.equal(q, s)                                      # the batched path moves every matrix
        assert (p - q).norm() < 1e-3 * p.norm()
    assert torch.equal(ps[-1], qs[-1])                                    # a matrix alone takes the one-matrix path


class TinyLM(torch.nn.Module):
    "Embedding, two pre-norm blocks (attention as Linear q, k, v, o; an MLP), a final norm, a tied or untied head."
    def __init__(self, vocab=40, d=16, tied=False):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict(dict(
            norm1=torch.nn.LayerNorm(d), qkv=torch.nn.Linear(d, 3 * d, bias=False), proj=torch.nn.Linear(d, d),
            norm2=torch.nn.LayerNorm(d), up=torch.nn.Linear(d, 4 * d), down=torch.nn.Linear(4 * d, d))) for _ in range(2))
        self.norm = torch.nn.LayerNorm(d)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        if tied: self.lm_head.weight = self.embed.weight
    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            q, k, v = b["qkv"](b["norm1"](h)).chunk(3, -1)
            h = h + b["proj"](torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
            h = h + b["down"](torch.relu(b["up"](b["norm2"](h))))
        return self.lm_head(self.norm(h))


class TinyViT(torch.nn.Module):
    "Patch conv, class token, position embedding, blocks (nn.TransformerEncoderLayer), a norm and a head. The head is registered first."
    def __init__(self, d=16, classes=5):
        super().__init__()
        self.head = torch.nn.Linear(d, classes)                       # registered before the blocks' Linears
        self.patch_embed = torch.nn.Conv2d(3, d, 4, stride=4)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 5, d) * 0.02)
        self.blocks = torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(d, 2, 2 * d, batch_first=True)
                                            for _ in range(2)])
        self.norm = torch.nn.LayerNorm(d)
    def forward(self, img):
        x = self.patch_embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def names(model, ps):
    ids = {id(p) for p in ps}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("tied", [False, True])
def test_param_groups_on_a_transformer_lm(tied, capsys):
    lm = TinyLM(tied=tied)
    to_muon, to_adamw = muon_param_groups(lm, verbose=True)
    hidden = {f"blocks.{i}.{n}.weight" for i in range(2) for n in ("qkv", "proj", "up", "down")}
    assert names(lm, to_muon) == hidden
    assert names(lm, to_adamw) == {n for n, _ in lm.named_parameters()} - hidden   # embedding, head, norms, biases
    assert "lm_head.weight" in names(lm, to_adamw) or tied                         # tied: one tensor, named embed.weight
    assert len(to_muon) + len(to_adamw) == len(list(lm.parameters()))
    out = capsys.readouterr().out
    assert "Muon: 8 tensors" in out and "embedding" in out and ("tied to an embedding" in out) == tied
    lm(torch.randint(0, 40, (2, 6))).sum().backward()                             # a real model: it runs
    Muon(to_muon, lr=0.02).step()


def test_param_groups_on_a_vit_and_the_overrides(capsys):
    vit = TinyViT()
    to_muon, to_adamw = muon_param_groups(vit)
    body = {f"blocks.{i}.{n}" for i in range(2)
            for n in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")}
    assert names(vit, to_muon) == body | {"patch_embed.weight"}
    adamw = names(vit, to_adamw)
    assert {"head.weight", "head.bias", "cls_token", "pos_embed", "norm.weight"} <= adamw   # the old rule gave cls/pos/head to Muon
    assert not adamw & body
    # overrides: the patch conv is the input embedding (Jordan puts it with AdamW); a named head; a module object
    to_muon2, _ = muon_param_groups(vit, exclude=["patch_embed", vit.blocks[1].linear2])
    assert names(vit, to_muon2) == body - {"blocks.1.linear2.weight"}
    to_muon3, _ = muon_param_groups(vit, head="blocks.1.linear2", exclude="patch_embed.weight", verbose=True)
    assert names(vit, to_muon3) == body - {"blocks.1.linear2.weight"} | {"head.weight"}   # a named head replaces the default
    assert "excluded" in capsys.readouterr().out
    with pytest.raises(ValueError, match="names no module"): muon_param_groups(vit, exclude=["nope"])
    vit(torch.randn(2, 3, 8, 8)).sum().backward()
    Muon(to_muon, lr=0.02).step()


def test_param_group_helper_default_head_and_pair():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 8); self.conv = torch.nn.Conv1d(8, 8, 3)
            self.hidden = torch.nn.Linear(8, 8); self.norm = torch.nn.LayerNorm(8); self.out = torch.nn.Linear(8, 20)
            self.out.weight = self.embed.weight                            # tied
    net = Net()
    to_muon, to_adamw = muon_param_groups(net)
    assert [id(p) for p in to_muon] == [id(net.conv.weight), id(net.hidden.weight)]
    assert len(to_muon) + len(to_adamw) == len(list(net.parameters()))
    to_muon2, _ = muon_param_groups(net, head="hidden")
    assert [id(p) for p in to_muon2] == [id(net.conv.weight)]
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert [id(p) for p in muon_param_groups(mlp)[0]] == [id(mlp[0].weight)]   # default head: the last top-level Linear
    assert len(muon_param_groups(mlp, head=[])[0]) == 2                         # head=[]: no head
    muon, adamw = muon_with_adamw(net, muon=dict(lr=0.01))
    assert muon.param_groups[0]["lr"] == 0.01 and type(adamw).__name__ == "AdamW"


def lm_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (4, 8), generator=gen)


def lm_loss(lm, x): return torch.nn.functional.cross_entropy(lm(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())


def test_muon_with_aux_adam_equals_the_pair_step_by_step():
    torch.manual_seed(0); a = TinyLM().double()
    b = TinyLM().double(); b.load_state_dict(a.state_dict())
    kw = dict(muon=dict(lr=0.02, weight_decay=0.05), adamw=dict(lr=3e-3, betas=(0.9, 0.95)))
    pair = muon_with_adamw(a, **kw)
    one = M.MuonWithAuxAdam.for_model(b, **kw)
    assert [g["use_muon"] for g in one.param_groups] == [True, False]
    assert one.param_groups[0]["weight_decay"] == 0.05 and one.param_groups[1]["betas"] == (0.9, 0.95)
    for step in range(5):
        x = lm_batch(step)
        for o in pair: o.zero_grad()
        one.zero_grad()
        lm_loss(a, x).backward(); lm_loss(b, x).backward()
        for o in pair: o.step()
        one.step()
        for p, q in zip(a.parameters(), b.parameters()): assert torch.equal(p, q), step
    sd = one.state_dict()
    assert {k for s in sd["state"].values() for k in s} == {"momentum_buffer", "step", "exp_avg", "exp_avg_sq"}
    assert len(sd["state"]) == len(list(b.parameters()))
    twin = copy.deepcopy((b, one))                             # a deep copy (and a pickle) keeps the inner optimizers
    for bb, oo in ((b, one), twin):
        oo.zero_grad(); lm_loss(bb, lm_batch(9)).backward(); oo.step()
    for p, q in zip(b.parameters(), twin[0].parameters()): assert torch.equal(p, q)
    assert twin[1]._parts[True].state is twin[1].state and twin[1]._parts[True].param_groups[0] is twin[1].param_groups[0]


def test_muon_with_aux_adam_state_dict_round_trip_and_one_scheduler():
    def run(steps, resume_at=None):
        torch.manual_seed(0); lm = TinyLM().double()
        opt = M.MuonWithAuxAdam.for_model(lm, muon=dict(lr=0.02), adamw=dict(lr=3e-3))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
        for t in range(steps):
            if t == resume_at:                                  # a fresh model and optimizer, loaded from the saved ones
                saved = (lm.state_dict(), opt.state_dict(), sched.state_dict())
                torch.manual_seed(1); lm = TinyLM().double(); lm.load_state_dict(saved[0])
                opt = M.MuonWithAuxAdam.for_model(lm, muon=dict(lr=0.5), adamw=dict(lr=0.5))   # lrs come from the state_dict
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))   # torch's order: scheduler,
                opt.load_state_dict(saved[1]); sched.load_state_dict(saved[2])             # then the two state_dicts
            opt.zero_grad(); lm_loss(lm, lm_batch(t)).backward(); opt.step(); sched.step()
        return lm, opt
    lm1, opt1 = run(6)
    lm2, opt2 = run(6, resume_at=3)
    for p, q in zip(lm1.parameters(), lm2.parameters()): assert torch.equal(p, q)
    assert [g["lr"] for g in opt1.param_groups] == pytest.approx([0.02 / 7, 3e-3 / 7])  # one scheduler drives both kinds
    for part in opt2._parts.values():                         # after loading, the inner optimizers still share
        assert part.state is opt2.state and all(any(g is h for h in opt2.param_groups) for g in part.param_groups)


def test_muon_with_aux_adam_refuses_bad_groups():
    w, b = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="use_muon"): M.MuonWithAuxAdam([dict(params=[w])])
    with pytest.raises(ValueError, match="betas"): M.MuonWithAuxAdam([dict(params=[w], use_muon=True, betas=(0.9, 0.9))])
    with pytest.raises(ValueError, match="more than one"):
        M.MuonWithAuxAdam([dict(params=[w], use_muon=True), dict(params=[w, b], use_muon=False)])
    with pytest.raises(ValueError, match="matrices only"): M.MuonWithAuxAdam([dict(params=[b], use_muon=True)])
    opt = M.MuonWithAuxAdam([dict(params=[w], use_muon=True), dict(params=[b], use_muon=False)])
    other = M.MuonWithAuxAdam([dict(params=[b.detach().clone().requires_grad_()], use_muon=False),
                               dict(params=[w.detach().clone().requires_grad_()], use_muon=True)])
    with pytest.raises(ValueError, match="use_muon"): opt.load_state_dict(other.state_dict())
    if hasattr(Muon, "check_state_dict"):                    # the core's strict loading reaches each kind's groups
        w.grad, b.grad = torch.ones_like(w), torch.ones_like(b); opt.step()
        sd = opt.state_dict(); sd["state"][0]["momentum_buffer"] = torch.zeros(2, 2)
        with pytest.raises(ValueError, match="shape"): opt.load_state_dict(sd)


@pytest.mark.parametrize("bad", [dict(ns_coefficients=(1.0, 2.0)), dict(eps=-1.0), dict(ns_steps=-1)])
def test_more_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))): Muon([torch.zeros(2, 2)], **bad)


def test_complex_refused():
    with pytest.raises(ValueError, match="complex"): Muon([torch.zeros(2, 2, dtype=torch.complex64)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_muon_with_aux_adam_on_a_gpu():
    "On CUDA, foreach defaults to on (batched Newton–Schulz): the one optimizer still equals the pair, and both learn."
    torch.manual_seed(0); a = TinyLM().cuda()
    b = TinyLM().cuda(); b.load_state_dict(a.state_dict())
    kw = dict(muon=dict(lr=0.02), adamw=dict(lr=3e-3))
    pair, one = muon_with_adamw(a, **kw), M.MuonWithAuxAdam.for_model(b, **kw)
    losses = []
    for step in range(10):
        x = lm_batch(step).cuda()
        for o in (*pair, one): o.zero_grad()
        la, lb = lm_loss(a, x), lm_loss(b, x)
        la.backward(); lb.backward()
        for o in (*pair, one): o.step()
        losses.append(la.item())
        for p, q in zip(a.parameters(), b.parameters()): assert torch.equal(p, q), step
    assert losses[-1] < losses[0]


# --- Polar Express (Amsel et al. 2025) -------------------------------------------------------------------------------
PAPER_PE = [(8.28721201814563, -23.595886519098837, 17.300387312530933),       # their Algorithm 1, before the safety factor
            (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
            (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
            (3.3184196573706015, -2.488488024314874, 0.51004894012372),
            (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
            (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
            (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
            (1.875, -1.25, 0.375)]


def test_polar_express_coefficients_are_computed_and_match_the_paper():
    ours = M.polar_express_coefficients()
    for k, (o, p) in enumerate(zip(ours, PAPER_PE)):
        assert o == pytest.approx(p, rel=1e-13 if k < 6 else 1e-8), k
    assert len(M.POLAR_EXPRESS_COEFFICIENTS) == 8 and M.POLAR_EXPRESS_SAFETY == 1.01
    for k, ((a, b, c), (x, y, z)) in enumerate(zip(M.POLAR_EXPRESS_COEFFICIENTS, ours)):
        f = 1.01 if k < 7 else 1.0                                   # the safety factor: all but the last polynomial
        assert (a, b, c) == pytest.approx((x / f, y / f**3, z / f**5), rel=1e-15)


@pytest.mark.parametrize("l,u", [(0.02407327424182761, 1.0), (0.1, 1.0), (0.3, 1.7)])
def test_optimal_quintic_equioscillates(l, u):
    a, b, c = M.optimal_quintic(l, u)
    x = torch.linspace(l, u, 400001, dtype=F64)
    E = (1 - (a * x + b * x**3 + c * x**5)).abs().max().item()
    root = math.sqrt(9 * b * b - 20 * a * c)
    pts = torch.tensor([l, math.sqrt((-3 * b - root) / (10 * c)), math.sqrt((-3 * b + root) / (10 * c)), u], dtype=F64)
    e = 1 - (a * pts + b * pts**3 + c * pts**5)
    assert torch.allclose(e.abs(), torch.full_like(e, E), rtol=1e-9) and (e[:-1] * e[1:] < 0).all()
    # and it is the best: a perturbed polynomial has a larger maximum error
    for d in [(1e-3, 0, 0), (0, 1e-3, 0), (0, 0, 1e-3), (-1e-3, 1e-3, 0)]:
        a2, b2, c2 = a + d[0], b + d[1], c + d[2]
        assert (1 - (a2 * x + b2 * x**3 + c2 * x**5)).abs().max().item() > E


def test_per_step_and_newton_schulz_with_a_sequence():
    assert M.per_step(NS_COEFFICIENTS, 3) == [NS_COEFFICIENTS] * 3
    seq = [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0)]
    assert M.per_step(seq, 4) == [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0), (2.0, 0.0, 0.0), (2.0, 0.0, 0.0)]
    assert M.per_step(seq, 1) == [(1.0, 0.0, 0.0)]
    G = torch.randn(6, 4, dtype=F64)
    X = newton_schulz(G, seq, 3, safety=2.0).double()     # σ ↦ 4σ after the three steps (1, 2, 2), from G/(2‖G‖)
    torch.testing.assert_close(X, (4 * G / (2 * G.norm())).bfloat16().double(), rtol=2e-2, atol=1e-3)


def test_muon_polar_express_option():
    gen = torch.Generator().manual_seed(3)
    W0 = torch.randn(32, 8, generator=gen, dtype=F64); g = torch.randn(32, 8, generator=gen, dtype=F64)
    W = W0.clone(); W.grad = g.clone()
    Muon([W], lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False, polar_express=True, ns_steps=6).step()
    O = newton_schulz(g, M.POLAR_EXPRESS_COEFFICIENTS, 6, 1e-7, safety=1.01)
    assert torch.equal(W, W0.clone().add_(O, alpha=-0.1 * lr_ratio(None, W.shape)))   # as _apply does it
    sv_pe = torch.linalg.svdvals(O.double()); sv_j = torch.linalg.svdvals(newton_schulz(g, NS_COEFFICIENTS, 6).double())
    assert (sv_pe - 1).abs().max() < 0.02 < 0.25 < (sv_j - 1).abs().max()   # 6 steps: Polar Express is nearly orthogonal
    with pytest.raises(ValueError, match="polar_express"): Muon([W], polar_express=True, ns_coefficients=(1.5, -0.5, 0.0))
    with pytest.raises(TypeError): Muon([W], polar_express="yes")


# --- NorMuon (Li et al. 2025) ----------------------------------------------------------------------------------------
def normuon_reference(theta, grads, lr, wd, beta, beta2, eps, steps=5):
    "The paper's algorithm as written: Ô = O/(√v + ε), η̂ = 0.2 η √(mn)/‖Ô‖_F, θ ← θ − ηλθ − η̂ Ô."
    m, n = theta.shape
    Mom, v = torch.zeros_like(theta), torch.zeros(m, dtype=theta.dtype)
    for g in grads:
        Mom = beta * Mom + (1 - beta) * g
        O = newton_schulz(Mom, NS_COEFFICIENTS, steps, eps).double()
        v = beta2 * v + (1 - beta2) * (O * O).mean(dim=1)
        Oh = O / (v.sqrt() + eps)[:, None]
        theta = theta - lr * wd * theta - 0.2 * lr * math.sqrt(m * n) / Oh.norm() * Oh
    return theta, v


@pytest.mark.parametrize("shape", [(20, 7), (7, 20), (9, 9)])
def test_normuon_equals_the_paper_in_float64(shape):
    gen = torch.Generator().manual_seed(5)
    W0 = torch.randn(shape, generator=gen, dtype=F64)
    grads = [torch.randn(shape, generator=gen, dtype=F64) for _ in range(12)]
    W = W0.clone()
    opt = Muon([W], lr=0.03, weight_decay=0.05, nesterov=False, normuon=True, beta2=0.9, adjust_lr_fn="match_rms_adamw")
    for g in grads: W.grad = g.clone(); opt.step()
    want, v = normuon_reference(W0, grads, 0.03, 0.05, 0.95, 0.9, 1e-7)
    torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(opt.state[W]["second_momentum_buffer"], v, rtol=1e-12, atol=1e-16)


def test_normuon_rows_are_balanced_and_the_rms_is_kept():
    gen = torch.Generator().manual_seed(6)
    O = newton_schulz(torch.logspace(-1, 1, 48, dtype=F64)[:, None] * torch.randn(48, 24, generator=gen, dtype=F64)).double()
    v = torch.zeros(48, dtype=F64)
    On = M.neuron_normalize(O, v, 0.95, 1e-7)
    rms = On.square().mean(dim=1).sqrt()
    assert rms.max() / rms.min() < 1.001 and On.norm().item() == pytest.approx(math.sqrt(24), rel=1e-12)
    torch.testing.assert_close(v, 0.05 * O.square().mean(dim=1))
    W = torch.zeros(48, 24, dtype=F64); W.grad = torch.randn(48, 24, generator=gen, dtype=F64)
    Muon([W], lr=0.01, weight_decay=0.0, normuon=True, adjust_lr_fn="match_rms_adamw").step()
    assert W.square().mean().sqrt().item() == pytest.approx(0.2 * 0.01, rel=1e-12)


def test_normuon_state_dict_resume_batched_and_bad_options():
    gen = torch.Generator().manual_seed(7)
    ps = [torch.randn(16, 8, generator=gen, dtype=F64) for _ in range(3)]
    grads = [[torch.randn(16, 8, generator=gen, dtype=F64) for _ in ps] for _ in range(6)]
    def run(ps, gs, opt):
        for step in gs:
            for p, g in zip(ps, step): p.grad = g.clone()
            opt.step()
    a = [p.clone() for p in ps]; oa = Muon(a, lr=0.02, normuon=True, polar_express=True)
    run(a, grads, oa)
    b = [p.clone() for p in ps]; ob = Muon(b, lr=0.02, normuon=True, polar_express=True)
    run(b, grads[:3], ob)
    sd = copy.deepcopy(ob.state_dict())
    assert sd["param_groups"][0]["normuon"] is True and sd["state"][0]["second_momentum_buffer"].shape == (16,)
    ob2 = Muon(b, lr=0.02, normuon=True, polar_express=True); ob2.load_state_dict(sd)
    run(b, grads[3:], ob2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    broken = copy.deepcopy(sd); del broken["state"][0]["second_momentum_buffer"]
    with pytest.raises(ValueError, match="second_momentum_buffer"): Muon(b, lr=0.02, normuon=True).load_state_dict(broken)
    c = [p.clone() for p in ps]; oc = Muon(c, lr=0.02, normuon=True, polar_express=True, foreach=True)
    run(c, grads, oc)                                  # one batched Newton–Schulz: equal up to bfloat16 rounding
    for x, y, p in zip(a, c, ps):
        assert (x - y).norm() < 0.1 * (x - p).norm()
    with pytest.raises(ValueError, match="beta2"): Muon(b, beta2=0.9)              # beta2 without normuon
    with pytest.raises(ValueError, match="beta2"): Muon(b, normuon=True, beta2=1.5)


@needs_torch_muon
def test_defaults_are_still_torch_with_the_options_spelled_out():
    ps, qs, _, _ = run_pair(lambda ps, **kw: Muon(ps, polar_express=False, normuon=False, **kw), lr=0.02)
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_muon_with_aux_adam_takes_the_new_options():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    twin = copy.deepcopy(net)
    one = MuonWithAuxAdam.for_model(net, muon=dict(lr=0.02, normuon=True, polar_express=True))
    muon, adamw = muon_with_adamw(twin, muon=dict(normuon=True, polar_express=True))
    x = torch.randn(5, 6, dtype=F64)
    for _ in range(3):
        for m, opts in ((net, (one,)), (twin, (muon, adamw))):
            for o in opts: o.zero_grad()
            m(x).square().mean().backward()
            for o in opts: o.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters()))
    assert "second_momentum_buffer" in one.state[net[0].weight]


def test_new_options_on_bf16_conv_weights():
    gen = torch.Generator().manual_seed(8)
    W = torch.randn(8, 3, 3, 3, generator=gen).bfloat16(); W2 = W.reshape(8, -1).clone()
    a, b = Muon([W], lr=0.02, normuon=True, polar_express=True), Muon([W2], lr=0.02, normuon=True, polar_express=True)
    for _ in range(3):
        g = torch.randn(8, 3, 3, 3, generator=gen).bfloat16()
        W.grad, W2.grad = g.clone(), g.reshape(8, -1).clone(); a.step(); b.step()
    assert torch.equal(W.reshape(8, -1), W2) and torch.isfinite(W.float()).all()
    v = a.state[W]["second_momentum_buffer"]
    assert v.shape == (8,) and v.dtype == torch.bfloat16
