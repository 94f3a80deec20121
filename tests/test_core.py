"""optbook.core: TensorList mirrors Tensor exactly; the Optimizer skeleton validates and keeps state right."""
import io
import pickle

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from optbook.core import Optimizer, SignSGD, TensorList, check_betas, check_nonneg, check_range, default_device, off
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


def count_and_descend(p, g, count, *, eta):
    "θ ← θ − η g, counting the updates each parameter received."
    count.add_(1.0)
    p.add_(g, alpha=-eta)


class Counting(Optimizer):
    "Gradient descent that counts its updates and keeps torch's step counter: enough to exercise the skeleton."
    rule = staticmethod(count_and_descend)
    state_keys = {"count": ("count", "updates received")}
    uses_step = True
    def __init__(self, params, lr=0.1, *, foreach=None, differentiable=False, fused=None):
        check_nonneg("lr", lr)
        super().__init__(params, dict(lr=lr, foreach=foreach, maximize=False, differentiable=differentiable, fused=fused))
    def init_state(self, p, group): return {"count": torch.zeros((), dtype=p.dtype, device=p.device)}
    def hyper(self, group): return dict(eta=group["lr"])
    def update(self, p, g, s, h, *, t, first):
        assert not isinstance(t, torch.Tensor) and t >= 1
        count_and_descend(p, g, s["count"], **h)


def test_construction_errors():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty"): Counting([])
    with pytest.raises(TypeError, match="single Tensor"): Counting(w)
    with pytest.raises(ValueError, match="twice"): Counting([w, w])
    with pytest.raises(ValueError, match="more than one"): Counting([{"params": [w]}, {"params": [w]}])
    with pytest.raises(ValueError, match="int32"): Counting([torch.zeros(2, dtype=torch.int32)])
    with pytest.raises(ValueError, match="differentiable"): Counting([w], differentiable=True)
    with pytest.raises(ValueError, match="fused"): Counting([w], fused=True, foreach=True)   # (fused=True alone: tests/test_fused.py)
    with pytest.raises(TypeError, match="not a Tensor"): Counting([w, 3.0])


def test_named_parameters_and_sparse_error():
    m = torch.nn.Linear(3, 2)
    opt = Counting(m.named_parameters())
    m(torch.ones(1, 3)).sum().backward(); opt.step()
    assert all(opt.state[p]["count"] == 1 and opt.state[p]["step"] == 1 for p in m.parameters())
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
            assert all(opt.state[p]["count"].device == p.device and opt.state[p]["count"].dtype == p.dtype for p in ps)
            assert all(opt.state[p]["step"].device.type == "cpu" for p in ps)


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


# --- TensorList beyond the foreach twins -------------------------------------------------------------------------

def test_tensorlist_in_place_operators_update_the_tensors():
    "Without __isub__, `p -= x` would rebind a local name and update nothing."
    xs, ys = tensors(0), tensors(1)
    for op, fn in [("+=", torch.Tensor.add), ("-=", torch.Tensor.sub), ("*=", torch.Tensor.mul), ("/=", torch.Tensor.div)]:
        p = TensorList(x.clone() for x in xs); alias = p
        exec(f"p {op} q", {}, ns := {"p": p, "q": TensorList(ys)})
        assert ns["p"] is alias, op
        assert all(torch.equal(a, fn(x, y)) for a, x, y in zip(alias, xs, ys)), op


def test_tensorlist_other_methods_and_torch_functions_go_tensor_by_tensor():
    xs, ys = tensors(0), tensors(1)
    a, b = TensorList(xs), TensorList(ys)
    cases = [(torch.where(a > b, a, b), [torch.where(x > y, x, y) for x, y in zip(xs, ys)]),
             (torch.maximum(a, b), [torch.maximum(x, y) for x, y in zip(xs, ys)]),
             (a.where(a.gt(0), b), [x.where(x.gt(0), y) for x, y in zip(xs, ys)]),
             (a.sign().mul(b.sign()), [x.sign() * y.sign() for x, y in zip(xs, ys)]),
             (a.clamp(-0.5, 0.5), [x.clamp(-0.5, 0.5) for x in xs]),
             (2.0 / (a.abs() + 1.0), [2.0 / (x.abs() + 1.0) for x in xs]),
             (1.0 - a, [1.0 - x for x in xs])]
    for got, want in cases:
        assert isinstance(got, TensorList) and all(torch.equal(g, w) for g, w in zip(got, want))
    norms = a.norm()
    assert all(torch.equal(n, x.norm()) for n, x in zip(norms, xs))
    c = a.clone(); c.masked_fill_(c.lt(0), 0.0)
    assert all(torch.equal(t, x.clamp_min(0)) for t, x in zip(c, xs))
    with pytest.raises(AttributeError, match="no_such_method"): a.no_such_method()
    with pytest.raises(ValueError, match="different lengths"): torch.maximum(a, TensorList(ys[:2]))


def test_off_switches_terms_with_none():
    assert off(0) is None and off(0.0) is None and off(torch.tensor(0.0)) is None
    assert off(0.1) == 0.1 and isinstance(off(torch.tensor(0.5)), torch.Tensor)


# --- the skeleton's new duties -------------------------------------------------------------------------------------

def test_step_counter_follows_torch_and_counts_each_parameter():
    "state['step']: a CPU float tensor like torch.optim.Adam's; a parameter without a grad on a step is not counted."
    for foreach in (False, True):
        ps = [torch.ones(3, dtype=DT), torch.ones(2, 2, dtype=DT)]
        opt = Counting(ps, foreach=foreach)
        for k in range(5):
            ps[0].grad = torch.ones(3, dtype=DT)
            ps[1].grad = torch.ones(2, 2, dtype=DT) if k % 2 == 0 else None
            opt.step()
        assert [opt.state[p]["step"].item() for p in ps] == [5.0, 3.0]
        assert [opt.state[p]["count"].item() for p in ps] == [5.0, 3.0]
    w = torch.zeros(2, requires_grad=True); w.grad = torch.ones(2)
    adam = torch.optim.Adam([w]); adam.step()
    ours = opt.state[ps[0]]["step"]
    assert ours.dtype == adam.state[w]["step"].dtype and ours.device == adam.state[w]["step"].device
    assert Counting.state_table().splitlines()[2].strip().startswith("| `step` | $t$ |")


def test_a_none_state_entry_is_recreated_and_makes_a_first_step():
    "torch.optim.SGD accepts a momentum_buffer of None and treats the next step as a first step; so does the core."
    seen = []
    class Probe(Counting):
        def update(self, p, g, s, h, *, t, first):
            seen.append(first); super().update(p, g, s, h, t=t, first=first)
    p = torch.ones(3, dtype=DT); p.grad = torch.ones(3, dtype=DT)
    opt = Probe([p]); opt.step(); opt.step()
    sd = opt.state_dict(); sd["state"][0]["count"] = None
    opt2 = Probe([p]); opt2.load_state_dict(sd); opt2.step()
    assert seen == [True, False, True]
    assert opt2.state[p]["count"].item() == 1.0 and opt2.state[p]["step"].item() == 3.0


def shrink(p, g, prod, *, eta):
    p.add_(g * prod.to(p.dtype), alpha=-eta)
    prod.mul_(1 - eta)


class Shrink(Optimizer):
    "A rule with scalar state: a running product, like NAdam's."
    rule = staticmethod(shrink)
    state_keys = {"prod": ("prod", "running product")}
    exact_keys = ("prod",)
    def __init__(self, params, lr=0.1, *, foreach=None):
        super().__init__(params, dict(lr=lr, foreach=foreach, maximize=False, differentiable=False, fused=None))
    def init_state(self, p, group): return {"prod": torch.ones((), dtype=torch.float32)}
    def hyper(self, group): return dict(eta=group["lr"])


@pytest.mark.parametrize("foreach", [False, True])
def test_exact_scalar_state_survives_a_bf16_round_trip(foreach):
    def steps(opt, ps, n, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            for p in ps: p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            opt.step()
    a = [torch.ones(5, dtype=torch.bfloat16), torch.ones(2, dtype=torch.bfloat16)]; b = [t.clone() for t in a]
    opt_a = Shrink(a, lr=0.0123, foreach=foreach); steps(opt_a, a, 4, 1); steps(opt_a, a, 4, 2)
    opt_b = Shrink(b, lr=0.0123, foreach=foreach); steps(opt_b, b, 4, 1)
    buf = io.BytesIO(); torch.save(opt_b.state_dict(), buf); buf.seek(0)
    opt_c = Shrink(b, lr=0.0123, foreach=foreach); opt_c.load_state_dict(torch.load(buf, weights_only=True))
    steps(opt_c, b, 4, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(opt_c.state[p]["prod"].dtype == torch.float32 for p in b)
    class Casting(Shrink): exact_keys = ()          # without the exemption torch's loader casts it to bf16
    opt_d = Casting(b, lr=0.0123); opt_d.load_state_dict(opt_b.state_dict())
    assert opt_d.state[b[0]]["prod"].dtype == torch.bfloat16


def frobenius_step(p, g, *, eta):
    p.add_(g / g.norm(), alpha=-eta)


class FrobeniusGD(Optimizer):
    "θ ← θ − η·G/‖G‖_F: needs the whole matrix."
    rule = staticmethod(frobenius_step)
    per_matrix = True
    matrices_only = True
    supports_complex = False
    def __init__(self, params, lr=0.1, *, foreach=None):
        super().__init__(params, dict(lr=lr, foreach=foreach, maximize=False, differentiable=False, fused=None))
    def hyper(self, group): return dict(eta=group["lr"])


def test_per_matrix_optimizers_get_whole_matrices_one_at_a_time():
    seen = []
    class Probe(FrobeniusGD):
        def update(self, p, g, s, h, **kw):
            seen.append(type(p)); super().update(p, g, s, h, **kw)
    ws = [torch.randn(4, 3, dtype=DT), torch.randn(2, 5, dtype=DT)]
    for w in ws: w.grad = torch.randn_like(w)
    expected = [w - 0.1 * w.grad / w.grad.norm() for w in ws]
    Probe(ws, foreach=True).step()
    assert seen == [torch.Tensor, torch.Tensor]
    assert all(torch.allclose(w, e, rtol=1e-13, atol=0) for w, e in zip(ws, expected))  # rounding differs
    with pytest.raises(ValueError, match=r"matrices only"): FrobeniusGD([torch.zeros(3)])
    with pytest.raises(ValueError, match="complex"): FrobeniusGD([torch.zeros(3, 3, dtype=torch.complex64)])


def _dtensor_worker(rank, world, store_path, out_path):
    "One rank of the DTensor test: FSDP2-style row shards, updated by a whole-matrix and an elementwise optimizer."
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        gen = torch.Generator().manual_seed(0)
        full = [torch.randn(6, 4, generator=gen, dtype=DT), torch.randn(5, 3, generator=gen, dtype=DT)]
        grads = [[torch.randn(w.shape, generator=gen, dtype=DT) for w in full] for _ in range(3)]
        results = {}
        for name, make in [("frobenius", lambda ps: FrobeniusGD(ps, lr=0.1)),
                           ("signum-forloop", lambda ps: SignSGD(ps, lr=0.1, momentum=0.9, foreach=False)),
                           ("signum-foreach", lambda ps: SignSGD(ps, lr=0.1, momentum=0.9, foreach=True))]:
            ps = [torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [Shard(0)])) for w in full]
            opt = make(ps)
            for gs in grads:
                for p, g in zip(ps, gs): p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
                opt.step()
            results[name] = [p.full_tensor().detach() for p in ps]
        if rank == 0: torch.save(results, out_path)
        dist.barrier()   # neither rank tears gloo down while the other still talks: on torch 2.11 a rank once aborted (SIGABRT) at teardown
    finally:
        dist.destroy_process_group()


def test_dtensor_shards_are_updated_as_whole_matrices(tmp_path):
    "Two CPU processes (gloo), parameters as row-sharded DTensors as FSDP2 makes them: same result as unsharded."
    import torch.multiprocessing as mp
    out = tmp_path / "results.pt"
    mp.spawn(_dtensor_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    full = [torch.randn(6, 4, generator=gen, dtype=DT), torch.randn(5, 3, generator=gen, dtype=DT)]
    grads = [[torch.randn(w.shape, generator=gen, dtype=DT) for w in full] for _ in range(3)]
    for name, make in [("frobenius", lambda ps: FrobeniusGD(ps, lr=0.1)),
                       ("signum-forloop", lambda ps: SignSGD(ps, lr=0.1, momentum=0.9, foreach=False)),
                       ("signum-foreach", lambda ps: SignSGD(ps, lr=0.1, momentum=0.9, foreach=True))]:
        ps = [w.clone() for w in full]
        opt = make(ps)
        for gs in grads:
            for p, g in zip(ps, gs): p.grad = g.clone()
            opt.step()
        for a, b in zip(got[name], ps): torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    # a rule applied to each shard alone would normalize by the shard's norm: the test would notice
    shard_wise = full[0][:3] - 0.1 * grads[0][0][:3] / grads[0][0][:3].norm()
    assert not torch.allclose(shard_wise, full[0][:3] - 0.1 * grads[0][0][:3] / grads[0][0].norm())


def test_evaluate_and_params_with_grad_serve_optimizers_that_own_their_step():
    "L-BFGS-style optimizers reuse the closure and gradient handling instead of copying them."
    class OwnStep(Counting):
        @torch.no_grad()
        def step(self, closure):
            loss = self.evaluate(closure)
            for group in self.param_groups:
                for p, g in self.params_with_grad(group): p.add_(g, alpha=-group["lr"])
            return loss
    w = torch.ones(3, dtype=DT, requires_grad=True); frozen = torch.ones(2, dtype=DT, requires_grad=True)
    opt = OwnStep([w, frozen], lr=0.25)
    def closure():
        opt.zero_grad(); loss = (w ** 2).sum(); loss.backward(); return loss
    assert opt.step(closure).item() == 3.0 and torch.equal(w.detach(), torch.full((3,), 0.5, dtype=DT))
    assert frozen.grad is None and torch.equal(frozen.detach(), torch.ones(2, dtype=DT))
    w.grad = torch.ones(3, dtype=DT).to_sparse()
    with pytest.raises(RuntimeError, match="OwnStep does not support sparse"): list(opt.params_with_grad(opt.param_groups[0]))


def test_docstring_state_table_comes_from_state_keys():
    assert "| `momentum_buffer` | $m$ |" in SignSGD.__doc__ and "{state_table}" not in SignSGD.__doc__
    import optbook
    assert "| `momentum_buffer` | $m$ |" in optbook.SGD.__doc__


def test_differentiable_message_points_to_torch_only_where_torch_has_it():
    with pytest.raises(ValueError, match=r"use torch\.optim for it"): SignSGD([torch.zeros(2)], differentiable=True)
    import optbook
    with pytest.raises(ValueError, match=r"use torch\.optim\.SGD for it"): optbook.SGD([torch.zeros(2)], differentiable=True)


def test_import_optbook_loads_nothing_beyond_torch():
    "Engineers import optbook in training jobs: it adds no top-level package to what `import torch` loads."
    import subprocess, sys
    code = ("import sys; import torch; before = {m.split('.')[0] for m in sys.modules}; "
            "import optbook, optbook.{mods}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} - before))")
    import pathlib
    # viz is the book's plotting module; fused is imported only when a group asks for fused=True (it compiles the
    # rules, so it loads what torch.compile loads: sympy, ...), and `import optbook` alone must not import it
    mods = sorted(p.stem for p in pathlib.Path(optbook_dir()).glob("*.py")
                  if p.stem not in {"__init__", "_modidx", "viz", "fused"})
    alone = subprocess.run([sys.executable, "-c", "import sys, optbook; print('optbook.fused' in sys.modules)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert alone == "False", "import optbook must not import optbook.fused (torch.compile's dependencies)"
    out = subprocess.run([sys.executable, "-c", code.replace("optbook.{mods}", ", ".join(f"optbook.{m}" for m in mods))],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['optbook']", f"`import optbook` (and its optimizer, search and attack modules) also loaded {out}"


def optbook_dir():
    import optbook
    return optbook.__path__[0]


def test_long_loops_show_progress_through_core_progress(capfd):
    "anneal, evolve, pgd and cw show a tqdm bar when asked (core.progress, shared by chapters 9-11), and none when not."
    from optbook.gradfree import anneal, evolve
    from optbook.attack import pgd, cw
    sphere = lambda x: (x ** 2).sum(1)
    x0 = torch.ones(4, 2)
    net = torch.nn.Linear(3, 2)
    x, y = torch.rand(2, 3), torch.tensor([0, 1])
    runs = {"anneal": lambda on: anneal(sphere, x0, 3, schedule=1.0, step_size=0.1, progress=on),
            "evolve": lambda on: evolve(sphere, x0, 2, progress=on),
            "PGD": lambda on: pgd(net, x, y, 0.1, steps=2, progress=on),
            "C&W": lambda on: cw(net, x, y, steps=2, progress=on)}
    for desc, run in runs.items():
        run(False)
        assert desc not in "".join(capfd.readouterr()), desc
        run(True)
        assert desc in "".join(capfd.readouterr()), f"{desc}: no progress bar"


# ------------------------------------------------------------------------------------------------------------------
# Reliability: types of hyperparameters, strict loading, non-finite gradients

def test_check_real_refuses_strings_and_bools_and_says_why():
    with pytest.raises(TypeError, match=r"Invalid lr: '1e-3' is a str, not a real number.*YAML.*1\.0e-3"):
        core.check_real("lr", "1e-3")
    for check in (lambda v: check_nonneg("lr", v), lambda v: check_range("momentum", v, 0.0, 1.0)):
        with pytest.raises(TypeError, match="'0.9'"): check("0.9")
        with pytest.raises(TypeError, match="True is a bool"): check(True)
        with pytest.raises(TypeError, match="None is a NoneType"): check(None)
    with pytest.raises(TypeError, match=r"betas\[1\]|index 1"): check_betas((0.9, "0.999"))
    with pytest.raises(TypeError, match="0.9 is a float, not a pair"): check_betas(0.9)
    with pytest.raises(TypeError, match="int64"): check_nonneg("lr", torch.tensor(1))
    with pytest.raises(ValueError, match="one element"): check_nonneg("lr", torch.ones(2))
    with pytest.raises(TypeError, match="'3' is a str, not an int"): core.check_int("steps", "3")
    with pytest.raises(ValueError, match="must be an int"): core.check_int("steps", 2.0)   # a number, but not an int
    np = pytest.importorskip("numpy")
    assert core.check_real("lr", np.float32(0.5)) == 0.5 and core.check_real("lr", np.int64(2)) == 2.0
    assert core.check_real("lr", torch.tensor(0.25)) == 0.25 and core.check_real("lr", 3) == 3.0


def test_every_real_argument_is_type_checked_by_the_core_alone():
    "A subclass that checks nothing still refuses a string, a bool or a non-number in any real argument, and in a group."
    class Lax(Counting):
        def __init__(self, params, lr=0.1, betas=(0.5, 0.5), *, name="lax", foreach=None):
            super().__init__(params, lr=lr, foreach=foreach)
            self.defaults["betas"] = betas
    w = torch.zeros(2)
    assert Lax._checked_arguments == {"lr": None, "betas": 2}
    for kw, words in [(dict(lr="0.1"), ["lr", "'0.1'", "YAML"]), (dict(betas=("0.5", 0.5)), ["betas[0]", "'0.5'"]),
                      (dict(betas=0.5), ["betas", "tuple of 2"]), (dict(lr=[0.1]), ["lr", "list"])]:
        with pytest.raises(TypeError) as err: Lax([w], **kw)
        assert all(word in str(err.value) for word in words), str(err.value)
    Lax([w], name="a string where the default is one")            # only real-valued arguments are checked
    with pytest.raises(TypeError, match="lr"): Lax([{"params": [w], "lr": "1e-3"}])
    with pytest.raises(ValueError, match="tuple of 2"): Lax([{"params": [w], "betas": (0.5,)}])
    opt = Lax([w]); opt.add_param_group({"params": [torch.zeros(3)], "lr": 0.5})
    with pytest.raises(TypeError, match="betas"): opt.add_param_group({"params": [torch.zeros(3)], "betas": "0.9,0.9"})
    assert len(opt.param_groups) == 2, "the refused group was not added"
    assert inspect_signature(Lax) == ["params", "lr", "betas", "name", "foreach"], "the wrapper keeps the signature"


def inspect_signature(cls):
    import inspect
    return list(inspect.signature(cls).parameters)


def test_numpy_scalars_and_mixed_tensor_betas_are_numbers():
    "NumPy scalars become Python numbers in the groups; betas may mix a float and a tensor (torch refuses that) and mean the same."
    from optbook import Adam
    np = pytest.importorskip("numpy")
    opt = Counting([torch.zeros(2)], lr=np.float32(0.5))
    assert type(opt.param_groups[0]["lr"]) is float and opt.param_groups[0]["lr"] == 0.5
    paths = []
    for betas in [(0.9, 0.999), (torch.tensor(0.9, dtype=DT), 0.999), (np.float64(0.9), torch.tensor(0.999, dtype=DT))]:
        p = torch.ones(3, dtype=DT); opt = Adam([p], lr=0.1, betas=betas)
        for k in range(5):
            p.grad = torch.full_like(p, (-1.0) ** k * (k + 1)); opt.step()
        paths.append(p.clone())
    assert all(torch.equal(paths[0], q) for q in paths[1:])


def test_strict_load_state_dict_refuses_what_does_not_fit_and_changes_nothing():
    from optbook import SGD, Adam, Lion
    def trained(cls, shapes=((4, 3), (5,)), dtype=DT, **kw):
        ps = [torch.ones(s, dtype=dtype) for s in shapes]
        opt = cls(ps, **kw)
        for _ in range(2):
            for p in ps: p.grad = torch.ones_like(p)
            opt.step()
        return opt
    adam = trained(Adam, lr=0.1)
    before = pickle.dumps(adam.state_dict())
    cases = [
        (trained(Adam, lr=0.1, amsgrad=True).state_dict(), None),        # fits: its groups carry amsgrad=True along
        (trained(Lion, lr=0.1).state_dict(), r"lacks Adam's hyperparameters \['eps'\]"),
        (trained(SGD, lr=0.1, momentum=0.9).state_dict(), r"lacks Adam's hyperparameters \['betas', 'eps'\]"),
        (trained(Adam, shapes=((4, 3),), lr=0.1).state_dict(), "1 parameters"),
        (trained(Adam, shapes=((3, 4), (5,)), lr=0.1).state_dict(), r"parameter 0 has shape \(4, 3\), but its saved state "
                                                                     r"'exp_avg' has shape \(3, 4\), where Adam expects \(4, 3\)"),
        (trained(Adam, dtype=torch.complex128, lr=0.1).state_dict(), "complex"),
    ]
    sd = trained(Adam, lr=0.1).state_dict(); sd["state"][7] = sd["state"][0]
    cases.append((sd, "parameter 7, which none"))
    sd = trained(Adam, lr=0.1).state_dict(); del sd["state"][1]["exp_avg_sq"]
    cases.append((sd, r"lacks \['exp_avg_sq'\]"))
    for bad, words in cases[1:]:
        with pytest.raises(ValueError, match=words): adam.load_state_dict(bad)
        assert pickle.dumps(adam.state_dict()) == before, f"a refused load changed the optimizer ({words})"
    ams = Adam([torch.ones(4, 3, dtype=DT), torch.ones(5, dtype=DT)], lr=0.1); ams.load_state_dict(cases[0][0])
    assert ams.param_groups[0]["amsgrad"] is True
    sd = trained(Adam, lr=0.1, amsgrad=True).state_dict(); sd["param_groups"][0]["amsgrad"] = False
    with pytest.raises(ValueError, match=r"has \['max_exp_avg_sq'\], which Adam does not keep"): adam.load_state_dict(sd)
    sd = trained(Adam, lr=0.1).state_dict(); sd["param_groups"][0]["lr"] = "1e-3"
    with pytest.raises(TypeError, match="parameter group 0: Invalid lr: '1e-3'"): adam.load_state_dict(sd)
    assert pickle.dumps(adam.state_dict()) == before


def test_strict_load_state_dict_accepts_what_torch_accepts():
    "A scheduler's keys in the groups, float32 state into a bfloat16 model, a None buffer, torch's own state_dict."
    from optbook import SGD, Adam
    p = torch.ones(3, dtype=DT); p.grad = torch.ones(3, dtype=DT)
    opt = Adam([p], lr=0.1); torch.optim.lr_scheduler.StepLR(opt, 2); opt.step()
    sd = opt.state_dict(); assert "initial_lr" in sd["param_groups"][0]
    Adam([torch.ones(3, dtype=DT)], lr=0.1).load_state_dict(sd)
    b = torch.ones(3, dtype=torch.bfloat16)
    Adam([b], lr=0.1).load_state_dict(opt.state_dict())
    q = torch.ones(3, dtype=DT); q.grad = torch.ones(3, dtype=DT)
    ref = torch.optim.SGD([q], lr=0.1, momentum=0.9); ref.step()
    sd = ref.state_dict(); sd["state"][0]["momentum_buffer"] = None
    SGD([torch.ones(3, dtype=DT)], lr=0.1, momentum=0.9).load_state_dict(sd)


def test_nan_sign_keeps_nonfinite_values_visible():
    x = torch.tensor([1.5, -2.0, 0.0, -0.0, 1e-300, float("nan"), float("inf"), -float("inf")], dtype=DT)
    want = torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, float("nan"), float("nan"), float("nan")], dtype=DT)
    assert torch.sign(x)[5] == 0, "torch.sign(nan) is 0: the reason for nan_sign"
    torch.testing.assert_close(core.nan_sign(x), want, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(core.nan_sign(x[:5]), torch.sign(x[:5])), "finite values: torch.sign exactly"
    lst = core.nan_sign(TensorList([x, x[:3]]))
    torch.testing.assert_close(lst[0], want, equal_nan=True, rtol=0, atol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(core.nan_sign, fullgraph=True)(x.clone())
        compiled_copy = torch.compile(core.nan_sign, fullgraph=True)(x.clone(), x.clone())
    torch.testing.assert_close(compiled, want, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(compiled_copy, want, equal_nan=True, rtol=0, atol=0)
    # with a copy of x: the sign in x's own memory (no temporary), NaN read from the copy
    u = x.clone()
    got = core.nan_sign(u, copy=x.clone())
    assert got.data_ptr() == u.data_ptr()
    torch.testing.assert_close(u, want, equal_nan=True, rtol=0, atol=0)
    us = TensorList([x.clone(), x[:3].clone()])
    core.nan_sign(us, copy=TensorList([x, x[:3]]))
    torch.testing.assert_close(us[0], want, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(us[1], want[:3], equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_signsgd_makes_a_nan_gradient_visible(foreach):
    p = torch.zeros(4, dtype=DT); p.grad = torch.tensor([1.0, float("nan"), -1.0, float("inf")], dtype=DT)
    SignSGD([p], lr=0.1, momentum=0.9, foreach=foreach).step()
    assert p[0] == -0.1 and p[2] == 0.1 and p[1].isnan() and p[3].isnan()


def test_flags_must_be_bools():
    "A bool-default argument refuses the truthy string 'false' (at construction, in a group, at step); NumPy's bool is a bool."
    np = pytest.importorskip("numpy")
    w = torch.zeros(2)
    with pytest.raises(TypeError, match=r"maximize: 'false' is a str, not a bool.*unquoted"): SignSGD([w], maximize="false")
    with pytest.raises(TypeError, match="maximize"): SignSGD([{"params": [w], "maximize": 0}])
    opt = SignSGD([w], maximize=np.bool_(True))
    assert opt.param_groups[0]["maximize"] is True
    opt.param_groups[0]["maximize"] = "no"; w.grad = torch.ones(2)
    with pytest.raises(TypeError, match="maximize"): opt.step()


def test_a_none_entry_that_the_settings_do_not_create_counts_as_absent():
    "torch < 2.2 saves SGD's `momentum_buffer: None` even without momentum: such a state_dict still loads."
    from optbook import SGD
    p = torch.ones(3, dtype=DT)
    sd = {"state": {0: {"momentum_buffer": None}},
          "param_groups": [dict(SGD([torch.ones(1)], lr=0.1).param_groups[0], params=[0])]}
    opt = SGD([p], lr=0.1); opt.load_state_dict(sd)
    p.grad = torch.ones(3, dtype=DT); opt.step()
    assert torch.equal(p, torch.full((3,), 0.9, dtype=DT))
    sd["state"][0]["momentum_buffer"] = torch.zeros(3, dtype=DT)       # a real buffer is not SGD's without momentum
    with pytest.raises(ValueError, match="momentum_buffer"): SGD([p], lr=0.1).load_state_dict(sd)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_strict_loading_and_nan_sign_on_cuda():
    "On a real GPU: strict loading of CUDA state (into CUDA and CPU models), its refusal, and nan_sign eager, foreach, compiled."
    from optbook import Adam
    def trained(shapes, device):
        ps = [torch.ones(s, device=device) for s in shapes]
        opt = Adam(ps, lr=0.1)
        for _ in range(2):
            for p in ps: p.grad = torch.ones_like(p)
            opt.step()
        return opt
    sd = trained([(4, 3), (5,)], "cuda").state_dict()
    for device in ("cuda", "cpu"):
        opt = Adam([torch.ones(4, 3, device=device), torch.ones(5, device=device)], lr=0.1); opt.load_state_dict(sd)
        assert all(s["exp_avg"].device.type == device for s in opt.state.values())
    opt = Adam([torch.ones(3, 4, device="cuda"), torch.ones(5, device="cuda")], lr=0.1)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(3, 4\)"): opt.load_state_dict(sd)
    assert not opt.state
    x = torch.tensor([2.0, -3.0, 0.0, float("nan"), float("inf")], device="cuda")
    want = torch.tensor([1.0, -1.0, 0.0, float("nan"), float("nan")], device="cuda")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for got in (core.nan_sign(x), core.nan_sign(TensorList([x]))[0], torch.compile(core.nan_sign, fullgraph=True)(x)):
            torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    p = torch.zeros(4, device="cuda"); p.grad = torch.tensor([1.0, float("nan"), -1.0, 2.0], device="cuda")
    SignSGD([p], lr=0.1, momentum=0.9).step()                          # foreach by default on CUDA
    assert p[1].isnan() and p[0].item() == pytest.approx(-0.1)
