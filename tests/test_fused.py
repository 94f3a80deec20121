"""optbook.fused (appendix 94_perf): the fused path made from each chapter's one rule.

- equal to the reference (for-loop) path for all 11 elementwise optimizers: float64 tight (a formula wrong by 1e-9 fails),
  float32 for a few, under a changing learning rate, with parameters of distinct shapes (a 0-dim one included);
- SGD, Adam, AdamW and Adagrad run torch's own fused kernels (equal to the rule in float64: the same tests); the others
  a compiled rule, whose compilations are counted with a counting backend: one over 100 NAdam steps whose lr, betas and
  weight decay follow schedules; one for a Lion model of 50 distinct shapes (9 calls of 6, the last filled up), none
  for another 50 shapes; a compiled call holds at most `CALL_OPS` parameter-sized operations (counted in the graph
  aot_autograd hands the compiler), so long rules (Rprop) get fewer parameters per call than `CHUNK`;
- after the call that compiles, calls run Inductor's graph without dynamo (`fused._Direct`), equal to the reference;
  a parameter whose state is laid out otherwise takes the for-loop path, a state of another dtype or length goes
  through dynamo (a wrong length raises), and so does a call under a torch function mode; channels-last parameters
  are fused and called directly; once a step has been all direct calls, later steps follow its plan (`fused._Plan`)
  while it fits, and take the full path, equal to the reference, after each change it must notice; a plan holds
  no memory of what it no longer fits;
- Inductor computes each scalar of a rule once per call (`hoist_scalars`): no pow is left in NAdam's loops over the
  elements, where without the pass there are some;
- torch.amp.GradScaler: a step with an inf gradient is skipped and leaves parameters and state untouched;
- bfloat16 parameters; FakeTensorMode "cuda" (torch's kernel runs; a compiled rule runs eagerly there, see the test);
- on a real GPU (skipped without one): equal to the reference there;
- optimizers whose update is not elementwise (Muon, Shampoo, L-BFGS) are refused;
- a whole training step under torch.compile, with fused=True, gives the eager iterates;
- one step's temporary memory (the CPU allocator's peak, `step_peak_bytes`): optbook's for-loop and foreach paths hold
  no more than torch.optim's, the fused path no more than torch's fused kernel, or a few scalars where torch has none.
"""
import contextlib
import math
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import optbook
from optbook import fused

pytestmark = [pytest.mark.filterwarnings("error"),
              # torch 2.6's false alarm at a torch.compile after the first of a process (see tests/test_registry.py): the
              # fused path's backend hides it, but the counting backends here call Inductor without that backend
              pytest.mark.filterwarnings("ignore:Skipping serialization of skipfiles_inline_module_allowlist:UserWarning")]
F64 = torch.float64
SHAPES = [(3, 4), (5,), (2, 3, 4), (), (1, 9), (1,)]   # 0-dim and 1-element: the for-loop path

# every elementwise optimizer, with the options that switch on most of its terms
SETTINGS = {
    "SGD": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    "SignSGD": dict(lr=1e-2, momentum=0.9, weight_decay=0.1),
    "Adagrad": dict(lr=0.1, lr_decay=0.1, weight_decay=0.1),
    "RMSprop": dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1),
    "Adadelta": dict(lr=1.0, weight_decay=0.1),
    "Adam": dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "Adamax": dict(lr=1e-2, weight_decay=0.1),
    "NAdam": dict(lr=1e-2, weight_decay=0.1),
    "Rprop": dict(lr=1e-2),
    "Lion": dict(lr=1e-2, weight_decay=0.1),
}


@pytest.fixture(autouse=True, scope="module")
def _quiet_inductor():
    with warnings.catch_warnings():   # Inductor imports torch.utils.mkldnn, whose class body warns of a torch.jit deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.utils.mkldnn  # noqa: F401
    yield


def params(shapes=SHAPES, dtype=F64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes]


def run_pair(cls, kw, steps=6, dtype=F64, device="cpu", shapes=SHAPES, hyper=None, eta_factor=1.0):
    "(fused parameters, reference parameters) after `steps` steps with the same gradients and a cosine learning rate."
    a = params(shapes, dtype, device); b = [p.clone() for p in a]
    fo, ro = cls(a, **kw), cls(b, **kw)
    gen = torch.Generator().manual_seed(1)
    for k in range(steps):
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype).to(device); q.grad = p.grad.clone()
        lr = kw["lr"] * 0.5 * (1 + math.cos(math.pi * k / steps))
        fo.param_groups[0]["lr"] = lr * eta_factor; ro.param_groups[0]["lr"] = lr
        fused.step(fo); ro.step()
    return a, b, fo, ro


@pytest.mark.parametrize("name", list(SETTINGS))
def test_fused_equals_reference_float64(name):
    a, b, fo, ro = run_pair(getattr(optbook, name), SETTINGS[name])
    for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
    for p, q in zip(a, b):                         # the state too, key by key (torch's keys)
        for k, v in ro.state[q].items():
            torch.testing.assert_close(torch.as_tensor(fo.state[p][k]), torch.as_tensor(v), rtol=1e-12, atol=1e-15)


def test_the_tolerance_bites():
    "A learning rate wrong by one part in 1e9 on the fused side fails the float64 comparison above."
    a, b, *_ = run_pair(optbook.Adam, SETTINGS["Adam"], eta_factor=1 + 1e-9)
    with pytest.raises(AssertionError):
        for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["Adam", "NAdam", "Rprop", "Lion"])
def test_fused_equals_reference_float32(name):
    a, b, *_ = run_pair(getattr(optbook, name), SETTINGS[name], dtype=torch.float32)
    for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["NAdam", "Rprop"])   # NAdam: a scalar state (μ product) among the scratch tensors
def test_filled_up_calls_equal_reference(name):
    "17 parameters: 4 calls of 5 (NAdam) or 5 of 4 (Rprop), the last filled up with scratch tensors; every real parameter and its state as on the for-loop path."
    assert fused.CHUNK == 8 and [fused._call_size(n) for n in (1, 8, 9, 17, 50, 300)] == [1, 8, 5, 6, 8, 8]
    assert [fused._call_size(n, 5) for n in (17, 50)] == [5, 5] and [fused._call_size(n, 4) for n in (17, 50)] == [4, 4]
    shapes = [(3 + i,) for i in range(17)]
    a, b, fo, ro = run_pair(getattr(optbook, name), SETTINGS[name], shapes=shapes)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
        for k, v in ro.state[q].items():
            torch.testing.assert_close(torch.as_tensor(fo.state[p][k]), torch.as_tensor(v), rtol=1e-12, atol=1e-15)
    assert any(len(pool) > 0 for pool in fused._spare.values())   # the scratch tensors were used


def _cpu_code(name, hoist=True, threads=True):
    """The C++ source Inductor writes for `name`'s fused kernel over two small parameters (40 and 51 elements), with or
    without `hoist_scalars`, with or without `cpp.dynamic_threads`."""
    from torch._inductor.utils import run_and_get_code
    fused.reset()
    saved = fused._inductor_options
    def options():
        opts = dict(saved())
        if not hoist: opts.pop("post_grad_custom_post_pass", None)
        if not threads: opts.pop("cpp.dynamic_threads")
        return opts
    fused._inductor_options = options
    try:
        with torch._inductor.config.patch(fx_graph_cache=False):   # compile here, so that the code is written here
            _, code = run_and_get_code(lambda: run_pair(getattr(optbook, name), SETTINGS[name], steps=3,
                                                        dtype=torch.float32, shapes=[(40,), (3, 17)]))
    finally:
        fused._inductor_options = saved
        fused.reset()
    return "\n".join(code)


def _pow_in_loops(code: str) -> int:
    "How many pow calls sit in the body of a loop over a parameter's elements (a loop whose bound is a symbolic length ks…)."
    import re
    found = 0
    for m in re.finditer(r"for\(int64_t x0=[^;]*; x0<static_cast<int64_t>\(ks[^\n]*\)\s*\{", code):
        depth, i = 1, m.end()
        while depth:                       # the body: up to the brace that closes the loop's
            depth += {"{": 1, "}": -1}.get(code[i], 0); i += 1
        found += code[m.end():i].count("pow(")
    return found


def test_scalars_are_hoisted_out_of_the_loops():
    """NAdam's schedule (ω_t, ω_{t+1}, 1 − β₂ᵗ: three powers per parameter) is computed once per call, not per element.

    Without `hoist_scalars` Inductor puts the powers inside the loops over the elements (the control: the check can
    fail); with it, no pow is left there, and the fused step still equals the reference (the float64 test above)."""
    assert _pow_in_loops(_cpu_code("NAdam", hoist=False)) > 0
    fused.hoisted.clear()
    assert _pow_in_loops(_cpu_code("NAdam", hoist=True)) == 0
    assert fused.hoisted and max(fused.hoisted) >= 3


def _loops(code: str) -> list:
    "For each loop over a parameter's elements (bound ks…), whether an OpenMP `#pragma omp for` splits it over the threads."
    import re
    return [code[:m.start()].rstrip().endswith("#pragma omp for")
            for m in re.finditer(r"for\(int64_t x0=[^;]*; x0<static_cast<int64_t>\(ks", code)]


def test_loops_are_parallel_whatever_the_first_lengths():
    """A kernel compiled on a batch of small parameters still splits every parameter's loop over the threads.

    Inductor decides from the compiling call's lengths; below 512 elements per thread it writes a serial loop (the
    control), and the kernel would then serve later batches of big matrices with one thread."""
    assert not any(_loops(_cpu_code("RMSprop", threads=False)))
    loops = _loops(_cpu_code("RMSprop"))
    assert len(loops) >= 2 and all(loops)


def test_copies_of_a_scalar_are_merged():
    "One node per distinct scalar: the batch's copies of 1 − βᵗ (one per parameter) become one, parameter-sized ops untouched."
    from torch.fx.experimental.proxy_tensor import make_fx
    def f(x, y, b, t):
        return x * (1 - b ** t), y * (1 - b ** t), x * (1 - b ** (t + 1))
    g = make_fx(f)(torch.randn(5), torch.randn(7), torch.tensor(0.9), torch.tensor(3.0))
    ops = lambda: [n.target for n in g.graph.nodes if n.op == "call_function"]
    pows, muls = ops().count(torch.ops.aten.pow.Tensor_Tensor), ops().count(torch.ops.aten.mul.Tensor)
    assert fused._merge_scalars(g.graph) == 2            # the second 1 - b**t: its pow and its rsub
    assert ops().count(torch.ops.aten.pow.Tensor_Tensor) == pows - 1 == 2 and ops().count(torch.ops.aten.mul.Tensor) == muls
    g.recompile()
    x, y, b, t = torch.randn(5), torch.randn(7), torch.tensor(0.9), torch.tensor(3.0)
    for u, v in zip(g(x, y, b, t), f(x, y, b, t)): torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_no_recompiles_over_100_scheduled_steps():
    "lr (warm-up then cosine), betas and weight decay change at every step: one compilation in all (NAdam: a compiled rule)."
    cnt = CompileCounterWithBackend("inductor")
    fused.reset(backend=cnt)
    try:
        ps = params(dtype=torch.float32)
        opt = optbook.NAdam(ps, lr=1e-3, weight_decay=0.1)
        for k in range(100):
            for p in ps: p.grad = torch.randn_like(p)
            g = opt.param_groups[0]
            g["lr"] = 1e-3 * min(1.0, (k + 1) / 10) * 0.5 * (1 + math.cos(math.pi * k / 100))
            g["betas"] = (0.9 - 0.001 * k, 0.999 - 1e-4 * k)
            g["weight_decay"] = 0.1 + 0.001 * k
            fused.step(opt)
        assert cnt.frame_count == 1, f"{cnt.frame_count} compilations over 100 scheduled steps"
        assert fused.warmup["NAdam"] > 0
    finally: fused.reset(backend="inductor")


def test_compilations_do_not_grow_with_shapes():
    "50 distinct shapes: 9 calls of 6 (the last filled up with 4 scratch tensors), so one compilation; another 50 shapes compile nothing."
    cnt = CompileCounterWithBackend("inductor")
    fused.reset(backend=cnt)
    try:
        for seed, base in ((0, 10), (1, 200)):
            shapes = [(base + 3 * i, 1 + i % 3) for i in range(50)]
            ps = params(shapes, torch.float32, seed=seed)
            opt = optbook.Lion(ps, lr=1e-3)
            for _ in range(3):
                for p in ps: p.grad = torch.randn_like(p)
                fused.step(opt)
            assert cnt.frame_count == 1, f"{cnt.frame_count} compilations after a model of 50 shapes (seed {seed})"
    finally: fused.reset(backend="inductor")



def test_calls_hold_at_most_call_ops_operations():
    """Each compiled call's graph, as aot_autograd hands it to the compiler, has at most `CALL_OPS` operations on
    parameter-sized tensors (the compile time grows with them); the budget makes Rprop's calls shorter than `CHUNK`
    (8 of its parameters would be some 170), and leaves plain RMSprop's at `CHUNK`."""
    from torch._dynamo.backends.common import aot_autograd
    from torch.fx.experimental.symbolic_shapes import has_free_symbols
    graphs = []
    def keep(gm, example_inputs):
        graphs.append(gm); return gm.forward
    def parameter_sized(node):
        v = node.meta.get("val")
        return node.op == "call_function" and isinstance(v, torch.Tensor) and has_free_symbols(v.numel())
    sizes = {}
    try:
        for name in ("RMSprop", "Adadelta", "NAdam", "Rprop"):   # short and long rules; NAdam has a scalar state
            fused.reset(backend=aot_autograd(fw_compiler=keep)); graphs.clear()
            ps = params([(40 + 7 * i,) for i in range(50)], torch.float32)
            opt = getattr(optbook, name)(ps, **fused.BENCH_SPECS[name][0])   # the benchmark's settings
            for _ in range(3):
                for p in ps: p.grad = torch.randn_like(p)
                fused.step(opt)
            assert len(graphs) == 1, name
            ops = sum(map(parameter_sized, graphs[0].graph.nodes))
            k = next(v for key, v in fused._ops.items() if key[0] is type(opt))
            per_call = fused._per_call(k)
            assert ops <= fused.CALL_OPS, f"{name}: {ops} operations in one call"
            sizes[name] = (per_call, ops)
    finally: fused.reset(backend="inductor")
    (rprop, rprop_ops), (rmsprop, _) = sizes["Rprop"], sizes["RMSprop"]
    assert rprop < fused.CHUNK and rprop_ops / rprop * fused.CHUNK > fused.CALL_OPS and rmsprop == fused.CHUNK, sizes

@pytest.mark.parametrize("name", ["Adam", "RMSprop"])   # torch's fused kernel; a compiled rule
def test_grad_scaler_skips_inf_steps_and_leaves_state_untouched(name):
    cls = getattr(optbook, name)
    ps = params(dtype=torch.float32); ref = [p.clone() for p in ps]
    opt, ropt = cls(ps, lr=1e-2), cls(ref, lr=1e-2)
    scaler, rscaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8), torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    class Fused:          # the scaler calls .step(); the fused path is optbook.fused.step
        def __init__(self, opt): self.opt = opt; self.param_groups = opt.param_groups; self.state = opt.state
        def step(self, *a, **k): return fused.step(self.opt)
        def __getattr__(self, name): return getattr(self.opt, name)
    gen = torch.Generator().manual_seed(2)
    for k in range(5):
        scaler.scale(torch.ones(())); rscaler.scale(torch.ones(()))   # as scaling a loss would: the scale exists
        for p, q in zip(ps, ref):
            g = torch.randn(p.shape, generator=gen) * scaler.get_scale()
            if k == 3: g.view(-1)[0] = float("inf")
            p.grad = g; q.grad = g.clone()
        before = ([p.clone() for p in ps], {id(p): {kk: torch.as_tensor(v).clone() for kk, v in opt.state[p].items()} for p in ps})
        scaler.step(Fused(opt)); scaler.update()
        rscaler.step(ropt); rscaler.update()
        if k == 3:
            assert all(torch.equal(p, b) for p, b in zip(ps, before[0])), "an inf step moved the parameters"
            for p in ps:
                for kk, v in opt.state[p].items(): assert torch.equal(torch.as_tensor(v), before[1][id(p)][kk]), kk
    assert scaler.get_scale() == rscaler.get_scale() < 2.0 ** 8
    for p, q in zip(ps, ref): torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Lion"])
def test_bfloat16(name):
    "bf16 parameters and state: the fused path follows the reference in bf16; both drift from a float32 run by the same amount."
    cls = getattr(optbook, name)
    gen0 = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen0).bfloat16() for s in [(30, 40), (500,), (20, 30)]]
    runs = {}
    for path, dtype in (("fused", torch.bfloat16), ("reference", torch.bfloat16), ("float32", torch.float32)):
        ps = [p.to(dtype) for p in start]
        opt = cls(ps, lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        for k in range(20):
            for p in ps: p.grad = torch.randn(p.shape, generator=gen).bfloat16().to(dtype)
            if path == "fused": fused.step(opt)
            else: opt.step()
        runs[path] = ps
        if path == "fused":
            assert all(v.dtype == torch.bfloat16 for p in ps for k, v in opt.state[p].items() if k != "step")
    drift = lambda run: sum((p.float() - r).abs().sum().item() for p, r in zip(runs[run], runs["float32"]))
    for p, q in zip(runs["fused"], runs["reference"]):
        assert p.dtype == torch.bfloat16
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-2)
    assert drift("fused") <= 1.01 * drift("reference") + 1e-3, (drift("fused"), drift("reference"))


@pytest.mark.parametrize("name", ["Adam", "Lion", "NAdam"])   # NAdam: step counters counted outside the kernel off the CPU
def test_fake_cuda(name):
    "Under FakeTensorMode with 'cuda' tensors (no GPU needed): the fused step runs (compiled rules trace), the state follows the device."
    from torch._subclasses.fake_tensor import FakeTensorMode
    fused.reset(backend="aot_eager")
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            ps = [torch.empty(s, device="cuda") for s in [(3, 4), (5,), (7,)]]
            opt = getattr(optbook, name)(ps, lr=1e-3, weight_decay=0.1)
            # Adam runs torch's fused kernel (fake kernels exist); dynamo cannot trace inside an outer FakeTensorMode on a
            # CPU-only torch, so a compiled rule runs its function eagerly here (the real-GPU test below compiles it)
            stance = torch.compiler.set_stance("force_eager") if name != "Adam" else contextlib.nullcontext()
            with stance:
                for _ in range(2):
                    for p in ps: p.grad = torch.empty_like(p)
                    fused.step(opt)
            for p in ps:
                assert opt.state[p]["exp_avg"].device.type == "cuda"
                if name != "Lion": assert opt.state[p]["step"].device.type == "cpu" and int(opt.state[p]["step"]) == 2
    finally: fused.reset(backend="inductor")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(SETTINGS))
def test_fused_equals_reference_cuda(name):
    a, b, *_ = run_pair(getattr(optbook, name), SETTINGS[name], device="cuda")
    for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    a, b, *_ = run_pair(getattr(optbook, name), SETTINGS[name], dtype=torch.float32, device="cuda")
    for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_not_elementwise_is_refused():
    for opt in (optbook.Muon([torch.zeros(3, 3)]), optbook.LBFGS([torch.zeros(3)])):
        assert not fused.fusable(opt)
        with pytest.raises(ValueError, match="no fused path"): fused.step(opt)


def test_whole_training_step_compiled():
    "torch.compile of a training step that calls opt.step() with fused=True: the same parameters as the eager step."
    X, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
    out = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = optbook.Lion(m.parameters(), lr=1e-3, fused=True)
        def train_step():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(m(X), y)
            loss.backward()
            opt.step()
            return loss
        f = torch.compile(train_step) if mode == "compiled" else train_step
        with warnings.catch_warnings():    # torch's own profiling wrapper of Optimizer.step warns under dynamo
            warnings.simplefilter("ignore")
            for _ in range(4): f()
        out[mode] = [p.detach().clone() for p in m.parameters()]
    for a, b in zip(out["eager"], out["compiled"]): torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_run_bench_rows_and_csv(tmp_path, monkeypatch):
    """The benchmark machinery end to end on a tiny problem: every implementation timed, roofline and state bytes filled,
    the bandwidth probed once per round of each optimizer (its median divides the roofline), CSV round trip."""
    probes, run = [], fused.Bandwidth.run
    monkeypatch.setattr(fused.Bandwidth, "run", lambda self, repeats: (probes.append(self), run(self, repeats)))
    rows = fused.run_bench(("SGD", "Adagrad"), n_params=20_000, n_tensors=4, rounds=2, repeats=1, warm=2, compile_torch=False,
                           keep_heap=False)   # this test process keeps glibc's defaults (test_steady_heap_keeps_freed_memory)
    assert len(probes) == 2 * 2
    for name in ("SGD", "Adagrad"):
        mine = [r for r in rows if r["optimizer"] == name]
        (bw,) = {r["bandwidth_gbs"] for r in mine}
        assert bw > 0 and all(abs(r["roofline_ms"] - 1e3 * r["bytes_per_param"] * r["params"] / (bw * 1e9)) < 0.01 * r["roofline_ms"] for r in mine)
    impls = {(r["optimizer"], r["impl"]) for r in rows}
    for name in ("SGD", "Adagrad"):
        for impl in ("optbook for-loop", "optbook foreach", "optbook fused", "torch for-loop", "torch foreach", "torch fused"):
            assert (name, impl) in impls
    assert all(r["ms"] > 0 and r["roofline_ms"] > 0 and r["min_state_bytes"] == 4 and abs(r["state_bytes"] - 4) < 0.01 for r in rows)
    assert {r["heap"] for r in rows} == {"default"}
    fused.write_csv(rows, tmp_path / "b.csv")
    back = fused.read_csv(tmp_path / "b.csv")
    assert [r["impl"] for r in back] == [r["impl"] for r in rows] and back[0]["ms"] == rows[0]["ms"]


_HEAP_PROBE = """
import resource, sys, torch
from optbook import fused
fused.inductor_startup = lambda device: 0.0          # not what this checks (a cold compile takes seconds)
rows = fused.run_bench(("SGD",), n_params=20_000, n_tensors=2, rounds=1, repeats=1, warm=1, compile_torch=False,
                       only=("torch for-loop",), keep_heap=sys.argv[1] == "1")
ps = [torch.randn(400_000 + 1000 * i) for i in range(20)]     # 32 MB in 20 tensors, like a foreach step's temporaries
faults = []
for _ in range(6):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    roots = torch._foreach_sqrt(ps); scaled = torch._foreach_div(roots, 2.0); del roots, scaled
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(rows[0]["heap"], max(faults[2:]), min(faults[2:]))
"""

def test_steady_heap_keeps_freed_memory(tmp_path):
    """`run_bench` keeps freed host memory in its process (`steady_heap`): the temporaries of a foreach step, made
    again after they are freed, take no new pages. With glibc's defaults (`keep_heap=False`) the same loop faults
    about 16,000 pages (64 MB) every time, which is what made the benchmark's foreach rows depend on the order in which
    implementations were built. Each case runs in a process of its own: the setting lasts for the process."""
    import platform, subprocess, sys
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc": pytest.skip("steady_heap acts on glibc only")
    script = tmp_path / "probe.py"; script.write_text(_HEAP_PROBE)
    def probe(keep):
        out = subprocess.run([sys.executable, str(script), keep], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        heap, most, least = out.stdout.split()[-3:]
        return heap, int(most), int(least)
    heap, most, _ = probe("1")
    assert heap == "kept" and most < 100, (heap, most)
    heap, _, least = probe("0")
    assert heap == "default" and least > 10_000, (heap, least)


def test_step_peak_bytes_counts_what_lives_at_once():
    """`step_peak_bytes` on the CPU: the peak of the allocator's record, not the sum of what was allocated. √x then an
    out-of-place division holds two lists of temporaries at once, an in-place division one; a compiled function's
    output, allocated inside Inductor's generated code, is counted too."""
    xs = [torch.rand(10_000 + 100 * i) for i in range(4)]
    n = sum(x.numel() for x in xs)
    two = fused.step_peak_bytes(lambda: torch._foreach_div(torch._foreach_sqrt(xs), 2.0))
    one = fused.step_peak_bytes(lambda: torch._foreach_div_(torch._foreach_sqrt(xs), 2.0))
    assert abs(two - 8 * n) < 1024 and abs(one - 4 * n) < 1024, (two / n, one / n)
    f = torch.compile(lambda x: x * 2.0 + 1.0)
    f(xs[0])
    assert abs(fused.step_peak_bytes(lambda: f(xs[0])) - 4 * xs[0].numel()) < 1024
    assert fused.step_peak_bytes(lambda: xs[0].mul_(1.0)) < 1024


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                       reason="needs a CUDA device"))])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_no_path_holds_more_temporaries_than_torchs(name, device):
    """One step's temporary memory (`fused.step_peak_bytes`, after two steps of warm-up), in float64 with the options of
    the tests above: optbook's for-loop and foreach paths hold no more than torch.optim's same paths, and the fused path
    no more than torch's fused kernel, or, where torch has none, than a few scalars (a single-pass step needs no
    parameter-sized temporary). Adam's √v̂ written `v.sqrt() / c` held two foreach temporaries at once, 16 bytes per
    parameter here against torch's 8: that fails this test. The slack, 1 KiB, is a few 0-dim tensors (step counts)."""
    cls, kw = getattr(optbook, name), SETTINGS[name]
    base = params([(5_000 + 100 * i,) for i in range(4)], device=device)
    for p in base: p.grad = torch.randn_like(p)
    n = sum(p.numel() for p in base)
    def temp(make): return fused.Timed(make, base, warm=2).temp_bytes * n   # on CUDA max_memory_allocated (512-byte blocks)
    ours = {path: temp(lambda ps: cls(ps, **kw, **opts)) for path, opts in
            (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True)), ("fused", dict(fused=True)))}
    assert ours["fused"] < 1024, ours
    tcls = getattr(torch.optim, name, None)
    if tcls is None: return
    theirs = {"for-loop": temp(lambda ps: tcls(ps, **kw, foreach=False)), "foreach": temp(lambda ps: tcls(ps, **kw, foreach=True))}
    for path in theirs: assert ours[path] <= theirs[path] + 1024, (path, ours, theirs)
    if name in fused.TORCH_FUSED and (name != "Adagrad" or device == "cpu"):   # torch's fused Adagrad: CPU only
        assert ours["fused"] <= temp(lambda ps: tcls(ps, **kw, fused=True)) + 1024


def test_run_bench_at_one_shape_and_nested_state():
    "heavyball's published shape: every tensor of one shape, `params` counted from it; state bytes found however nested."
    rows = fused.run_bench(("Adam",), n_params=1, n_tensors=3, shape=(8, 16), rounds=1, repeats=1, warm=2,
                           compile_torch=False, only=("torch fused",), keep_heap=False)
    assert [(r["impl"], r["shape"], r["params"], r["tensors"]) for r in rows] == [("torch fused", "8x16", 3 * 128, 3)]
    assert rows[0]["state_bytes"] == fused._sig(8 + 3 * 4 / (3 * 128))   # m and v, and a float32 step count per tensor
    ps = fused.bench_params(0, 2, shape=(3, 5))
    assert [tuple(p.shape) for p in ps] == [(3, 5)] * 2 and all(p.grad.shape == p.shape for p in ps)
    a, b = torch.zeros(3), torch.zeros(2, dtype=torch.float64)
    assert fused._tensors_in({0: {"m": a, "lr": 0.1, "more": [b, (a,)]}}) == [a, b, a]


def test_alias_cache_follows_the_tensors():
    """The 1-d aliases of parameters, state and gradients are cached while those tensors live, and only then.

    A gradient freed by zero_grad() takes its entry with it (no memory is held by the cache), and a parameter given
    new memory (`p.data = ...`) gets a new alias, so the step lands in the new memory."""
    import gc
    fused._aliases.clear()
    ps = [torch.randn(30 + i, dtype=torch.float64, requires_grad=True) for i in range(3)]
    opt = optbook.RMSprop(ps, lr=1e-2, fused=True)
    def grads():
        for p in ps: p.grad = torch.ones_like(p)
    for _ in range(3): grads(); opt.step()
    assert len(fused._aliases) == 12                     # θ, v, g and the step counter of each parameter
    opt.zero_grad(); gc.collect()
    assert len(fused._aliases) == 9                      # the gradients' entries left with them
    new = torch.zeros_like(ps[0]); ps[0].data = new
    grads(); opt.step()
    assert (new < 0).all()                               # the update reached the new memory


def _count_direct_calls():
    "A list that each direct call (`fused._Direct`) appends its number of parameters to, and a function that stops it."
    calls, make = [], fused._Direct.make
    class Count(fused._Direct):
        def run(self, args): calls.append(self.n); return super().run(args)
    def counted(d):
        if d is not None: d.__class__ = Count
        return d
    fused._Direct.make = classmethod(lambda cls, *a: counted(make(*a)))
    def stop(): fused._Direct.make = make
    return calls, stop


def test_direct_calls_skip_dynamo_and_fall_back():
    """After the call that compiles, calls of the same signature run Inductor's graph without dynamo (`_Direct`), with
    the iterates of the for-loop path. A parameter whose state is laid out otherwise takes the for-loop path; a call
    whose state the graph was not compiled for goes through dynamo again (a float32 state in a float64 batch: still
    the reference's values; a state of the wrong length: an error, not a write out of bounds); so does any call under
    a torch function mode."""
    fused.reset()
    calls, stop = _count_direct_calls()
    try:
        a, b, fo, ro = run_pair(optbook.RMSprop, SETTINGS["RMSprop"], steps=4)
        assert len(fused._direct) == 1 and calls == [4, 4]   # steps 3 and 4 (4 parameters of 2+ elements, one call each)
        for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)

        def step_both(tol=1e-12):
            for p, q in zip(a, b): p.grad = torch.full_like(p, 0.5); q.grad = p.grad.clone()
            fused.step(fo); ro.step()
            for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=tol, atol=tol)
        keys = ("square_avg", "momentum_buffer", "grad_avg")
        for key in keys:                                    # transposed copies of a 3x4 parameter's state: the for-loop path
            v = fo.state[a[0]][key]; fo.state[a[0]][key] = torch.empty(4, 3, dtype=F64).t().copy_(v)
        step_both()
        assert calls == [4, 4]                              # the other 3 parameters compiled a kernel of 3
        for key in keys: fo.state[a[0]][key] = fo.state[a[0]][key].contiguous()
        step_both()
        assert calls == [4, 4, 4]                           # one layout again: the direct call
        with torch.device("cpu"): step_both()               # a torch function mode: through dynamo
        assert calls == [4, 4, 4]
        for opt, ps in ((fo, a), (ro, b)): opt.state[ps[0]]["square_avg"] = opt.state[ps[0]]["square_avg"].float()
        step_both(tol=1e-6)                                 # a float32 state: dynamo's path (it recompiles)
        assert calls == [4, 4, 4]
        fo.state[a[2]]["square_avg"] = torch.zeros(a[2].numel() + 1, dtype=F64)   # a wrong length: refused by the rule
        for p in a: p.grad = torch.ones_like(p)
        with pytest.raises(Exception, match="size"): fused.step(fo)
        assert calls == [4, 4, 4]
    finally:
        stop(); fused.reset()


def test_channels_last_parameters_are_fused():
    "Channels-last parameters (dense, not contiguous) with gradients and state of their layout: compiled and called directly, equal to the reference."
    fused.reset()
    calls, stop = _count_direct_calls()
    try:
        shapes = [(2, 3, 4, 5), (3, 2, 2, 2), (4, 5)]
        a = [x.to(memory_format=torch.channels_last) if x.dim() == 4 else x for x in params(shapes)]
        b = [p.clone() for p in a]
        fo, ro = optbook.NAdam(a, lr=1e-2, weight_decay=0.1), optbook.NAdam(b, lr=1e-2, weight_decay=0.1)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p, q in zip(a, b):
                p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen, dtype=F64))   # p's layout
                q.grad = p.grad.clone()
            fused.step(fo); ro.step()
        assert a[0].is_contiguous(memory_format=torch.channels_last) and not a[0].is_contiguous()
        assert calls == [3, 3]                              # all three parameters in one kernel call, steps 3 and 4
        for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
    finally:
        stop(); fused.reset()


def test_plan_follows_the_group_and_notices_changes():
    """After a step made only of direct calls, the next steps follow its plan (`fused._Plan`): fresh gradients each
    step (set to None by zero_grad) keep it. Each change below must make the step take the full path again, with the
    reference's iterates: a parameter given new memory, a state tensor replaced (load_state_dict), one parameter's
    step counter changed in place (the kernel would read another's), a parameter without a gradient, a changed
    hyperparameter that is code (weight decay switched off, and on again: direct calls used to miss the switch and
    kept running the kernel compiled for the other setting), a gradient laid out otherwise. A replaced state tensor,
    once freed, drops the plan and the aliases it held."""
    import gc, weakref
    fused.reset()
    runs, run = [], fused._Plan.run
    fused._Plan.run = lambda self, *a: runs.append(run(self, *a)) or runs[-1]
    try:
        shapes = [(3, 4), (5,), (2, 3), (7,), (1,)]             # (1,): the for-loop path, inside the plan
        a = params(shapes); b = [p.clone() for p in a]
        kw = dict(lr=1e-2, weight_decay=0.1)
        fo, ro = optbook.NAdam(a, **kw), optbook.NAdam(b, **kw)
        gen = torch.Generator().manual_seed(3)
        def step(expect, skip=()):
            runs.clear()
            for i, (p, q) in enumerate(zip(a, b)):
                if i in skip: p.grad = q.grad = None; continue
                p.grad = torch.randn(p.shape, generator=gen, dtype=F64); q.grad = p.grad.clone()
            fused.step(fo); ro.step()
            for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
            for p, q in zip(a, b):
                for k, v in ro.state[q].items(): torch.testing.assert_close(fo.state[p][k], v, rtol=1e-12, atol=1e-15)
            assert runs[-1:] == ([True] if expect else [False] * bool(runs)), (expect, runs)
        for _ in range(3): step(False)                      # state, compilation, the first direct step (makes the plan)
        step(True); step(True)
        new = a[1].detach().clone(); a[1].data = new        # new memory: noticed, the update lands there
        step(False); assert a[1].data_ptr() == new.data_ptr(); step(True)
        fo.load_state_dict(fo.state_dict()); ro.load_state_dict(ro.state_dict())
        step(False); step(True)                             # (load_state_dict makes new group dicts: a new plan entry)
        for o, ps in ((fo, a), (ro, b)): o.state[ps[2]]["step"].add_(5)   # in place: the same tensor, another value
        step(False); step(False); step(True)                # two batches by step now: a kernel for 1 parameter, then a plan
        step(False, skip=(0,)); step(False, skip=(0,)); step(True, skip=(0,))   # a kernel for 2, then a plan
        step(False); step(True)                             # back to the kernels for 3 and 1
        for o in (fo, ro): o.param_groups[0]["weight_decay"] = 0.0   # a term switched off: other kernels
        step(False); step(False); step(True)
        for o in (fo, ro): o.param_groups[0]["weight_decay"] = 0.1    # and on again: the first kernels, no compilation
        step(False); step(True)
        gen_t = torch.Generator().manual_seed(4)
        g = torch.randn(4, 3, generator=gen_t, dtype=F64).t()   # a transposed gradient for the 3x4 parameter
        runs.clear(); a[0].grad, b[0].grad = g, g.clone()
        for p, q in zip(a[1:], b[1:]): p.grad = torch.ones_like(p); q.grad = p.grad.clone()
        fused.step(fo); ro.step()
        assert runs == [False]
        for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
        plan = fused._plans[fo][id(fo.param_groups[0])]
        old = fo.state[a[3]]["exp_avg"]; ref = weakref.ref(old)
        fo.state[a[3]]["exp_avg"] = old.clone(); del old; gc.collect()
        assert ref() is None and not plan.alive and plan.calls is None   # freed, and the plan let go of its aliases
        assert len(fused._plans[fo]) == 1                   # the entries of the groups load_state_dict replaced are gone
    finally:
        fused._Plan.run = run; fused.reset()


def test_plan_keeps_hyperparameter_tensors_until_a_value_changes():
    """A plan makes the hyperparameters' tensors again only when a value changed: a scheduled lr (a float each step)
    and an lr tensor changed in place both reach the kernel. 1-d parameters pass their gradients as they are. Under
    inference mode the step counters have no version counter: the plan compares their values instead, and still
    notices one changed in place."""
    fused.reset()
    runs, run = [], fused._Plan.run
    fused._Plan.run = lambda self, *a: runs.append(run(self, *a)) or runs[-1]
    try:
        a = params([(5,), (7,), (6,)]); b = [p.clone() for p in a]
        lr_a, lr_b = torch.tensor(1e-2, dtype=F64), torch.tensor(1e-2, dtype=F64)
        fo, ro = optbook.NAdam(a, lr=1e-2), optbook.NAdam(b, lr=1e-2)
        gen = torch.Generator().manual_seed(5)
        def step(expect):
            runs.clear()
            for p, q in zip(a, b): p.grad = torch.randn(p.shape, generator=gen, dtype=F64); q.grad = p.grad.clone()
            fused.step(fo); ro.step()
            for p, q in zip(a, b):
                torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
                for k, v in ro.state[q].items(): torch.testing.assert_close(fo.state[p][k], v, rtol=1e-12, atol=1e-15)
            assert runs[-1:] == ([True] if expect else [False] * bool(runs)), (expect, runs)
        for _ in range(3): step(False)
        for k in range(4):                                  # a schedule: a new float each step, the same plan
            for o in (fo, ro): o.param_groups[0]["lr"] = 1e-2 * (1 - k / 8)
            step(True)
        for o, lr in ((fo, lr_a), (ro, lr_b)): o.param_groups[0]["lr"] = lr
        step(True)
        for lr in (lr_a, lr_b): lr.mul_(0.5)                # the same tensor, another value
        step(True)
        with torch.inference_mode():                        # new state, made of inference tensors
            c = params([(5,), (7,), (6,)], seed=1); d = [p.clone() for p in c]
            fo, ro, a, b = optbook.NAdam(c, lr=1e-2), optbook.NAdam(d, lr=1e-2), c, d
            step(False); step(False); step(True)            # (the kernel is compiled: the second step is direct calls)
            plan = fused._plans[fo][id(fo.param_groups[0])]
            assert plan.versions is None                    # (no version counters: values compared)
            for o, ps in ((fo, a), (ro, b)): o.state[ps[1]]["step"].add_(2)
            step(False); step(False); step(True)
    finally:
        fused._Plan.run = run; fused.reset()


def test_muon_rows_measure_newton_schulz_against_svd():
    "The benchmark's Muon rows: positive times, and errors that a broken Newton–Schulz (a plain G/‖G‖) would exceed."
    rows = fused.muon_rows(shapes=((64, 64), (128, 32)), repeats=1)
    assert [r["shape"] for r in rows] == ["64x64", "128x32"]
    for r in rows:
        assert r["ns_ms"] > 0 and r["svd_ms"] > 0
        assert 0 < r["orth_err"] < 0.6 and 0 < r["dist_to_polar"] < 0.4
    G = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    O = G / torch.linalg.matrix_norm(G)                  # what Newton–Schulz starts from: far from orthogonal
    assert (torch.linalg.matrix_norm(O.T @ O - torch.eye(64)) / 8).item() > 0.6
