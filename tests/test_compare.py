"""optbook.compare: the book's comparison protocol. Each test would fail if the protocol were bent: a budget that a
multi-evaluation step could overrun, a grid whose best point is left at an edge, a diverged run that could win, a
ranking taken from one seed instead of the median, a trace that reports the wrong iterate."""
import math

import pytest
import torch

import optbook
from optbook.compare import (BudgetExhausted, Trace, check_grid, evals_to_target, log_grid, run_budget, sweep,
                             plot_best, plot_sensitivity)

F64 = torch.float64


def quadratic(h=(1.0, 100.0)):
    "½ Σ h_i θ_i² from a seeded random start."
    h = torch.tensor(h, dtype=F64)
    def problem(seed):
        g = torch.Generator().manual_seed(seed)
        theta = torch.randn(len(h), generator=g, dtype=F64).requires_grad_()
        return [theta], lambda: 0.5 * (h * theta * theta).sum()
    return problem


sgd = lambda params, lr, **hp: optbook.SGD(params, lr=lr, **hp)


class Greedy(torch.optim.Optimizer):
    "A fake optimizer that calls the closure `k` times per step and moves by -lr*g after each call."
    def __init__(self, params, lr, k):
        super().__init__(params, dict(lr=lr)); self.k = k
    @torch.no_grad()
    def step(self, closure):
        first = None
        for _ in range(self.k):
            with torch.enable_grad(): loss = closure()
            first = loss if first is None else first
            for g in self.param_groups:
                for p in g["params"]: p.add_(p.grad, alpha=-g["lr"])
        return first


def test_gradient_descent_trace_is_exact():
    tr = run_budget(quadratic(), sgd, 0.01, 25)
    theta0 = quadratic()(0)[0][0].detach()
    h = torch.tensor([1.0, 100.0], dtype=F64)
    want = torch.stack([0.5 * (h * ((1 - 0.01 * h) ** k * theta0) ** 2).sum() for k in range(26)])
    assert tr.evals.tolist() == list(range(26)) and tr.steps == 25
    torch.testing.assert_close(tr.loss, want, rtol=1e-13, atol=0)
    assert tr.final == pytest.approx(want[-1].item(), rel=1e-13)


@pytest.mark.parametrize("k,budget", [(3, 10), (4, 8), (5, 4), (1, 7)])
def test_budget_is_enforced_and_a_cut_step_is_undone(k, budget):
    problem = quadratic()
    tr = run_budget(problem, lambda ps, lr: Greedy(ps, lr, k), 0.001, budget)
    full_steps = budget // k
    assert tr.steps == full_steps and int(tr.evals[-1]) == full_steps * k <= budget
    assert tr.evals[:-1].tolist() == [i * k for i in range(full_steps)]
    # the final parameters are those after the last complete step: k * full_steps gradient steps of size 0.001
    theta = problem(0)[0][0].detach().clone()
    h = torch.tensor([1.0, 100.0], dtype=F64)
    theta = (1 - 0.001 * h) ** (k * full_steps) * theta
    assert tr.final == pytest.approx((0.5 * h * theta * theta).sum().item(), rel=1e-12)


def test_lbfgs_line_search_evaluations_count():
    calls = []
    def problem(seed):
        x = torch.tensor([-1.2, 1.0], dtype=F64, requires_grad=True)
        def f():
            calls.append(1)
            return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        return [x], f
    tr = run_budget(problem, lambda ps, lr: torch.optim.LBFGS(ps, lr=lr, line_search_fn="strong_wolfe"), 1.0, 30)
    assert int(tr.evals[-1]) <= 30 and tr.evals[-1] > 20   # many evaluations per step, all counted
    with_grad = len(calls) - (tr.steps + 2)                 # the no-grad evaluations: the start, each step, the end
    assert with_grad <= 30 + 20                             # (an aborted step's evaluations count toward the cut)


def test_divergence_is_inf_and_never_wins():
    bad = run_budget(quadratic(), sgd, 0.05, 40)          # η > 2/h_max: diverges
    assert bad.diverged and bad.final == math.inf
    sw = sweep(quadratic(), {"GD": sgd}, 40, log_grid(1e-3, 1e-1))
    assert sw.best["GD"].score < math.inf and sw.best["GD"].lr < 0.02


def test_nan_loss_counts_as_diverged():
    def problem(seed):
        x = torch.ones(1, dtype=F64, requires_grad=True)
        return [x], lambda: (x * x).sum() * torch.where(x < 0.5, torch.tensor(math.nan, dtype=F64), torch.tensor(1.0, dtype=F64))
    tr = run_budget(problem, sgd, 0.4, 20)
    assert tr.diverged and tr.final == math.inf


def test_grid_rules():
    assert len(log_grid(1e-3, 1e-1)) == 5 and log_grid(1e-3, 1e-1)[0] == 1e-3
    assert log_grid(1e-3, 1e-1)[-1] == pytest.approx(0.1, rel=1e-12)
    for bad in ([1e-3, 1e-2, 1e-1], [0.001, 0.002, 0.003, 0.004, 0.005], [0, 1e-3, 1e-2, 1e-1, 1]):
        with pytest.raises(ValueError, match="at least 5"): check_grid("M", bad)
    with pytest.raises(ValueError, match="lo < hi"): log_grid(1.0, 0.1)


@pytest.mark.parametrize("lo,hi", [(1e-6, 1e-4), (1.0, 100.0)])
def test_an_edge_best_point_extends_the_grid(lo, hi):
    "GD's best η on this quadratic is 0.01-0.0178; a grid below or above it must grow until the best is interior."
    sw = sweep(quadratic(), {"GD": sgd}, 30, log_grid(lo, hi, per_decade=2), extend=8)
    grid, best = sw.grids["GD"], sw.best["GD"].lr
    i = grid.index(best)
    assert 0 < i < len(grid) - 1 and len(grid) > 5
    assert 3e-3 < best < 3e-2
    assert all(grid[j + 1] / grid[j] == pytest.approx(10 ** 0.5, rel=1e-9) for j in range(len(grid) - 1))


def test_still_at_edge_raises():
    with pytest.raises(RuntimeError, match="edge"):
        sweep(quadratic(), {"GD": sgd}, 30, log_grid(1e-6, 1e-4), extend=1)


def test_all_diverged_raises_or_extends_downward():
    with pytest.raises(RuntimeError, match="every run diverged"):
        sweep(quadratic(), {"GD": sgd}, 30, log_grid(1.0, 100.0), extend=2)
    sw = sweep(quadratic(), {"GD": sgd}, 30, log_grid(0.1, 10.0), extend=4)   # all diverge: the grid grows downward
    assert sw.grids["GD"][0] < 0.02 < sw.grids["GD"][-1] and 3e-3 < sw.best["GD"].lr < 3e-2


def test_median_over_seeds_decides():
    "A method that is perfect on one seed and poor on the others loses to one that is good on every seed."
    def problem(seed):
        problem.seed = seed
        x = torch.tensor([1.0], dtype=F64, requires_grad=True)
        return [x], (lambda: (x * x).sum())
    # seed 0: lr 0.5 lands on the minimum in one step whatever the grid says; other seeds: heavy momentum, slow
    lucky = lambda ps, lr: optbook.SGD(ps, lr=0.5) if problem.seed == 0 else optbook.SGD(ps, lr=lr, momentum=0.99)
    steady = lambda ps, lr: optbook.SGD(ps, lr=lr)
    sw = sweep(problem, {"lucky": lucky, "steady": steady}, 20, log_grid(1e-3, 1e-1), seeds=(0, 1, 2), extend=6)
    assert sw.ranking() == ["steady", "lucky"]
    assert min(t.final for t in sw.best["lucky"].traces) == 0 < sw.best["steady"].score < sw.best["lucky"].score


def test_hparams_are_swept_per_method():
    sw = sweep(quadratic(), {"GD": sgd, "HB": sgd}, 60, log_grid(1e-3, 1e-1),
               hparams={"HB": {"momentum": [0.0, 0.5, 0.9]}}, seeds=(0, 1))
    assert len(sw.runs) == 5 + 15 and sw.best["HB"].hp == {"momentum": 0.9}
    # HB with momentum 0 is GD: the same finals at every η
    for lr in sw.grids["GD"]:
        assert sw.finals("HB", lr, {"momentum": 0.0}) == sw.finals("GD", lr)
    with pytest.raises(ValueError, match="not compared"):
        sweep(quadratic(), {"GD": sgd}, 10, log_grid(1e-3, 1e-1), hparams={"HB": {"momentum": [0.9]}})


def test_evals_to_target():
    tr = Trace(torch.tensor([0, 3, 6, 9]), torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=F64), 0.5, False, 3)
    assert evals_to_target(tr, 2.0) == 3 and evals_to_target(tr, 0.5) == 9 and evals_to_target(tr, 0.1) == math.inf
    sw = sweep(quadratic(), {"GD": sgd}, 60, log_grid(1e-3, 1e-1))
    best = sw.best["GD"].traces[0]
    target = best.loss[0].item() * 0.5
    n = sw.steps_to("GD", target)[0]
    assert best.loss[best.evals.tolist().index(int(n))] <= target
    assert (best.loss[best.evals < n] > target).all()


def test_several_optimizers_share_the_closure():
    "make may return a tuple (e.g. Muon + AdamW): one closure call per step, all optimizers step."
    def problem(seed):
        a = torch.ones(2, dtype=F64, requires_grad=True); b = torch.ones(3, dtype=F64, requires_grad=True)
        return [a, b], (lambda: (a * a).sum() + (b * b).sum())
    tr = run_budget(problem, lambda ps, lr: (optbook.SGD([ps[0]], lr=lr), optbook.SGD([ps[1]], lr=lr)), 0.1, 10)
    assert tr.final == pytest.approx(5 * 0.8 ** 20, rel=1e-12) and tr.evals.tolist() == list(range(11))


def test_stochastic_problem_reports_the_full_loss():
    full_calls = []
    def problem(seed):
        x = torch.ones(1, dtype=F64, requires_grad=True)
        gen = torch.Generator().manual_seed(seed)
        def loss_fn(): return ((x - torch.randn(1, generator=gen, dtype=F64)) ** 2).sum()
        def full():
            full_calls.append(1)
            return (x * x).sum() + 1
        loss_fn.evaluate = full
        return [x], loss_fn
    tr = run_budget(problem, sgd, 0.1, 15, seed=3)
    assert (tr.loss >= 1).all() and len(full_calls) == 1 + 15 + 1   # the start, before each step, the end
    again = run_budget(problem, sgd, 0.1, 15, seed=3)
    assert torch.equal(tr.loss, again.loss)


def test_bad_budget_and_seeds():
    with pytest.raises(ValueError, match="budget"): run_budget(quadratic(), sgd, 0.1, 0)
    with pytest.raises(ValueError, match="budget"): sweep(quadratic(), {"GD": sgd}, 2.5, log_grid(1e-3, 1e-1))
    with pytest.raises(ValueError, match="seed"): sweep(quadratic(), {"GD": sgd}, 5, log_grid(1e-3, 1e-1), seeds=())
    with pytest.raises(TypeError, match="module or tensors"):
        run_budget(lambda s: ("not params", lambda: 0), sgd, 0.1, 3)


def test_plots_draw_every_method():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sw = sweep(quadratic(), {"GD": sgd, "HB": lambda ps, lr: optbook.SGD(ps, lr=lr, momentum=0.9)}, 30,
               log_grid(1e-3, 1e-1), seeds=(0, 1))
    ax = plot_sensitivity(sw)
    assert {l.get_label() for l in ax.get_lines()} >= {"GD", "HB"}
    ax = plot_best(sw)
    labels = [l.get_label() for l in ax.get_lines()]
    assert len(labels) == 2 and all("η=" in l for l in labels)
    plt.close("all")


def test_tuning_on_time_to_target_picks_the_fastest_setting_not_the_lowest_final_loss():
    "On ½(100θ₁² + θ₂²) the η that reaches the target first is not the one with the lowest final loss; `target` picks the former."
    grid, problem, target = log_grid(3e-4, 3e-2, per_decade=6), quadratic((100.0, 1.0)), 5.0
    by_final = sweep(problem, {"GD": sgd}, 60, grid)
    by_time = sweep(problem, {"GD": sgd}, 60, grid, target=target)
    steps = {lr: evals_to_target(by_time.runs[("GD", lr, ())][0], target) for lr in by_time.grids["GD"]}
    fastest = min(steps, key=steps.get)
    assert by_time.best["GD"].lr == fastest == grid[9] and steps[fastest] < steps[grid[10]]
    assert by_final.best["GD"].lr == grid[10] != fastest                 # the final loss prefers the larger η
    assert by_time.best["GD"].score == by_time.finals("GD", fastest)[0]   # Best.score is the final loss either way
