"""optbook.core: TensorList mirrors Tensor exactly; the Optimizer skeleton validates and keeps state right."""
import pickle

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from optbook.core import Optimizer, TensorList, check_betas, check_nonneg, check_range, default_device
from optbook import core

DT = torch.float64


def tensors(seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s, generator=g, dtype=DT) for s in [(3,), (2, 5), ()]]
    return [t.abs() + 0.5 for t in ts] if positive else ts


def args_for(name):
    "Arguments for each foreach op: tensors, lists and a scalar, like the Tensor method takes."
    other, third = tensors(1, positive=True), tensors(2, positive=True)
    return {"add": (other,), "sub": (other,), "mul": (0.5,), "div": (other,), "addcmul": (other, third),
            "addcdiv": (other, third), "lerp": (other, 0.3), "maximum": (other,), "minimum": (other,),
            "clamp_min": (0.7,), "clamp_max": (0.7,), "pow": (2.0,), "copy": (other,)}.get(name, ())


@pytest.mark.parametrize("name", core._OUT_OF_PLACE + core._IN_PLACE)
def test_tensorlist_method_equals_tensor_method(name):
    base = name.rstrip("_")
    xs = tensors(positive=base in ("sqrt", "log", "reciprocal", "pow"))
    args = args_for(base)
    per_tensor = [getattr(x.clone(), name)(*[a[i] if isinstance(a, list) else a for a in args])
                  for i, x in enumerate(xs)]
    tl = TensorList(x.clone() for x in xs)
    out = getattr(tl, name)(*[TensorList(a) if isinstance(a, list) else a for a in args])
    if name.endswith("_"):
        assert out is tl, "in-place methods return self so that chains work"
    assert all(torch.equal(a, b) for a, b in zip(per_tensor, out)), name


def test_tensorlist_operators():
    xs, ys = tensors(0), tensors(1)
    a, b = TensorList(xs), TensorList(ys)
    for got, want in [(a + b, [x + y for x, y in zip(xs, ys)]), (a - b, [x - y for x, y in zip(xs, ys)]),
                      (a * 2.0, [x * 2.0 for x in xs]), (2.0 * a, [2.0 * x for x in xs]),
                      (1.0 - a, [1.0 - x for x in xs]), (-a, [-x for x in xs]), (a / 4.0, [x / 4.0 for x in xs])]:
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    c = a.clone(); c.zero_()
    assert all(torch.equal(t, torch.zeros_like(t)) for t in c) and not torch.equal(xs[0], c[0])


def test_checks_name_the_value():
    with pytest.raises(ValueError, match=r"lr: -0\.5"): check_nonneg("lr", -0.5)
    with pytest.raises(ValueError, match="eps: nan"): check_nonneg("eps", float("nan"))
    with pytest.raises(ValueError, match="one element"): check_nonneg("lr", torch.ones(2))
    with pytest.raises(ValueError, match=r"momentum: 1\.5"): check_range("momentum", 1.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="index 0"): check_betas((-0.1, 0.9))
    with pytest.raises(ValueError, match="pair"): check_betas((0.9,))
    check_nonneg("lr", torch.tensor(0.1)); check_betas((0.0, 0.0))


class Counting(Optimizer):
    "Gradient descent that counts its updates: enough to exercise the skeleton."
    def __init__(self, params, lr=0.1, *, foreach=None, differentiable=False, fused=None):
        check_nonneg("lr", lr)
        super().__init__(params, dict(lr=lr, foreach=foreach, maximize=False, differentiable=differentiable, fused=fused))
    def init_state(self, p, state, group): state["count"] = torch.zeros((), dtype=p.dtype, device=p.device)
    def update(self, p, g, state, group, *, first):
        state["count"].add_(1.0); p.add_(g, alpha=-group["lr"])


def test_construction_errors():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty"): Counting([])
    with pytest.raises(TypeError, match="single Tensor"): Counting(w)
    with pytest.raises(ValueError, match="twice"): Counting([w, w])
    with pytest.raises(ValueError, match="more than one"): Counting([{"params": [w]}, {"params": [w]}])
    with pytest.raises(ValueError, match="int32"): Counting([torch.zeros(2, dtype=torch.int32)])
    with pytest.raises(ValueError, match="differentiable"): Counting([w], differentiable=True)
    with pytest.raises(NotImplementedError, match="fused"): Counting([w], fused=True)
    with pytest.raises(TypeError, match="not a Tensor"): Counting([w, 3.0])


def test_named_parameters_and_sparse_error():
    m = torch.nn.Linear(3, 2)
    opt = Counting(m.named_parameters())
    m(torch.ones(1, 3)).sum().backward(); opt.step()
    assert all(opt.state[p]["count"] == 1 for p in m.parameters())
    v = torch.zeros(3, requires_grad=True); v.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"): Counting([v]).step()


def test_foreach_default_is_for_loop_on_cpu_and_foreach_elsewhere():
    opt = Counting([torch.zeros(1, requires_grad=True)])
    assert opt._use_foreach(opt.param_groups[0], torch.zeros(1)) is False
    with FakeTensorMode():
        assert opt._use_foreach(opt.param_groups[0], torch.empty(1, device="cuda")) is True


def test_closure_and_pickle_roundtrip():
    w = torch.ones(3, dtype=DT, requires_grad=True)
    opt = Counting([w], lr=0.25)
    def closure():
        opt.zero_grad(); loss = (w ** 2).sum(); loss.backward(); return loss
    assert opt.step(closure).item() == 3.0
    assert torch.equal(w.detach(), torch.full((3,), 0.5, dtype=DT))
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.param_groups[0]["lr"] == 0.25 and clone.defaults == opt.defaults


def test_fake_cuda_state_on_param_device():
    with FakeTensorMode():
        ps = [torch.empty(4, 3, device="cuda", requires_grad=True), torch.empty((), device="cuda", requires_grad=True)]
        for p in ps: p.grad = torch.empty_like(p)
        for foreach in (False, True, None):
            opt = Counting(ps, foreach=foreach)
            opt.step(); opt.step()
            assert all(s.device == p.device and s.dtype == p.dtype for p in ps for s in opt.state[p].values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_paths_agree():
    ps = [torch.randn(100, 10, device="cuda", dtype=DT, requires_grad=True) for _ in range(3)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    for params, foreach in [(ps, False), (qs, True)]:
        opt = Counting(params, foreach=foreach)
        for _ in range(3):
            opt.zero_grad(); sum((p ** 3).sum() for p in params).backward(); opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_default_device_prefers_accelerators():
    assert default_device().type == ("cuda" if torch.cuda.is_available() else default_device().type)
    assert default_device().type in ("cuda", "mps", "cpu")


def test_tensorlist_offers_only_tensor_methods():
    "A rule written against TensorList must also run on a single Tensor."
    for name in core._OUT_OF_PLACE + core._IN_PLACE + ["clone"]:
        assert hasattr(torch.Tensor, name), name
