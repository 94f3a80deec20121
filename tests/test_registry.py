"""One registry, every optimizer: the checks each optbook optimizer must pass, whatever its algorithm.

Adding an optimizer means adding its notebook, one `Entry` below, and the chapter's own specific tests
(tests/test_<chapter>.py). For every entry the registry checks, where the entry does not declare it inapplicable:
- convergence on the ill-conditioned quadratic and progress on Rosenbrock (optbook.landscapes);
- agreement with the reference implementation iterate by iterate, on the for-loop and the foreach path, over
  the entry's grid of options, with two parameter groups that differ in hyperparameters and parameters whose
  grad is None on some steps (float64, tight tolerance); also on the landscapes, with a closure and a scheduler;
- foreach equals the for-loop bit for bit on the CPU;
- maximize=True on −f follows minimization of f;
- bit-identical resume through torch.save / torch.load(weights_only=True) in float64, float32 and bfloat16,
  and loading the reference's state_dict into optbook and back (where the reference is torch.optim's);
- the signature and defaults of the reference; bad hyperparameters refused with the value named;
- a deliberately wrong rule is caught (so each tolerance bites), and a foreach path that updates nothing is caught;
- parameter groups given as generators; complex parameters as real pairs; FakeTensorMode "cuda" (state follows
  the parameter's device and dtype); the rule compiles with fullgraph=True and a changing lr recompiles nothing;
- on a real GPU, when there is one: agreement with the reference there;
- the core's reliability: a string or a bool for any real hyperparameter refused with a TypeError naming it (at
  construction, in a group, at step), NumPy scalars stored as Python numbers, a state_dict saved for other shapes or
  by another optimizer refused with nothing changed, and a NaN or ±inf gradient entry visible in the parameters.
"""
import copy
import inspect
import io
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import optbook
from optbook import landscapes
from optbook.core import TensorList, compile_update, hyper_tensors

F64 = torch.float64
# The torch the suite is written against; `make test-floor` runs it on older ones, where a few checks relax (by name)
DEV_TORCH = (2, 13)
OLDER_TORCH = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < DEV_TORCH
RTOL, ATOL = 1e-12, 1e-15        # reference comparisons in float64; the mutants below must fail them
pytestmark = [pytest.mark.filterwarnings("error"),  # a diverging run or a deprecation is a failure here ...
              # ... except torch's own, raised inside torch.load on torch < 2.2 (`make test-floor`), not by optbook
              pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning"),
              # ... and torch 2.6's false alarm at every torch.compile after the first of a process (its compile metrics
              # read every dynamo setting, which marks an empty dict setting as changed; optbook's fused path hides it)
              pytest.mark.filterwarnings("ignore:Skipping serialization of skipfiles_inline_module_allowlist:UserWarning")]


class SignumReference(torch.optim.Optimizer):
    "Signum written independently of optbook.core, straight from Bernstein et al. (2018), with decoupled decay."
    def __init__(self, params, lr=1e-3, momentum=0, weight_decay=0, *, maximize=False, foreach=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None: continue
                theta, g = torch.view_as_real(p) if p.is_complex() else p, p.grad
                g = torch.view_as_real(g) if g.is_complex() else g
                g = -g if group["maximize"] else g
                if group["momentum"]:
                    st = self.state[p]
                    if "momentum_buffer" not in st: st["momentum_buffer"] = torch.zeros_like(p)
                    m = st["momentum_buffer"]
                    m = torch.view_as_real(m) if m.is_complex() else m
                    m.copy_(group["momentum"] * m + (1 - group["momentum"]) * g)
                    g = m
                theta.copy_((1 - group["lr"] * group["weight_decay"]) * theta - group["lr"] * torch.sign(g))
        return loss


@dataclass
class Entry:
    name: str
    cls: Callable                        # the optbook optimizer
    reference: Optional[Callable]        # an independent implementation with the same arguments, or None
    settings: list                       # keyword arguments; each must converge on the quadratic
    grid: list = None                    # option combinations compared with the reference (default: settings)
    torch_state: bool = False            # the reference is torch.optim's, with the same state keys: swap state_dicts
    quadratic_steps: int = 300           # steps allowed to reach f − f* < quadratic_tol on quadratic(kappa=10)
    quadratic_tol: float = 1e-8
    quadratic_sched: bool = False        # decay lr with a cosine schedule on the quadratic (sign descent needs it)
    rosenbrock: dict = field(default_factory=dict)  # settings for Rosenbrock, whose curvature needs a small lr
    rosenbrock_steps: int = 2000         # steps allowed to shrink Rosenbrock's f − f* a hundredfold
    compile_kw: dict = None              # the setting whose rule must compile (default: the last setting)
    complex_ok: bool = True              # complex parameters are supported (as real pairs)
    needs_closure: bool = False          # step() requires a closure (L-BFGS)
    matrices_only: bool = False          # only 2-d parameters (Muon, Shampoo)
    bad_args: list = field(default_factory=lambda: [dict(lr=-0.1), dict(lr=float("nan"))])  # refused, value named
    skip: dict = field(default_factory=dict)  # test name -> why that check does not apply to this optimizer

    @property
    def options(self): return self.grid or self.settings

    def __post_init__(self):
        # An older torch (`make test-floor`) may lack options that the registry compares (Adam's decoupled_weight_decay
        # before 2.6, NAdam's maximize before 2.2, ...): the reference then skips those cases by name instead of failing.
        # On the torch this project develops against every option exists and the reference is left untouched.
        if self.reference is None: self.torch_state = False   # (no torch class to swap state_dicts with)
        if OLDER_TORCH and self.name == "LBFGS":
            self.skip.setdefault("test_follows_reference_on_landscapes", f"optbook.LBFGS follows torch {DEV_TORCH}'s "
                                 f"strong-Wolfe search; torch {torch.__version__}'s takes other iterates on Rosenbrock")
        if self.reference is None or not isinstance(self.reference, type): return
        params = inspect.signature(self.reference).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()): return
        used = {k for kw in [*self.options, *self.settings, self.rosenbrock] for k in kw}
        if "foreach" in inspect.signature(self.cls).parameters: used.add("foreach")
        missing = used - set(params)
        if not missing: return
        ref = self.reference
        def __init__(obj, *args, **kw):
            absent = sorted(k for k in kw if k not in params)
            if absent: pytest.skip(f"torch {torch.__version__}'s {ref.__name__} has no option {', '.join(absent)}")
            ref.__init__(obj, *args, **kw)
        self.reference = type(ref.__name__, (ref,), {"__init__": __init__, "__module__": ref.__module__,
                                                     "__signature__": inspect.signature(ref)})


SGD_GRID = [dict(lr=0.1, momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x)
            for m, d, n, w, x in itertools.product((0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 0.1), (False, True))
            if not (n and (m == 0 or d != 0))]       # nesterov needs momentum > 0 and dampening == 0 (both refuse)

REGISTRY = [
    Entry("SGD", optbook.SGD, torch.optim.SGD, [
        dict(lr=0.09),
        dict(lr=0.02, momentum=0.9),
        dict(lr=0.02, momentum=0.9, nesterov=True),
        dict(lr=0.02, momentum=0.9, dampening=0.5, weight_decay=1e-9),
    ], grid=SGD_GRID, torch_state=True, rosenbrock=dict(lr=1e-3, momentum=0.9),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(momentum=-0.5), dict(weight_decay=-1e-4)]),
    Entry("SignSGD", optbook.SignSGD, SignumReference, [
        dict(lr=0.05),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.5, weight_decay=1e-3),
    ], grid=[dict(lr=0.05, momentum=m, weight_decay=w, maximize=x)
             for m, w, x in itertools.product((0.0, 0.5, 0.9), (0.0, 0.1), (False, True))],
       quadratic_steps=1000, quadratic_tol=1e-6, quadratic_sched=True, rosenbrock=dict(lr=3e-3, momentum=0.9),
       bad_args=[dict(lr=-0.1), dict(momentum=1.0), dict(weight_decay=-1.0)]),
    # --- entries: adaptive (chapter 03) ---
    # optbook.adaptive's classes, imported here until `from optbook import *` exports them (then: optbook.Adagrad, ...)
    Entry("Adagrad", optbook.Adagrad, torch.optim.Adagrad, [
        dict(lr=0.5),
        dict(lr=0.5, initial_accumulator_value=0.1),
        dict(lr=1.0, lr_decay=1e-3, weight_decay=1e-9, eps=1e-8),
    ], grid=[dict(lr=0.1, lr_decay=d, weight_decay=w, initial_accumulator_value=a, eps=e, maximize=x)
             for d, w, a, e, x in itertools.product((0.0, 0.1), (0.0, 0.1), (0.0, 0.5), (1e-10, 1e-2), (False, True))],
       torch_state=True, rosenbrock=dict(lr=0.5),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(lr_decay=-0.1), dict(weight_decay=-1e-4),
                 dict(initial_accumulator_value=-0.5), dict(eps=-1e-10)]),
    Entry("RMSprop", optbook.RMSprop, torch.optim.RMSprop, [
        dict(lr=0.01, alpha=0.9),
        dict(lr=0.01, alpha=0.9, momentum=0.5),
        dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, eps=1e-4, weight_decay=1e-9),
    ], grid=[dict(lr=0.01, alpha=0.9, eps=1e-6, centered=c, momentum=m, weight_decay=w, maximize=x)
             for c, m, w, x in itertools.product((False, True), (0.0, 0.9), (0.0, 0.1), (False, True))],
       torch_state=True, quadratic_steps=1000, quadratic_tol=1e-6, quadratic_sched=True,
       rosenbrock=dict(lr=3e-3, alpha=0.99),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(alpha=-0.5), dict(eps=-1e-8), dict(momentum=-0.9),
                 dict(weight_decay=-1e-4)]),
    Entry("Adadelta", optbook.Adadelta, torch.optim.Adadelta, [
        dict(lr=1.0, eps=1e-3),
        dict(lr=0.5, rho=0.95, eps=1e-3),
        dict(lr=1.0, rho=0.9, eps=1e-3, weight_decay=1e-9),
    ], grid=[dict(lr=l, rho=r, eps=1e-6, weight_decay=w, maximize=x)
             for l, r, w, x in itertools.product((1.0, 0.5), (0.9, 1.0), (0.0, 0.1), (False, True))],
       torch_state=True, quadratic_steps=1000, quadratic_tol=1e-6, quadratic_sched=True,
       rosenbrock=dict(lr=1.0, rho=0.999, eps=1e-4),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(rho=1.5), dict(rho=-0.1), dict(eps=-1e-6),
                 dict(weight_decay=-1e-4)]),
    # --- end adaptive ---
    # --- entries: adam (chapter 04) ---
    # optbook.adam's classes, imported here until `from optbook import *` exports them (then: optbook.Adam, ...)
    Entry("Adam", optbook.Adam, torch.optim.Adam, [
        dict(lr=0.1),
        dict(lr=0.1, amsgrad=True),
        dict(lr=0.05, weight_decay=1e-9),
        dict(lr=0.05, betas=(0.8, 0.99), amsgrad=True, weight_decay=1e-9, decoupled_weight_decay=True),
    ], grid=[dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6, amsgrad=a, weight_decay=w, decoupled_weight_decay=d, maximize=x)
             for a, w, d, x in itertools.product((False, True), (0.0, 0.1), (False, True), (False, True))],
       torch_state=True, quadratic_steps=1000, rosenbrock=dict(lr=0.05),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(eps=-1.0), dict(weight_decay=-0.1),
                 dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1))]),
    Entry("AdamW", optbook.AdamW, torch.optim.AdamW, [
        dict(lr=0.1, weight_decay=0.0),
        dict(lr=0.1, weight_decay=1e-9, amsgrad=True),
    ], grid=[dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6, amsgrad=a, weight_decay=w, maximize=x)
             for a, w, x in itertools.product((False, True), (0.0, 0.1), (False, True))],
       torch_state=True, quadratic_steps=1000, rosenbrock=dict(lr=0.05, weight_decay=1e-9),
       bad_args=[dict(lr=-0.1), dict(eps=-1.0), dict(weight_decay=-0.1), dict(betas=(0.9, 1.0))]),
    Entry("Adamax", optbook.Adamax, torch.optim.Adamax, [
        dict(lr=0.1),
        dict(lr=0.1, weight_decay=1e-9),
    ], grid=[dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=w, maximize=x)
             for w, x in itertools.product((0.0, 0.1), (False, True))],
       torch_state=True, quadratic_steps=1000, rosenbrock=dict(lr=0.05),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(eps=-1.0), dict(weight_decay=-0.1), dict(betas=(1.0, 0.999))]),
    Entry("NAdam", optbook.NAdam, torch.optim.NAdam, [
        dict(lr=0.1),
        dict(lr=0.05, weight_decay=1e-9),
        dict(lr=0.05, betas=(0.8, 0.99), weight_decay=1e-9, decoupled_weight_decay=True, momentum_decay=0.1),
    ], grid=[dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=w, decoupled_weight_decay=d, maximize=x, momentum_decay=psi)
             for w, d, x, psi in itertools.product((0.0, 0.1), (False, True), (False, True), (4e-3, 0.1))],
       # torch_state=False: torch's load_state_dict casts mu_product to the parameter's dtype and then multiplies it in
       # that dtype, while optbook keeps the float32 product exact (exact_keys); so a state_dict swapped into torch drifts
       # from optbook by float32 rounding of the product (~1e-8 relative), beyond RTOL. tests/test_adam.py swaps both ways
       # with that tolerance; iterates are still compared with torch's here (compare_with_reference), and the chapter
       # compares the states, mu_product included, after fresh runs.
       torch_state=False, quadratic_steps=1000, rosenbrock=dict(lr=0.05),
       bad_args=[dict(lr=-0.1), dict(eps=-1.0), dict(weight_decay=-0.1), dict(momentum_decay=-0.1),
                 dict(betas=(1.0, 0.999))]),
    # --- end adam ---
    # --- entries: shampoo (chapter 05) ---
    # optbook.shampoo's class, imported here until `from optbook import *` exports it (then: optbook.Shampoo).
    # Points and vectors take Shampoo's diagonal (AdaGrad) path, so the landscapes check that path; the grid's
    # (4, 3), (2, 2, 2) and (5, 2) parameters check the Kronecker path against a dense torch.kron reference.
    # eps stays >= 1e-3 there (1.0 with stale roots, f = 3, where new gradients reach directions the old roots saw
    # only as eps): the dense reference's (pq × pq) eigenvalues reach eps², and its round-off near them exceeds RTOL.
    # The chapter checks the same agreement, and the eps → 0 limit of the first step, in its own cells.
    Entry("Shampoo", optbook.Shampoo,
          __import__("test_shampoo").KronShampooReference, [
        dict(lr=0.5, eps=0.1),
        dict(lr=0.5, eps=1.0, precondition_frequency=3),
        dict(lr=0.3, eps=0.1, momentum=0.5, weight_decay=1e-9),
    ], grid=[dict(lr=0.1, eps=e, precondition_frequency=f, momentum=m, weight_decay=w, maximize=x)
             for (e, f), m, w, x in itertools.product(((1e-3, 1), (0.1, 1), (1.0, 3)), (0.0, 0.9), (0.0, 0.1),
                                                      (False, True))]
           + [dict(lr=0.1, eps=e, precondition_frequency=f, beta2=b2, grafting=gr, momentum=0.5)   # practical forms
              for (e, f), b2, gr in itertools.product(((0.1, 1), (1.0, 3)), (1.0, 0.9), (None, "adagrad"))],
       torch_state=False, complex_ok=False, rosenbrock=dict(lr=0.5),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(eps=0.0), dict(eps=-1e-6), dict(momentum=1.0),
                 dict(weight_decay=-0.1), dict(precondition_frequency=0)],
       skip={"test_rule_compiles_and_lr_changes_recompile_nothing":
                 "the roots are refreshed on a data-dependent step test ((t - 1) % f) and come from torch.linalg.eigh",
             "test_checks_catch_a_foreach_path_that_updates_nothing":
                 "per_matrix: every tensor is updated alone, so there is no foreach path to break (foreach is ignored)"}),
    # --- end shampoo ---
    # --- entries: sign (chapter 06) ---
    # optbook.sign's classes, imported here until `from optbook import *` exports them (then: optbook.Rprop, optbook.Lion)
    Entry("Rprop", optbook.Rprop, torch.optim.Rprop, [
        dict(lr=0.01),
        dict(lr=0.1, etas=(0.3, 1.5)),
        dict(lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-8, 1.0)),
    ], grid=[dict(lr=0.01, etas=e, step_sizes=s, maximize=x)
             for e, s, x in itertools.product(((0.5, 1.2), (0.3, 2.0)), ((1e-6, 50), (1e-3, 0.05)), (False, True))],
       torch_state=True, rosenbrock=dict(lr=1e-3),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(etas=(1.5, 1.2)), dict(etas=(0.5, 0.9)),
                 dict(step_sizes=(1.0, 0.1))],
       skip={"test_comparison_catches_a_tiny_lr_error": "Rprop's lr only sets the initial step sizes σ₀ (state, not a "
             "hyperparameter of the rule); tests/test_sign.py perturbs σ₀ by 1e-9 instead",
             "test_state_follows_the_device": "Tensor.copy_ between FakeTensor 'cuda' tensors raises on a CPU-only torch "
             "build (torch.optim.Rprop's for-loop path uses it too); the state is created with *_like(p) by init_state"}),
    # reference: lion-pytorch's Lion behind a thin adapter (foreach accepted, maximize by negating the gradient, complex
    # parameters as real pairs); it is not torch.optim's, so no state_dict swapping (torch_state=False)
    Entry("Lion", optbook.Lion, __import__("test_sign").LionReference, [
        dict(lr=0.01),
        dict(lr=0.01, betas=(0.9, 0.9)),
        dict(lr=0.01, betas=(0.95, 0.98), weight_decay=1e-3),
    ], grid=[dict(lr=0.01, betas=b, weight_decay=w, decoupled_weight_decay=d, maximize=x)
             for b, w, d, x in itertools.product(((0.9, 0.99), (0.5, 0.8)), (0.0, 0.1), (False, True), (False, True))],
       torch_state=False, quadratic_steps=1000, quadratic_tol=1e-6, quadratic_sched=True,
       rosenbrock=dict(lr=3e-3, betas=(0.9, 0.99)),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(weight_decay=-0.1), dict(betas=(1.0, 0.99)),
                 dict(betas=(0.9, -0.1))]),
    # --- end sign ---
    # --- entries: muon (chapter 07) ---
    # optbook.muon's class, imported here until `from optbook import *` exports it (then: optbook.Muon).
    # torch.optim.Muon takes no `foreach`, which every check passes: the reference is torch's class with that argument
    # dropped (so the torch-signature check skips it; tests/test_muon.py compares the signatures and defaults instead).
    # Both run Newton–Schulz in bfloat16 with the same products in the same order, so the float64 iterates agree bit for
    # bit and RTOL stays; test_muon.py shows that one wrong NS coefficient or a missing transpose fails it.
    # torch.optim.Muon exists from torch 2.9 on: on an older torch (`make test-floor`) Muon has no reference here.
    Entry("Muon", optbook.Muon,
          type("TorchMuon", (torch.optim.Muon,), {"__init__": lambda self, params, *args, foreach=None, **kw:
                                                  torch.optim.Muon.__init__(self, params, *args, **kw)})
          if hasattr(torch.optim, "Muon") else None, [
        dict(lr=0.02),
        dict(lr=0.02, nesterov=False, weight_decay=0.0),
        dict(lr=0.02, momentum=0.9, adjust_lr_fn="match_rms_adamw", weight_decay=0.01),
        dict(lr=0.02, ns_steps=3, ns_coefficients=(2.0, -1.5, 0.5), adjust_lr_fn="original"),
    ], grid=[dict(lr=0.02, momentum=m, nesterov=n, weight_decay=w, adjust_lr_fn=a)
             for m, n, w, a in itertools.product((0.0, 0.95), (False, True), (0.0, 0.1), (None, "original", "match_rms_adamw"))],
       torch_state=True, matrices_only=True, complex_ok=False,
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(momentum=-0.5), dict(weight_decay=-1e-4),
                 dict(ns_steps=100), dict(adjust_lr_fn="bogus")],
       skip={"test_rule_compiles_and_lr_changes_recompile_nothing":
             "the rule compiles with fullgraph=True, but Inductor rewrites the bfloat16 addmm of Newton–Schulz, so the "
             "compiled step differs from eager by bfloat16 rounding (~1e-4 relative), far above RTOL",
             "test_checks_catch_a_foreach_path_that_updates_nothing":
             "Muon's foreach path stacks matrices for one batched Newton–Schulz and never hands update() a TensorList, "
             "so this mutant changes nothing; tests/test_muon.py checks that the batched path moves every matrix"}),
    # --- end muon ---
    # --- entries: lbfgs (chapter 08) ---
    # optbook.lbfgs.LBFGS, imported here until `from optbook import *` exports it. L-BFGS needs a closure, so every
    # check that feeds gradients without one skips it (needs_closure); tests/test_lbfgs.py runs the closure-driven
    # comparisons with torch (bit for bit), the state_dict checks and the mutants instead.
    Entry("LBFGS", optbook.LBFGS, torch.optim.LBFGS, [
        dict(lr=1, max_iter=20),
        dict(lr=1, line_search_fn="strong_wolfe"),
    ], needs_closure=True, torch_state=True, rosenbrock=dict(lr=1), rosenbrock_steps=20, complex_ok=False,
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(max_iter=0), dict(history_size=0),
                 dict(tolerance_grad=-1.0), dict(line_search_fn="backtracking")],
       skip={"test_parameter_groups_given_as_generators": "LBFGS supports one parameter group only (as torch's)",
             "test_maximize_on_minus_f_follows_minimize_on_f": "no maximize option (as torch's LBFGS)",
             "test_state_follows_the_device": "FakeTensorMode: the tolerance checks and the line search read tensor values",
             "test_rule_compiles_and_lr_changes_recompile_nothing": "no per-tensor rule: data-dependent control flow in step()",
             "test_foreach_equals_forloop_bit_for_bit": "no foreach option (as torch's LBFGS)"}),
    # --- end lbfgs ---
    # --- entries: frontier (chapter 12) ---
    # References from tests/test_frontier.py: schedulefree 1.4.1's class put in train mode at construction (None when the
    # test-only package is missing), and the papers' algorithms written without optbook (AdEMAMix's Algorithm 1; SOAP's
    # dense form, Adam on the pq-vector rotated by B_P ⊗ B_Q). Schedule-Free counts its steps per group, as the package,
    # so the parameter that gets a gradient only on even steps is covered too.
    Entry("AdamWScheduleFree", optbook.AdamWScheduleFree, __import__("test_frontier").ScheduleFreeReference, [
        dict(lr=0.1),
        dict(lr=0.1, warmup_steps=5, r=1.0),
        dict(lr=0.05, betas=(0.8, 0.999), weight_decay=1e-9, weight_lr_power=1.0),
    ], grid=[dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=w, warmup_steps=ws, r=r)
             for w, ws, r in itertools.product((0.0, 0.1), (0, 4), (0.0, 1.0))],
       # quadratic_steps=3000: the answer x_t averages every z_i since the start, so it converges as 1/t after the z's do
       torch_state=False, complex_ok=False, quadratic_steps=3000, rosenbrock=dict(lr=0.02),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(eps=-1.0), dict(weight_decay=-0.1), dict(betas=(1.0, 0.999)),
                 dict(betas=(0.0, 0.999)), dict(warmup_steps=-1), dict(r=-1.0)]),
    Entry("AdEMAMix", optbook.AdEMAMix, __import__("test_frontier").AdEMAMixReference, [
        dict(lr=0.1, betas=(0.9, 0.999, 0.99)),
        dict(lr=0.05, betas=(0.9, 0.999, 0.99), t_alpha_beta3=20),
        dict(lr=0.05, betas=(0.8, 0.99, 0.99), alpha=3.0, t_alpha_beta3=10, weight_decay=1e-9),
    ], grid=[dict(lr=0.1, betas=(0.8, 0.99, 0.999), eps=1e-6, alpha=a, t_alpha_beta3=T, weight_decay=w, maximize=x)
             for a, T, w, x in itertools.product((0.0, 5.0), (None, 7), (0.0, 0.1), (False, True))],
       torch_state=False, quadratic_steps=1000, rosenbrock=dict(lr=0.01, betas=(0.9, 0.999, 0.99)),
       compile_kw=dict(lr=0.05, alpha=3.0, weight_decay=1e-9),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(eps=-1.0), dict(weight_decay=-0.1), dict(alpha=-1.0),
                 dict(betas=(0.9, 0.999)), dict(betas=(0.9, 0.999, 1.0)), dict(t_alpha_beta3=0)]),
    Entry("SOAP", optbook.SOAP, __import__("test_frontier").DenseSOAPReference, [
        dict(lr=0.1, betas=(0.9, 0.999), weight_decay=0.0),
        dict(lr=0.05, betas=(0.9, 0.999), precondition_frequency=1, weight_decay=0.0),
        dict(lr=0.05, betas=(0.9, 0.99), shampoo_beta=0.9, precondition_frequency=3, weight_decay=1e-9),
    ], grid=[dict(lr=0.1, betas=(0.9, 0.99), eps=1e-6, precondition_frequency=f, shampoo_beta=bs, weight_decay=w, maximize=x)
             for f, bs, w, x in itertools.product((1, 3), (None, 0.9), (0.0, 0.1), (False, True))],
       torch_state=False, complex_ok=False, quadratic_steps=1000, rosenbrock=dict(lr=0.01),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(eps=-1.0), dict(weight_decay=-0.1), dict(betas=(1.0, 0.95)),
                 dict(precondition_frequency=0), dict(shampoo_beta=1.0)],
       skip={"test_rule_compiles_and_lr_changes_recompile_nothing":
                 "the bases come from torch.linalg.eigh and QR, refreshed on a data-dependent step test ((t - 1) % f)",
             "test_state_follows_the_device":
                 "the refresh's torch.linalg.qr raises under FakeTensorMode 'cuda' on a CPU-only torch build "
                 "(precondition_frequency=1 reaches it within the check's steps); the state is created on p's device "
                 "and dtype by init_state, and tests/test_registry.py's CUDA check runs it on a real GPU",
             "test_closure_and_scheduler_match_reference":
                 "this closure's gradients leave round-off-sized components in the null space of the rank-one first "
                 "statistics, which Adam's v then divides by their own size: the dense reference's other round-off "
                 "grows ~300x per step; tests/test_frontier.py compares with pytorch-optimizer (same order of "
                 "operations) at 1e-10, and the random-gradient grid here passes at RTOL",
             "test_checks_catch_a_foreach_path_that_updates_nothing":
                 "per_matrix: every tensor is updated alone, so there is no foreach path to break (foreach is ignored)"}),
    # Prodigy: the reference is tests/test_frontier.py's ProdigyReference, written from the paper with prodigyopt 1.1.2's
    # conventions (the package itself refuses groups with different learning rates; test_frontier.py compares with it).
    # d0 = 0.05: the registry's random gradients give no progress to estimate, so d stays at d0; a visible step size
    # lets the comparisons (and the lr mutant) bite. test_frontier.py runs gradients under which d grows.
    Entry("Prodigy", optbook.Prodigy, __import__("test_frontier").ProdigyReference, [
        dict(lr=1.0, d0=0.05),
        dict(lr=1.0, d0=0.05, use_bias_correction=True, safeguard_warmup=True),
        dict(lr=0.5, d0=0.05, betas=(0.9, 0.99), weight_decay=1e-9, growth_rate=1.1),
    ], grid=[dict(lr=1.0, betas=(b1, 0.99), eps=1e-6, weight_decay=w, decouple=dc, use_bias_correction=bc, d0=1e-3)
             for b1, w, dc, bc in itertools.product((0.0, 0.9), (0.0, 0.1), (True, False), (False, True))],
       # quadratic_sched: Prodigy is used with a schedule (the paper's runs use cosine); at a fixed step, β₂ = 0.99 hovers
       torch_state=False, complex_ok=False, quadratic_steps=1000, quadratic_sched=True, rosenbrock=dict(lr=1.0),
       bad_args=[dict(lr=-0.1), dict(lr=float("nan")), dict(eps=0.0), dict(d0=0.0), dict(weight_decay=-0.1),
                 dict(betas=(1.0, 0.999)), dict(beta3=1.0), dict(growth_rate=0.5), dict(slice_p=0)],
       skip={"test_state_follows_the_device":
                 "the estimate d reads sums with .item() (as prodigyopt) at every step, which FakeTensorMode cannot; the "
                 "state is made by init_state with zeros_like/clone of the parameter",
             "test_rule_compiles_and_lr_changes_recompile_nothing":
                 "no per-tensor rule to compile: the step size d is a sum over every parameter, read on the host",
             "test_checks_catch_a_foreach_path_that_updates_nothing":
                 "every tensor is updated alone, so there is no foreach path to break (foreach is ignored)"}),
    # --- end frontier ---
]


def entry_cases(entries, attr):
    "(entry, kwargs) pairs over each entry's `attr` list, with readable ids."
    cases = [(e, kw) for e in entries for kw in getattr(e, attr)]
    return pytest.mark.parametrize("entry,kw", cases, ids=[f"{e.name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                                                            for e, kw in cases])


@pytest.fixture(autouse=True)
def _declared_skips(request):
    "Skip the checks an entry declares inapplicable (Entry.skip: test name -> reason)."
    entry = getattr(request.node, "callspec", None) and request.node.callspec.params.get("entry")
    if isinstance(entry, Entry) and request.node.originalname in entry.skip:
        pytest.skip(f"{entry.name}: {entry.skip[request.node.originalname]}")


ENTRIES = pytest.mark.parametrize("entry", REGISTRY, ids=lambda e: e.name)
WITH_REF = [e for e in REGISTRY if e.reference is not None]
FOREACH = pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])

# ------------------------------------------------------------------------------------------------------------------
# Random problems: parameters of several shapes in two groups; the one at NO_GRAD never gets a gradient and the one
# at SOMETIMES only on even steps.

SHAPES = [(4, 3), (), (6,), (2, 2, 2), (3,), (5, 2)]
NO_GRAD, SOMETIMES = 4, 5


def shapes_for(entry):
    return [(4, 3), (3, 5), (2, 6), (4, 4), (3, 3), (5, 2)] if entry.matrices_only else SHAPES


def make_params(entry, dtype=F64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=F64).to(device=device, dtype=dtype) for s in shapes_for(entry)]


def groups(ps, kw):
    "Two parameter groups; the second has its own lr."
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": kw.get("lr", 1e-3) * 0.3}]


def grads_for(entry, step, dtype=F64, device="cpu", seed=1):
    "The gradients of step `step` (None for NO_GRAD always and for SOMETIMES on odd steps)."
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for i, s in enumerate(shapes_for(entry)):
        g = torch.randn(s, generator=gen, dtype=F64).to(device=device, dtype=dtype)
        out.append(None if i == NO_GRAD or (i == SOMETIMES and step % 2) else g)
    return out


def set_grads(ps, grads):
    "Each optimizer gets its own copy: torch's foreach Nesterov path writes into p.grad."
    for p, g in zip(ps, grads): p.grad = None if g is None else g.clone()


def applies(entry, vectors=False, closure=False):
    "Skip a check that does not apply to `entry`: it feeds gradients without a closure (unless `closure`), or 2-d points."
    if entry.needs_closure and not closure: pytest.skip(f"{entry.name} needs a closure; this check sets gradients directly")
    if vectors and entry.matrices_only: pytest.skip(f"{entry.name} updates matrices only; this check runs on 2-d points")


def with_foreach(entry, foreach):
    "`foreach=...` for optimizers that take it; for one that does not (L-BFGS), only the foreach=False case runs."
    if "foreach" in inspect.signature(entry.cls).parameters: return {"foreach": foreach}
    if foreach: pytest.skip(f"{entry.name} has no foreach option")
    return {}


def run(make, entry, steps, dtype=F64, device="cpu", params=None, start=0, seed=1):
    "Step `make(params)` with the registry's gradients; return the iterates (a list per step) and the optimizer."
    applies(entry)
    ps = make_params(entry, dtype, device) if params is None else params
    opt = make(ps)
    path = []
    for k in range(start, start + steps):
        set_grads(ps, grads_for(entry, k, dtype, device, seed))
        opt.step()
        path.append([p.detach().clone() for p in ps])
    return path, opt, ps


def assert_paths_close(ours, ref, rtol=RTOL, atol=ATOL):
    for k, (a, b) in enumerate(zip(ours, ref)):
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"step {k + 1}, parameter {i}: {m}")


def assert_paths_equal(ours, ref):
    for k, (a, b) in enumerate(zip(ours, ref)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert torch.equal(x, y), f"step {k + 1}, parameter {i} differs (max {(x - y).abs().max():.3e})"


def _without_none(state):
    "A state dict without None entries, nor parameters left with none: torch before 2.2 keeps `momentum_buffer: None`."
    state = {i: {k: v for k, v in s.items() if v is not None} for i, s in state.items()}
    return {i: s for i, s in state.items() if s}


def assert_states_equal(sa, sb, close=False):
    "Same parameters in the state (no empty entries), same keys, equal values (a None entry counts as absent)."
    sa, sb = _without_none(sa), _without_none(sb)
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys(), (i, sa[i].keys(), sb[i].keys())
        for k in sa[i]:
            if close:   # (torch before 2.2 keeps some counters as Python numbers where later ones keep tensors)
                a, b = (torch.tensor(x) if isinstance(x, (int, float)) else x for x in (sa[i][k], sb[i][k]))
                torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, check_dtype=False)
            else: assert torch.equal(sa[i][k], sb[i][k]) and sa[i][k].dtype == sb[i][k].dtype, (i, k)


def compare_with_reference(entry, kw, foreach, steps=20, dtype=F64, device="cpu", rtol=RTOL, atol=ATOL):
    ours, opt, ps = run(lambda ps: entry.cls(groups(ps, kw), foreach=foreach, **kw), entry, steps, dtype, device)
    ref, ref_opt, ref_ps = run(lambda ps: entry.reference(groups(ps, kw), foreach=foreach, **kw), entry, steps, dtype, device)
    assert_paths_close(ours, ref, rtol, atol)
    assert torch.equal(ps[NO_GRAD], make_params(entry, dtype, device)[NO_GRAD]), "a parameter without grad must not move"
    assert (ps[NO_GRAD] in opt.state) == (ref_ps[NO_GRAD] in ref_opt.state), \
        "a parameter without grad gets state exactly when the reference gives it some (torch's Adagrad does, at construction)"
    if entry.torch_state: assert_states_equal(opt.state_dict()["state"], ref_opt.state_dict()["state"], close=True)
    return opt


# ------------------------------------------------------------------------------------------------------------------
# Landscapes

def gap(landscape, path):
    return (landscape(path[-1]) - landscape.f_min).item()


@entry_cases(REGISTRY, "settings")
def test_converges_on_the_quadratic(entry, kw):
    applies(entry, vectors=True, closure=True)
    q = landscapes.quadratic(kappa=10.0, angle=0.3)
    x = torch.tensor(q.start, dtype=F64, requires_grad=True)
    opt = entry.cls([x], **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=entry.quadratic_steps) if entry.quadratic_sched else None
    def closure():
        opt.zero_grad(); loss = q(x); loss.backward(); return loss
    for _ in range(entry.quadratic_steps):
        opt.step(closure)
        if sched: sched.step()
    path = x.detach()[None]
    assert gap(q, path) < entry.quadratic_tol, f"{entry.name}{kw}: f − f* = {gap(q, path):.2e} after {entry.quadratic_steps} steps"


@ENTRIES
def test_progress_on_rosenbrock(entry):
    applies(entry, vectors=True, closure=True)
    r = landscapes.rosenbrock()
    path = landscapes.trajectory(r, lambda ps: entry.cls(ps, **entry.rosenbrock), entry.rosenbrock_steps)
    start = (r(torch.tensor(r.start, dtype=F64)) - r.f_min).item()
    assert gap(r, path) < start / 100, f"{entry.name}{entry.rosenbrock}: {start:.3g} → {gap(r, path):.3g}"


@entry_cases(WITH_REF, "settings")
@FOREACH
def test_follows_reference_on_landscapes(entry, kw, foreach):
    "On curved landscapes too (a smaller lr there, so that no run diverges: a warning fails this test)."
    applies(entry, vectors=True, closure=True)
    paths = with_foreach(entry, foreach)
    for land, lr in ((landscapes.quadratic(kappa=10.0, angle=0.3), kw["lr"]), (landscapes.rosenbrock(), 1e-3),
                     (landscapes.beale(), 1e-3)):
        kw2 = dict(kw, lr=lr)
        ours = landscapes.trajectory(land, lambda ps: entry.cls(ps, **paths, **kw2), 100, start=land.start)
        ref = landscapes.trajectory(land, lambda ps: entry.reference(ps, **paths, **kw2), 100, start=land.start)
        assert ours.shape == ref.shape == (101, 2)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# The reference, iterate by iterate

@entry_cases(WITH_REF, "options")
@FOREACH
def test_matches_reference(entry, kw, foreach):
    compare_with_reference(entry, kw, foreach)


@entry_cases(REGISTRY, "options")
def test_foreach_equals_forloop_bit_for_bit(entry, kw):
    loop, opt_l, _ = run(lambda ps: entry.cls(groups(ps, kw), foreach=False, **kw), entry, 20)
    each, opt_e, _ = run(lambda ps: entry.cls(groups(ps, kw), foreach=True, **kw), entry, 20)
    assert_paths_equal(loop, each)
    assert_states_equal(opt_l.state_dict()["state"], opt_e.state_dict()["state"])


@ENTRIES
def test_fused_equals_forloop(entry):
    "fused=True (optbook.fused: torch's fused kernel or the compiled rule), two groups, gradients sometimes None: the for-loop's iterates in float64."
    if "fused" not in inspect.signature(entry.cls).parameters: pytest.skip(f"{entry.name} takes no fused option")
    if entry.cls.per_matrix:
        with pytest.raises(NotImplementedError, match="fused"): entry.cls(make_params(entry), fused=True)
        return
    kw = entry.compile_kw or entry.settings[-1]
    loop, _, _ = run(lambda ps: entry.cls(groups(ps, kw), foreach=False, **kw), entry, 6)
    fused, _, _ = run(lambda ps: entry.cls(groups(ps, kw), fused=True, **kw), entry, 6)
    for k, (a, b) in enumerate(zip(fused, loop)):
        for x, y in zip(a, b): torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=f"{entry.name}, step {k + 1}")


@entry_cases(REGISTRY, "settings")
@FOREACH
def test_maximize_on_minus_f_follows_minimize_on_f(entry, kw, foreach):
    applies(entry, vectors=True)
    if "maximize" not in inspect.signature(entry.cls).parameters: pytest.skip("no maximize option")
    q = landscapes.quadratic(kappa=10.0, angle=0.3)
    def path(sign, maximize):
        x = torch.tensor(q.start, dtype=F64, requires_grad=True)
        opt = entry.cls([x], foreach=foreach, maximize=maximize, **kw)
        out = []
        for _ in range(50):
            opt.zero_grad(); (sign * q(x)).backward(); opt.step(); out.append([x.detach().clone()])
        return out
    assert_paths_equal(path(-1.0, True), path(1.0, False))


@entry_cases(WITH_REF, "settings")
@FOREACH
def test_closure_and_scheduler_match_reference(entry, kw, foreach):
    "step(closure) returns the closure's loss, and a StepLR schedule changes lr in both the same way."
    applies(entry, closure=True)
    paths = with_foreach(entry, foreach)
    target = [torch.randn(s, generator=torch.Generator().manual_seed(7), dtype=F64) for s in shapes_for(entry)]
    runs = []
    for cls in (entry.cls, entry.reference):
        ps = [p.requires_grad_() for p in make_params(entry)]
        opt = cls(groups(ps, kw) if not entry.needs_closure else ps, **paths, **kw)   # L-BFGS: one group, like torch
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        def closure():
            opt.zero_grad()
            loss = sum(((p - t) ** 2).sum() * (i + 1) for i, (p, t) in enumerate(zip(ps, target)) if i != NO_GRAD)
            loss.backward()
            return loss
        losses, iterates = [], []
        for _ in range(20):
            losses.append(opt.step(closure).item()); sched.step()
            iterates.append([p.detach().clone() for p in ps])
        runs.append((losses, iterates, [g["lr"] for g in opt.param_groups], ps))
    (l_o, it_o, lr_o, ps_o), (l_r, it_r, lr_r, _) = runs
    assert lr_o == lr_r and lr_o[0] == kw["lr"] * 0.5 ** 4 and len(lr_o) == (1 if entry.needs_closure else 2)
    torch.testing.assert_close(torch.tensor(l_o), torch.tensor(l_r), rtol=RTOL, atol=ATOL)
    assert_paths_close(it_o, it_r)
    assert ps_o[NO_GRAD].grad is None


# ------------------------------------------------------------------------------------------------------------------
# state_dict: resume, and swapping with torch

DTYPES = pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])


@entry_cases(REGISTRY, "settings")
@DTYPES
@FOREACH
def test_resume_is_bit_identical(entry, kw, dtype, foreach):
    make = lambda ps: entry.cls(groups(ps, kw), foreach=foreach, **kw)
    straight, opt_a, _ = run(make, entry, 10, dtype)
    _, opt_b, b = run(make, entry, 5, dtype)
    buf = io.BytesIO(); torch.save(opt_b.state_dict(), buf); buf.seek(0)
    b2 = [t.clone() for t in b]
    opt_c = make(b2)
    opt_c.load_state_dict(torch.load(buf, weights_only=True))
    resumed, opt_c, _ = run(lambda ps: opt_c, entry, 5, dtype, params=b2, start=5)
    assert_paths_equal(straight[5:], resumed)
    assert_states_equal(opt_a.state_dict()["state"], opt_c.state_dict()["state"])


@entry_cases([e for e in REGISTRY if e.torch_state], "settings")
@FOREACH
def test_state_dicts_swap_with_torch(entry, kw, foreach):
    "10 steps of torch; its state_dict into optbook; 10 steps of both; optbook's state_dict into torch; 10 more."
    _, ref, ref_ps = run(lambda ps: entry.reference(groups(ps, kw), foreach=foreach, **kw), entry, 10)
    ours_ps = [p.clone() for p in ref_ps]
    ours = entry.cls(groups(ours_ps, kw), foreach=foreach, **kw)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))     # as from disk: torch's loader does not copy
    a, _, _ = run(lambda ps: ours, entry, 10, params=ours_ps, start=10)
    b, _, _ = run(lambda ps: ref, entry, 10, params=ref_ps, start=10)
    assert_paths_close(a, b)
    back_ps = [p.clone() for p in ours_ps]
    back = entry.reference(groups(back_ps, kw), foreach=foreach, **kw)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    a, _, _ = run(lambda ps: ours, entry, 10, params=ours_ps, start=20)
    b, _, _ = run(lambda ps: back, entry, 10, params=back_ps, start=20)
    assert_paths_close(a, b)
    assert_states_equal(ours.state_dict()["state"], back.state_dict()["state"], close=True)


# ------------------------------------------------------------------------------------------------------------------
# Construction

@pytest.mark.parametrize("entry", [e for e in REGISTRY if e.reference is not None and e.reference.__module__.startswith("torch")],
                         ids=lambda e: e.name)
def test_signature_and_defaults_match_torch(entry):
    ours, ref = inspect.signature(entry.cls), inspect.signature(entry.reference)
    # On the torch this project develops against the signatures are identical; an older torch (`make test-floor`) may
    # lack options that torch added later (AdamW's decoupled_weight_decay, ...), which optbook keeps: only those may differ.
    newer = [n for n in ours.parameters if n not in ref.parameters] if OLDER_TORCH else []
    # optbook's own options (OPTBOOK_OPTIONS) come last, keyword-only, and off by default: torch's calls stay valid
    own = [n for n in ours.parameters if n in OPTBOOK_OPTIONS and n not in ref.parameters]
    assert list(ours.parameters)[len(ours.parameters) - len(own):] == own, "optbook's own options come last"
    for n in own:
        assert ours.parameters[n].kind == inspect.Parameter.KEYWORD_ONLY and not ours.parameters[n].default, n
    newer += own
    assert [n for n in ours.parameters if n not in newer] == list(ref.parameters)
    for name, p in ref.parameters.items():
        assert ours.parameters[name].kind == p.kind, name
        assert ours.parameters[name].default == p.default, (name, ours.parameters[name].default, p.default)
    a = entry.cls(make_params(entry)[:1]).param_groups[0]
    b = entry.reference(make_params(entry)[:1]).param_groups[0]
    shared = (a.keys() & b.keys()) if OLDER_TORCH else a.keys() | b.keys()
    assert {k: a.get(k) for k in shared if k not in ("params", *newer)} == {k: b.get(k) for k in shared
                                                                            if k not in ("params", *newer)}


# ------------------------------------------------------------------------------------------------------------------
# Cautious updates (Liang et al. 2024), written once in the core: every optimizer that takes `cautious`

OPTBOOK_OPTIONS = {"cautious": "mask steps against the gradient", "fused": "optbook.fused, where torch has no fused kernel"}
CAUTIOUS = [e for e in REGISTRY if "cautious" in inspect.signature(e.cls).parameters]


def test_every_elementwise_optimizer_takes_cautious():
    own_step = lambda cls: inspect.unwrap(cls.step) is not inspect.unwrap(optbook.Optimizer.step)  # (torch wraps step)
    elementwise = {e.name for e in REGISTRY if not e.cls.per_matrix and not own_step(e.cls)}
    # AdamWScheduleFree steps y and z and evaluates at an interpolation of them: no one step Δ for a mask to act on
    assert {e.name for e in CAUTIOUS} == elementwise - {"AdamWScheduleFree"}, "cautious: every elementwise optimizer"
    for e in REGISTRY:
        if e.cls.per_matrix and "cautious" in inspect.signature(e.cls).parameters:
            with pytest.raises(NotImplementedError, match="cautious"): e.cls(make_params(e), cautious=True)


@entry_cases(CAUTIOUS, "settings")
@FOREACH
def test_cautious_masks_the_uphill_coordinates_and_renormalizes(entry, kw, foreach):
    """From the same state and gradient, the cautious step is the plain one masked and rescaled, tensor by tensor:
    θ = θ' + d/(‖φ‖₀ + 1)·Δ⊙φ with φ = 1(Δ⊙ĝ < 0), θ' the decoupled decay of θ and Δ the rest of the plain step;
    the state is the plain one. float64, tight: a mask with ≥, a scale d/‖φ‖₀, or a masked decay fails it."""
    ps, warm = make_params(entry), 3
    plain = entry.cls(groups(ps, kw), foreach=foreach, **kw)
    for k in range(warm):
        set_grads(ps, grads_for(entry, k)); plain.step()
    qs = [p.detach().clone() for p in ps]
    caut = entry.cls(groups(qs, kw), foreach=foreach, cautious=True, **kw)
    caut.load_state_dict(copy.deepcopy(plain.state_dict()))
    for g in caut.param_groups: g["cautious"] = True     # (plain groups carry no `cautious`: the optimizer's default fills it)
    before = [p.detach().clone() for p in ps]
    grads = grads_for(entry, warm)
    set_grads(ps, grads); set_grads(qs, grads)
    plain.step(); caut.step()
    sign = -1.0 if kw.get("maximize") else 1.0
    for group_index, group in enumerate(plain.param_groups):
        lam = plain.decoupled_lambda(plain.hyper(group))
        for p in group["params"]:
            i = next(j for j, x in enumerate(ps) if x is p)
            q, p0, g = qs[i], before[i], grads[i]
            if g is None:
                assert torch.equal(q, p0); continue
            decayed = p0 * (1 - group["lr"] * lam) if lam is not None else p0
            step = p.detach() - decayed
            keep = (step * g * sign < 0)
            expected = decayed + step * keep * (keep.numel() / (keep.sum().item() + 1))
            torch.testing.assert_close(q, expected, rtol=RTOL, atol=ATOL, msg=f"{entry.name}, parameter {i}")
    # (a step without memory, −η·(positive)⊙g, never goes uphill: those settings check the scale d/(d + 1) alone;
    # tests/test_frontier.py checks C-AdamW and C-Lion, which do mask, against the paper's algorithm)
    assert_states_equal(caut.state_dict()["state"], plain.state_dict()["state"])


@entry_cases(CAUTIOUS, "settings")
def test_cautious_foreach_equals_forloop_bit_for_bit(entry, kw):
    loop, _, _ = run(lambda ps: entry.cls(groups(ps, kw), foreach=False, cautious=True, **kw), entry, 5)
    each, _, _ = run(lambda ps: entry.cls(groups(ps, kw), foreach=True, cautious=True, **kw), entry, 5)
    assert_paths_equal(each, loop)


@pytest.mark.parametrize("entry", CAUTIOUS, ids=lambda e: e.name)
def test_cautious_with_fused_is_refused(entry):
    with pytest.raises(NotImplementedError, match="fused"): entry.cls(make_params(entry), cautious=True, fused=True)
    opt = entry.cls(make_params(entry), cautious=True)
    opt.param_groups[0]["fused"] = True
    with pytest.raises(NotImplementedError, match="fused"): opt.step()


@pytest.mark.parametrize("entry,bad", [(e, b) for e in REGISTRY for b in e.bad_args],
                         ids=[f"{e.name}-{b}" for e in REGISTRY for b in e.bad_args])
def test_bad_hyperparameters_are_refused(entry, bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=name) as err:
        entry.cls(make_params(entry)[:1], **bad)
    assert str(value) in str(err.value), "the message names the value"


@ENTRIES
def test_parameter_groups_given_as_generators(entry):
    "The per-layer-lr pattern of torch's docs: [{'params': model.parameters()}, ...] keeps every parameter."
    kw = entry.settings[-1]
    ps_gen, ps_list = make_params(entry), make_params(entry)
    opt_gen = entry.cls([{"params": (p for p in ps_gen[:2])}, {"params": iter(ps_gen[2:]), "lr": kw["lr"] * 0.3}], **kw)
    opt_list = entry.cls(groups(ps_list, kw), **kw)
    assert [len(g["params"]) for g in opt_gen.param_groups] == [2, len(ps_gen) - 2]
    a, _, _ = run(lambda ps: opt_gen, entry, 3, params=ps_gen)
    b, _, _ = run(lambda ps: opt_list, entry, 3, params=ps_list)
    assert_paths_equal(a, b)
    assert not torch.equal(ps_gen[0], make_params(entry)[0]), "the parameters moved"


@pytest.mark.parametrize("entry", [e for e in REGISTRY if e.complex_ok], ids=lambda e: e.name)
@FOREACH
def test_complex_parameters_are_real_pairs(entry, foreach):
    "A complex parameter moves exactly as its real and imaginary parts would as real parameters; so does the reference."
    applies(entry)
    kw = entry.settings[-1]
    gen = torch.Generator().manual_seed(3)
    z = [torch.randn(4, 3, generator=gen, dtype=torch.complex128), torch.randn(5, 2, generator=gen, dtype=torch.complex128)]
    r = [torch.view_as_real(x).clone() for x in z]
    zr = [x.clone() for x in z]
    opt_z, opt_r = entry.cls(z, foreach=foreach, **kw), entry.cls(r, foreach=foreach, **kw)
    ref = entry.reference(zr, foreach=foreach, **kw) if entry.reference else None
    for _ in range(10):
        gs = [torch.randn(x.shape, generator=gen, dtype=torch.complex128) for x in z]
        for x, y, w, g in zip(z, r, zr, gs): x.grad, y.grad, w.grad = g.clone(), torch.view_as_real(g).clone(), g.clone()
        opt_z.step(); opt_r.step()
        if ref: ref.step()
    for x, y, w in zip(z, r, zr):
        assert torch.equal(torch.view_as_real(x), y)
        if ref: torch.testing.assert_close(x, w, rtol=RTOL, atol=ATOL)
    assert all(s.dtype == torch.complex128 for st in opt_z.state.values() for s in st.values() if s.dim() > 0)


@entry_cases(REGISTRY, "settings")
@FOREACH
def test_state_follows_the_device(entry, kw, foreach):
    "Under FakeTensorMode, 'cuda' parameters of two dtypes: every state tensor is on its parameter's device and dtype."
    applies(entry)
    with FakeTensorMode():
        ps = [torch.empty(8, 3, device="cuda", dtype=dt) for dt in (torch.float32, torch.float64)]
        for p in ps: p.grad = torch.empty_like(p)
        opt = entry.cls(ps, foreach=foreach, **kw)
        for _ in range(2): opt.step()
        for p in ps:
            assert p.device.type == "cuda"
            for k, s in opt.state[p].items():
                if k == "step": assert s.device.type == "cpu"        # torch's convention: the counter stays on the CPU
                elif isinstance(s, torch.Tensor) and s.dim() > 0: assert s.device == p.device and s.dtype == p.dtype, k


DEVICES = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])


@ENTRIES
@DEVICES
def test_rule_compiles_and_lr_changes_recompile_nothing(entry, device):
    "The rule over a batch under torch.compile(fullgraph=True); 0-dim tensor hyperparameters; equal to eager."
    applies(entry)
    import torch._dynamo
    with warnings.catch_warnings():       # Inductor imports torch.utils.mkldnn, whose class body warns of a torch.jit deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.utils.mkldnn  # noqa: F401
    kw = entry.compile_kw or entry.settings[-1]
    ps_c, ps_e = make_params(entry, device=device)[:3], make_params(entry, device=device)[:3]
    opt_c, opt_e = entry.cls(ps_c, **kw), entry.cls(ps_e, **kw)
    lrs = [kw["lr"] * f for f in (1.0, 0.5, 0.25, 2.0, 0.1)]
    for k, lr in enumerate(lrs[:1]):           # step 1 eagerly: creates the state (and the first-step special case)
        for opt, ps in ((opt_c, ps_c), (opt_e, ps_e)):
            set_grads(ps, grads_for(entry, k, device=device)[:3]); opt.param_groups[0]["lr"] = lr; opt.step()
    fused = compile_update()
    torch._dynamo.reset()
    for k, lr in enumerate(lrs[1:], start=1):
        opt_c.param_groups[0]["lr"] = lr
        group = opt_c.param_groups[0]
        states = {sym: [opt_c.state[p][key] for p in ps_c] for sym, (key, _) in entry.cls.state_keys.items()
                  if all(key in opt_c.state.get(p, {}) for p in ps_c)}
        t = None
        if entry.cls.uses_step:
            for p in ps_c: opt_c.state[p]["step"] += 1
            t = opt_c.state[ps_c[0]]["step"]
        with torch._dynamo.config.patch(error_on_recompile=k > 1):   # compile at step 2, then never again
            fused(opt_c, ps_c, grads_for(entry, k, device=device)[:3], states, hyper_tensors(opt_c.hyper(group)), t)
        set_grads(ps_e, grads_for(entry, k, device=device)[:3]); opt_e.param_groups[0]["lr"] = lr; opt_e.step()
    for a, b in zip(ps_c, ps_e): torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


@ENTRIES
def test_docstring_has_the_state_table_and_the_algorithm(entry):
    "The checklist's docstring: the generated state-key ↔ symbol table, the algorithm in align*, and references."
    doc = entry.cls.__doc__ or ""
    assert "| state key | symbol | meaning |" in doc and "{state_table}" not in doc, f"{entry.name}: no state table"
    assert "\\begin{align" in doc and "References" in doc, f"{entry.name}: the algorithm or the references are missing"


def test_star_import_exports_every_optimizer():
    ns = {}
    exec("from optbook import *", ns)
    for e in REGISTRY: assert ns[e.name] is e.cls
    for name in ("Optimizer", "TensorList", "default_device"): assert name in ns


# ------------------------------------------------------------------------------------------------------------------
# The tolerances bite: deliberately wrong optimizers must fail the comparisons above

def lr_off_by_1e9(cls):
    "A step size wrong by one part in 1e9: the reference comparison must notice."
    class Mutant(cls):
        def hyper(self, group):
            h = super().hyper(group); h["eta"] = h["eta"] * (1 + 1e-9); return h
    return Mutant


def foreach_updates_a_copy(cls):
    "The bug of a rule that writes `p = p - lr * g` on the foreach path: every TensorList update lands in a copy."
    class Mutant(cls):
        def update(self, p, g, s, h, **kw):
            if isinstance(p, TensorList): p = p.clone()
            super().update(p, g, s, h, **kw)
    return Mutant


@entry_cases(WITH_REF, "settings")
@FOREACH
def test_comparison_catches_a_tiny_lr_error(entry, kw, foreach):
    with pytest.raises(AssertionError):
        compare_with_reference(Entry(**{**entry.__dict__, "cls": lr_off_by_1e9(entry.cls)}), kw, foreach)


@ENTRIES
def test_checks_catch_a_foreach_path_that_updates_nothing(entry):
    kw = entry.settings[-1]
    broken = Entry(**{**entry.__dict__, "cls": foreach_updates_a_copy(entry.cls)})
    if entry.reference is not None:
        with pytest.raises(AssertionError): compare_with_reference(broken, kw, foreach=True)
    with pytest.raises(AssertionError): test_foreach_equals_forloop_bit_for_bit(broken, kw)
    if entry.reference is not None: compare_with_reference(broken, kw, foreach=False)  # the for-loop path is unaffected


# ------------------------------------------------------------------------------------------------------------------
# Reliability: hyperparameters of the wrong type, state_dicts that do not fit, non-finite gradients (optbook.core)

def _is_real(x): return isinstance(x, (int, float)) and not isinstance(x, bool)


def real_hyperparameters(entry):
    "The constructor's arguments whose default is a real number, or a tuple of real numbers: [(name, default)]."
    return [(n, p.default) for n, p in inspect.signature(entry.cls).parameters.items()
            if _is_real(p.default) or (isinstance(p.default, tuple) and p.default and all(map(_is_real, p.default)))]


def as_strings(value):
    "What PyYAML 1.1 hands over for `lr: 1e-3`: the number as a string (each one, for a tuple)."
    return tuple(f"{x:e}" for x in value) if isinstance(value, tuple) else f"{value:e}"


def owns_step(entry):
    "Whether the optimizer replaces the core's step() (L-BFGS): then the core cannot check a group at step time."
    return entry.cls.step is not optbook.core.Optimizer.step


REAL_CASES = [(e, n, d) for e in REGISTRY for n, d in real_hyperparameters(e)]


@pytest.mark.parametrize("entry,name,default", REAL_CASES, ids=[f"{e.name}-{n}" for e, n, d in REAL_CASES])
def test_string_hyperparameters_are_refused(entry, name, default):
    "A string where a number belongs: a TypeError naming it, its value and YAML's `1.0e-3`, at construction, in a group, at step."
    bad = as_strings(default)
    shown = repr(bad[0] if isinstance(bad, tuple) else bad)
    ps = make_params(entry)[:1]
    for make in (lambda: entry.cls(ps, **{name: bad}), lambda: entry.cls([{"params": ps, name: bad}])):
        with pytest.raises(TypeError, match=name) as err: make()
        assert shown in str(err.value) and "1.0e-3" in str(err.value), str(err.value)
    assert entry.cls(ps).param_groups[0][name] == default, "the refused calls left nothing behind"
    if owns_step(entry): return
    opt = entry.cls(ps, **{k: v for k, v in entry.settings[-1].items() if k != name})
    opt.param_groups[0][name] = bad                               # a scheduler or a user writing a string later
    set_grads(ps, grads_for(entry, 0)[:1])
    before = ps[0].clone()
    with pytest.raises(TypeError, match=name): opt.step()
    assert torch.equal(ps[0], before), "refused before anything moved"


@ENTRIES
def test_numpy_scalars_are_stored_as_python_numbers(entry):
    "np.float64 / np.int64 hyperparameters (a config read by NumPy) are accepted, kept as Python numbers, and so load with weights_only."
    np = pytest.importorskip("numpy")
    npify = lambda d: np.int64(d) if isinstance(d, int) else np.float64(d)
    kw = {n: tuple(map(npify, d)) if isinstance(d, tuple) else npify(d) for n, d in real_hyperparameters(entry)}
    opt = entry.cls(make_params(entry)[:1], **kw)
    group = opt.param_groups[0]
    for n, d in real_hyperparameters(entry):
        got = group[n]
        assert got == d and all(type(x) in (int, float) for x in (got if isinstance(got, tuple) else (got,))), (n, got)
    buf = io.BytesIO(); torch.save(opt.state_dict(), buf); buf.seek(0)
    opt.load_state_dict(torch.load(buf, weights_only=True))


@ENTRIES
def test_bool_hyperparameters_are_refused(entry):
    "`momentum=True` is a mistake, not 1.0: a bool where a real number belongs is refused (an int or float is fine)."
    name, _ = real_hyperparameters(entry)[0]
    with pytest.raises(TypeError, match=name): entry.cls(make_params(entry)[:1], **{name: True})


FLAG_CASES = [(e, n) for e in REGISTRY for n, p in inspect.signature(e.cls).parameters.items() if isinstance(p.default, bool)]


@pytest.mark.parametrize("entry,name", FLAG_CASES, ids=[f"{e.name}-{n}" for e, n in FLAG_CASES])
def test_string_flags_are_refused(entry, name):
    "`amsgrad: 'false'` from a config is truthy: a flag must be a bool, at construction and in a group."
    ps = make_params(entry)[:1]
    for make in (lambda: entry.cls(ps, **{name: "false"}), lambda: entry.cls([{"params": ps, name: "false"}])):
        with pytest.raises(TypeError, match=rf"{name}: 'false' is a str, not a bool"): make()


def snapshot(opt):
    "A deep copy of what load_state_dict could change: the state by parameter index and the groups without params."
    sd = copy.deepcopy(opt.state_dict())
    return sd["state"], [{k: v for k, v in g.items()} for g in sd["param_groups"]]


def same(a, b):
    "Equal, bit for bit, through dicts, lists and tuples of tensors and numbers (L-BFGS keeps all of those)."
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def assert_unchanged(opt, before):
    assert same(snapshot(opt), before), "a refused load_state_dict changed the optimizer"


def stepped(entry, shapes=None, steps=3, kw=None):
    "An optimizer of `entry` after a few steps (its state exists), on the registry's shapes or on `shapes`."
    kw = entry.settings[-1] if kw is None else kw
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=F64, requires_grad=True) for s in (shapes or shapes_for(entry))]
    opt = entry.cls(ps if entry.needs_closure else groups(ps, kw), **kw)
    def closure():
        opt.zero_grad()
        loss = sum((p ** 2).sum() * (i + 1) for i, p in enumerate(ps)); loss.backward(); return loss
    for _ in range(steps): opt.step(closure)
    return opt


@ENTRIES
def test_a_state_dict_for_other_shapes_is_refused_and_changes_nothing(entry):
    "The same optimizer saved for a model whose first parameter had another shape: a ValueError naming it; nothing written."
    if entry.cls.init_state is optbook.core.Optimizer.init_state:
        pytest.skip(f"{entry.name} keeps its own state (not per parameter via init_state): the core checks only its keys")
    shapes = shapes_for(entry)
    other = [(5, 3)] + shapes[1:]
    ours, theirs = stepped(entry), stepped(entry, other)
    before = snapshot(ours)
    with pytest.raises(ValueError, match=rf"{entry.name}.*parameter 0 has shape \(4, 3\), but its saved state '.+' has shape \(5"):
        ours.load_state_dict(theirs.state_dict())
    assert_unchanged(ours, before)


# Optimizers whose state_dicts have the same layout (state keys, hyperparameter names): loading one into the other
# cannot be told from loading a checkpoint of the same algorithm. AdamW is Adam with decoupled decay; SignSGD's buffer
# has SGD's key and shape, and SGD's groups hold every hyperparameter SignSGD has.
SAME_LAYOUT = {("Adam", "AdamW"), ("AdamW", "Adam"), ("SGD", "SignSGD")}


@ENTRIES
def test_another_optimizers_state_dict_is_refused_and_changes_nothing(entry):
    "Adam's state into Lion, SGD's into Adam, ...: every other registered optimizer's state_dict is refused (ValueError)."
    ours = stepped(entry)
    before = snapshot(ours)
    for other in REGISTRY:
        if other is entry or (other.matrices_only and not entry.matrices_only): continue
        theirs = stepped(other, shapes_for(entry))
        if (other.name, entry.name) in SAME_LAYOUT:
            copy.deepcopy(ours).load_state_dict(theirs.state_dict())
            continue
        with pytest.raises(ValueError, match=entry.name):
            ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
        assert_unchanged(ours, before)


NONFINITE = pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
HIDES_NONFINITE = {}   # name -> reason: known gaps (strict xfails); none at present


@ENTRIES
@NONFINITE
def test_a_nonfinite_gradient_reaches_the_parameters(entry, bad, request):
    "The core's policy (torch's): a NaN or ±inf gradient entry is not filtered; the step makes its parameter non-finite."
    if entry.name in HIDES_NONFINITE:
        request.applymarker(pytest.mark.xfail(strict=True, reason=HIDES_NONFINITE[entry.name]))
    kw = entry.settings[-1]
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=F64, requires_grad=True) for s in shapes_for(entry)]
    opt = entry.cls(ps, **kw)
    def closure():
        opt.zero_grad()
        loss = sum((p ** 2).sum() for p in ps); loss.backward()
        ps[0].grad.view(-1)[1] = bad
        return loss
    for _ in range(2): opt.step(closure)
    assert not torch.isfinite(ps[0]).all(), f"{entry.name}: a {bad} gradient left the parameter finite"
    if not entry.needs_closure:      # L-BFGS's direction is one flat vector over all parameters: the NaN reaches all
        assert torch.isfinite(ps[2]).all(), f"{entry.name}: the other parameters are untouched by it"


# ------------------------------------------------------------------------------------------------------------------
# A real GPU, when there is one

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@entry_cases(WITH_REF, "settings")
@pytest.mark.parametrize("foreach", [None, False, True], ids=["default", "forloop", "foreach"])
def test_matches_reference_on_cuda(entry, kw, foreach):
    compare_with_reference(entry, kw, foreach, device="cuda")                    # float64 on the GPU: tight
    compare_with_reference(entry, kw, foreach, device="cuda", dtype=torch.float32, rtol=1e-5, atol=1e-6)
    opt = entry.cls(make_params(entry, device="cuda"), foreach=foreach, **kw)
    ps = [p for g in opt.param_groups for p in g["params"]]
    set_grads(ps, grads_for(entry, 0, device="cuda")); opt.step()
    assert all(s.is_cuda for st in opt.state.values() for k, s in st.items() if k != "step")
