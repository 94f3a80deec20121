"""Chapter 10 (optbook.search): the Gaussian process, expected improvement, the Bayesian-optimization loop, and `tune`.

- the GP equals a float64 NumPy reference that solves the linear systems directly, interpolates without noise, falls
  back to the prior far from the data, never reports a negative variance, survives duplicated points (jitter), and
  its log marginal likelihood is the multivariate normal's log density;
- expected improvement equals the closed form written with SciPy's normal, a Monte Carlo estimate, and its σ → 0 limit,
  with finite gradients at σ = 0;
- `bayes_opt` is reproducible by seed, stays in its box, follows the box's device and dtype, finds the minimum of
  a smooth function, does not depend on the scale of f (μ₀, s², σ²_noise, ξ and the jitter are all relative to y's
  spread: scaling f by a power of two gives the same points), and survives diverged runs (inf, NaN); bad boxes
  (including infinite ones) and counts are refused by name;
- `tune` runs a real Optuna study: reproducible with a seeded sampler, pruned trials exactly when a pruner is on, a
  study persisted in SQLite and resumed, a clear ImportError when Optuna is missing, and `import optbook.search`
  never imports Optuna (checked in a fresh interpreter); each kind of spec becomes the Optuna distribution it names;
- `optimizer_objective` reports on schedule, is deterministic, and follows the data's dtype (a float64 net for float64 data);
- the whole module runs on fake CUDA tensors (FakeTensorMode) and, where a GPU exists, on a real one.
"""
import math, subprocess, sys

import numpy as np
import pytest
import torch
from scipy.stats import norm

import optbook
from optbook.digits import digits_split
from optbook.search import (GaussianProcess, bayes_opt, bo_model, expected_improvement, optimizer_objective,
                            rbf_kernel, tune)

F64 = dict(dtype=torch.float64)


def _data(n=9, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, **F64)
    return X, torch.sin(5 * X[:, 0]) + X[:, -1] ** 2


# ---------------------------------------------------------------- the Gaussian process

@pytest.mark.parametrize("ls, signal, noise, mean", [(0.3, 1.5, 0.01, 0.2), (0.1, 0.5, 1e-4, -1.0), (1.0, 2.0, 0.3, 0.0)])
def test_gp_equals_a_direct_float64_solve(ls, signal, noise, mean):
    X, y = _data()
    Xs = torch.rand(50, 2, generator=torch.Generator().manual_seed(1), **F64) * 2 - 0.5
    gp = GaussianProcess(X, y, length_scale=ls, signal=signal, noise=noise, mean=mean, jitter=0.0)
    k = lambda A, B: signal * np.exp(-((A[:, None, :] - B[None]) ** 2).sum(-1) / (2 * ls ** 2))
    Xn, yn, Xsn = X.numpy(), y.numpy(), Xs.numpy()
    A = k(Xn, Xn) + noise * np.eye(len(Xn))
    ref_mu = mean + k(Xsn, Xn) @ np.linalg.solve(A, yn - mean)
    ref_cov = k(Xsn, Xsn) - k(Xsn, Xn) @ np.linalg.solve(A, k(Xn, Xsn))
    mu, var = gp.predict(Xs)
    np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(var.numpy(), np.clip(np.diag(ref_cov), 0, None), rtol=0, atol=1e-10)
    _, cov = gp.predict(Xs, full_cov=True)
    np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=0, atol=1e-10)
    lml = torch.distributions.MultivariateNormal(torch.full((len(y),), float(mean), **F64), torch.tensor(A)).log_prob(y)
    assert torch.isclose(gp.log_marginal_likelihood(), lml, rtol=0, atol=1e-9)


def test_gp_interpolates_without_noise_and_returns_to_the_prior_far_away():
    X, y = _data()
    gp = GaussianProcess(X, y, length_scale=0.25, signal=1.3, noise=0.0, mean=0.4)
    mu, var = gp.predict(X)
    assert torch.allclose(mu, y, atol=1e-7) and var.max() < 1e-7
    mu_far, var_far = gp.predict(torch.full((3, 2), 100.0, **F64))
    assert torch.allclose(mu_far, torch.full((3,), 0.4, **F64)) and torch.allclose(var_far, torch.full((3,), 1.3, **F64))
    # the variance never goes negative, even between close points where cancellation is worst
    dense = torch.rand(2000, 2, generator=torch.Generator().manual_seed(2), **F64)
    assert (gp.predict(dense)[1] >= 0).all()
    # more noise, more posterior variance at the data
    assert (GaussianProcess(X, y, 0.25, 1.3, noise=0.1).predict(X)[1] > 1e-3).all()


def test_gp_defaults_take_mean_and_variance_from_y():
    X, y = _data()
    gp = GaussianProcess(X, y)
    assert torch.isclose(torch.as_tensor(gp.mean), y.mean()) and torch.isclose(torch.as_tensor(gp.signal), y.var())
    const = GaussianProcess(X[:3], torch.full((3,), 2.0, **F64))       # zero variance: s² = 1
    assert float(const.signal) == 1.0 and torch.allclose(const.predict(X)[0], torch.full((9,), 2.0, **F64))


def test_duplicated_points_need_jitter_and_get_it():
    X, y = _data(4)
    X2, y2 = torch.cat([X, X[:1]]), torch.cat([y, y[:1] + 0.2])          # the same point twice, two values
    gp = GaussianProcess(X2, y2, 0.3, 1.0, noise=0.0, mean=0.0, jitter=0.0)   # singular K: the retries add jitter
    assert torch.isfinite(gp.alpha).all()
    assert torch.isclose(gp.predict(X[:1])[0][0], y[0] + 0.1, atol=1e-3)    # the average of the two observations


def test_fit_picks_the_largest_marginal_likelihood():
    X, y = _data(12)
    grid = (0.02, 0.1, 0.3, 1.0, 5.0)
    best = GaussianProcess.fit(X, y, length_scales=grid, signal=1.0, noise=1e-4)
    scores = {ls: float(GaussianProcess(X, y, ls, 1.0, 1e-4).log_marginal_likelihood()) for ls in grid}
    assert best.length_scale == max(scores, key=scores.get)
    with pytest.raises(ValueError, match="length_scales is empty"): GaussianProcess.fit(X, y, length_scales=())


@pytest.mark.parametrize("kwargs, match", [
    (dict(length_scale=0.0), "length_scale must be positive, got 0.0"),
    (dict(noise=-1e-3), "noise must be >= 0, got -0.001"),
    (dict(signal=-1.0), "signal must be positive, got -1.0"),
])
def test_gp_refuses_bad_hyperparameters(kwargs, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match): GaussianProcess(X, y, **kwargs)


def test_gp_refuses_bad_shapes():
    X, y = _data()
    with pytest.raises(ValueError, match=r"X must be \(n, D\), got shape \(9,\)"): GaussianProcess(X[:, 0], y)
    with pytest.raises(ValueError, match=r"y must have shape \(9,\), got \(8,\)"): GaussianProcess(X, y[:8])
    with pytest.raises(ValueError, match="at least one observation"): GaussianProcess(X[:0], y[:0])
    with pytest.raises(ValueError, match="length_scale must be positive"): rbf_kernel(X, X, -1.0)


# ---------------------------------------------------------------- expected improvement

def test_ei_equals_the_closed_form_with_scipy():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=200), rng.uniform(0.01, 3, size=200)
    for best, xi in [(0.0, 0.0), (0.7, 0.1), (-2.0, 0.5)]:
        z = (best - mu - xi) / sigma
        ref = (best - mu - xi) * norm.cdf(z) + sigma * norm.pdf(z)
        got = expected_improvement(torch.tensor(mu), torch.tensor(sigma), best, xi).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)


def test_ei_equals_a_monte_carlo_estimate():
    draws = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), **F64)
    for m, s, best, xi in [(0.0, 1.0, 0.0, 0.0), (1.0, 0.3, 0.5, 0.0), (-0.5, 2.0, 0.2, 0.1), (0.3, 0.05, 0.31, 0.0)]:
        sample = (best - xi - (m + s * draws)).clamp_min(0)
        got = expected_improvement(torch.tensor([m], **F64), torch.tensor([s], **F64), best, xi).item()
        assert abs(sample.mean().item() - got) < 5 * sample.std().item() / 1000 + 1e-12


def test_ei_at_and_near_zero_sigma_is_the_plain_improvement():
    mu = torch.linspace(-1, 1, 21, **F64)
    plain = (0.2 - 0.05 - mu).clamp_min(0)
    assert torch.allclose(expected_improvement(mu, torch.zeros_like(mu), 0.2, 0.05), plain, rtol=0, atol=1e-15)
    for s in (1e-3, 1e-6, 1e-12):
        assert torch.allclose(expected_improvement(mu, torch.full_like(mu, s), 0.2, 0.05), plain, atol=s)
    m, s = mu.clone().requires_grad_(), torch.zeros_like(mu).requires_grad_()
    expected_improvement(m, s, 0.2, 0.05).sum().backward()
    assert torch.isfinite(m.grad).all() and torch.isfinite(s.grad).all()


def test_ei_grows_with_sigma_and_falls_with_mu():
    mu, sigma = torch.linspace(-1, 1, 50, **F64), torch.linspace(0.1, 2, 50, **F64)
    assert (expected_improvement(torch.zeros(50, **F64), sigma, 0.0).diff() > 0).all()
    assert (expected_improvement(mu, torch.ones(50, **F64), 0.0).diff() < 0).all()
    assert (expected_improvement(mu, sigma, 0.0) > 0).all()


def test_ei_refuses_bad_input():
    with pytest.raises(ValueError, match="xi must be >= 0, got -0.1"):
        expected_improvement(torch.zeros(2), torch.ones(2), 0.0, xi=-0.1)
    with pytest.raises(ValueError, match="sigma must be a floating tensor"):
        expected_improvement(torch.zeros(2), torch.ones(2, dtype=torch.long), 0.0)


# ---------------------------------------------------------------- bayes_opt

def _bowl(x): return float(((x - torch.tensor([0.3, -0.6], dtype=x.dtype)) ** 2).sum())

BOX = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]], **F64)


def test_bayes_opt_finds_the_minimum_and_is_reproducible():
    res = bayes_opt(_bowl, BOX, n_iter=15, n_init=4, seed=0)
    assert res.X.shape == (19, 2) and res.y.shape == (19,) and res.n_init == 4
    assert ((res.X >= -1) & (res.X <= 1)).all()
    assert res.best_y < 1e-2 and torch.allclose(res.best_x, torch.tensor([0.3, -0.6], **F64), atol=0.1)
    assert res.best_y == res.y.min().item() and torch.equal(res.best_x, res.X[res.y.argmin()])
    assert torch.equal(bayes_opt(_bowl, BOX, n_iter=15, n_init=4, seed=0).X, res.X)
    assert not torch.equal(bayes_opt(_bowl, BOX, n_iter=15, n_init=4, seed=1).X, res.X)
    # better than random search with the same budget, on this smooth bowl
    rand = -1 + 2 * torch.rand(19, 2, generator=torch.Generator().manual_seed(0), **F64)
    assert res.best_y < min(_bowl(x) for x in rand)


def test_bayes_opt_without_iterations_is_the_random_design():
    res = bayes_opt(_bowl, BOX, n_iter=0, n_init=5, seed=3)
    assert res.X.shape == (5, 2)
    assert torch.equal(res.X[:5], bayes_opt(_bowl, BOX, n_iter=2, n_init=5, seed=3).X[:5])


def test_bo_model_is_the_gp_of_the_loop():
    res = bayes_opt(_bowl, BOX, n_iter=3, n_init=4, seed=0)
    gp = bo_model(res.X[:4], res.y[:4], BOX)
    assert torch.allclose(gp.predict((res.X[:4] + 1) / 2)[0], res.y[:4], atol=1e-3)   # unit box inside, y's scale outside


def test_bayes_opt_keeps_the_box_dtype_and_shows_progress_on_stdout(capfd):
    box32 = BOX.float()
    res = bayes_opt(_bowl, box32, n_iter=2, n_init=2, progress=True)
    assert res.X.dtype == torch.float32 and res.y.dtype == torch.float32
    out, err = capfd.readouterr()
    assert "bayes_opt" in out and err == "", "the bar goes to stdout: the book fails on any stderr"


@pytest.mark.parametrize("bounds, kwargs, match", [
    (torch.tensor([[1.0, 0.0]]), {}, r"every low must be below its high, got \[\[1.0, 0.0\]\]"),
    (torch.tensor([0.0, 1.0]), {}, r"bounds must be \(D, 2\)"),
    (torch.tensor([[0, 1]]), {}, "bounds must be floating point"),
    (BOX, dict(n_init=0), r"Invalid n_init: 0 \(must be an int >= 1\)"),
    (BOX, dict(n_iter=-1), r"Invalid n_iter: \-1 \(must be an int >= 0\)"),
    (BOX, dict(n_candidates=2.5), r"Invalid n_candidates: 2\.5 \(must be an int >= 1\)"),
])
def test_bayes_opt_refuses_bad_input(bounds, kwargs, match):
    with pytest.raises(ValueError, match=match): bayes_opt(_bowl, bounds, **{"n_iter": 1, **kwargs})


# ---------------------------------------------------------------- devices

def test_gp_and_ei_follow_the_input_device_under_fake_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        X, y = torch.empty(6, 2, device="cuda", **F64), torch.empty(6, device="cuda", **F64)
        gp = GaussianProcess(X, y, 0.3, signal=1.0, noise=1e-6, mean=0.0)
        mu, var = gp.predict(torch.empty(10, 2, device="cuda", **F64))
        ei = expected_improvement(mu, var.sqrt(), 0.0)
        assert mu.device.type == var.device.type == ei.device.type == "cuda"
        assert gp.chol.device.type == "cuda" and gp.log_marginal_likelihood().device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_real_gpu():
    X, y = _data()
    cpu = GaussianProcess(X, y, 0.3, 1.0, 1e-4, 0.0)
    gpu = GaussianProcess(X.cuda(), y.cuda(), 0.3, 1.0, 1e-4, 0.0)
    Xs = torch.rand(40, 2, **F64)
    for a, b in zip(cpu.predict(Xs), gpu.predict(Xs.cuda())):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-9)
    res = bayes_opt(_bowl, BOX.cuda(), n_iter=4, n_init=3, seed=0)
    assert res.X.is_cuda and res.best_y == res.y.min().item()
    data = digits_split("cuda")
    F = optimizer_objective(lambda ps, lr: optbook.SGD(ps, lr=lr), data, steps=5)
    assert math.isfinite(F(dict(lr=0.1)))


# ---------------------------------------------------------------- optimizer_objective

@pytest.fixture(scope="module")
def digits():
    return digits_split()


def test_optimizer_objective_reports_and_is_deterministic(digits):
    F = optimizer_objective(lambda ps, lr, momentum: optbook.SGD(ps, lr=lr, momentum=momentum), digits, steps=12, report_every=5)
    seen = []
    v = F(dict(lr=0.3, momentum=0.5), lambda value, step: seen.append((step, value)))
    assert [s for s, _ in seen] == [5, 10, 12] and seen[-1][1] == v
    assert F(dict(lr=0.3, momentum=0.5)) == v
    assert F(dict(lr=0.0, momentum=0.0)) > v                       # training helps
    other_init = optimizer_objective(lambda ps, lr, momentum: optbook.SGD(ps, lr=lr, momentum=momentum), digits, 12, seed=1)
    assert other_init(dict(lr=0.3, momentum=0.5)) != v


def test_optimizer_objective_turns_a_diverged_run_into_inf(digits):
    class Poison(torch.optim.Optimizer):
        def __init__(self, params): super().__init__(params, {})
        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]: p.fill_(float("nan"))
    assert optimizer_objective(lambda ps: Poison(ps), digits, steps=3)({}) == math.inf


def test_optimizer_objective_refuses_bad_counts(digits):
    with pytest.raises(ValueError, match=r"Invalid steps: 0 \(must be an int >= 1\)"): optimizer_objective(None, digits, 0)
    with pytest.raises(ValueError, match=r"Invalid report_every: True \(must be an int >= 1\)"):
        optimizer_objective(None, digits, 5, report_every=True)
    with pytest.raises(ValueError, match=r"data must be \(X_train, y_train, X_val, y_val\), got tuple of length 2"):
        optimizer_objective(None, digits[:2], 5)


# ---------------------------------------------------------------- tune (Optuna)

try:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
except ImportError:                 # the GP tests above run without it; these need it (a dev requirement)
    optuna = None
needs_optuna = pytest.mark.skipif(optuna is None, reason="optuna is not installed")

SPACE = dict(x=(-2.0, 2.0), k=(0, 4, "int"), lr=(1e-4, 1.0, "log"), act=["tanh", "relu"])


def _quad(hp, report):
    return (hp["x"] - 0.5) ** 2 + (hp["k"] - 1) ** 2 + math.log10(hp["lr"] / 1e-2) ** 2 + (hp["act"] == "relu")


@needs_optuna
def test_tune_is_reproducible_with_a_seeded_sampler():
    a, b, c = (tune(_quad, SPACE, 15, seed=s) for s in (0, 0, 1))
    params = lambda s: [t.params for t in s.trials]
    assert params(a) == params(b) and params(a) != params(c)
    assert len(a.trials) == 15 and all(t.state == optuna.trial.TrialState.COMPLETE for t in a.trials)
    for t in a.trials:
        assert -2 <= t.params["x"] <= 2 and t.params["k"] in range(5) and 1e-4 <= t.params["lr"] <= 1 and t.params["act"] in SPACE["act"]
    assert a.best_value == min(t.value for t in a.trials)
    assert tune(lambda hp, r: -_quad(hp, r), SPACE, 5, direction="maximize").direction == optuna.study.StudyDirection.MAXIMIZE


def _curve(hp, report):
    "A learning curve whose level is set by x: bad x stays high from the first report."
    for step in range(1, 11):
        value = (hp["x"] - 0.5) ** 2 + 1.0 / step
        report(value, step)
    return value


@needs_optuna
def test_pruned_trials_appear_only_with_a_pruner():
    space = dict(x=(-2.0, 2.0))
    plain = tune(_curve, space, 20, seed=0)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in plain.trials)
    assert all(len(t.intermediate_values) == 10 for t in plain.trials), "report records every value"
    pruned = tune(_curve, space, 20, seed=0, pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    stopped = [t for t in pruned.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert stopped and all(max(t.intermediate_values) < 10 for t in stopped)
    assert len(pruned.trials) == 20 and pruned.best_value == min(
        t.value for t in pruned.trials if t.state == optuna.trial.TrialState.COMPLETE)


@needs_optuna
def test_tune_persists_in_sqlite_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = [t.params for t in tune(_quad, SPACE, 6, storage=url, study_name="s").trials]
    again = tune(_quad, SPACE, 4, storage=url, study_name="s", seed=1)
    assert [t.number for t in again.trials] == list(range(10))
    assert [t.params for t in again.trials[:6]] == first
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 10
    calls = []
    tune(_quad, SPACE, 2, storage=url, study_name="s", callbacks=[lambda study, trial: calls.append(trial.number)])
    assert calls == [10, 11]


def test_tune_without_optuna_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)                 # `import optuna` now raises ImportError
    with pytest.raises(ImportError, match="needs Optuna.*pip install optuna"):
        tune(_quad, SPACE, 1)


@needs_optuna
@pytest.mark.parametrize("space, n, kwargs, match", [
    ({}, 1, {}, "space is empty"),
    (dict(x=(1.0, 0.0)), 1, {}, r"space\['x'\]: low must be below high, got \(1.0, 0.0\)"),
    (dict(x=(0.0, 1.0, "cubic")), 1, {}, r"space\['x'\] must be \(low, high\)"),
    (dict(x=(0.0, 1.0, "log")), 1, {}, r"a log range needs low > 0"),
    (dict(x=[]), 1, {}, "empty list of choices"),
    (dict(x=(0.0, 1.0)), 0, {}, r"Invalid n_trials: 0 \(must be an int >= 1\)"),
    (dict(x=(0.0, 1.0)), 1, dict(direction="up"), "direction must be 'minimize' or 'maximize', got 'up'"),
])
def test_tune_refuses_bad_input_before_any_trial(space, n, kwargs, match, capfd):
    with pytest.raises(ValueError, match=match): tune(_quad, space, n, **kwargs)
    assert capfd.readouterr().err == "", "no failed-trial log: the space is checked before the study starts"


@needs_optuna
def test_tune_on_optbook_adamw(digits):
    "The chapter's use: optbook.AdamW's lr, betas and weight decay on digits, with a pruner."
    F = optimizer_objective(lambda ps, lr, beta1, beta2, weight_decay: optbook.AdamW(
        ps, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay), digits, steps=10, report_every=2)
    space = dict(lr=(1e-4, 1.0, "log"), beta1=(0.5, 0.99), beta2=(0.9, 0.9999), weight_decay=(1e-5, 0.1, "log"))
    study = tune(F, space, 10, pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and study.best_value < F(dict(lr=1e-4, beta1=0.9, beta2=0.999, weight_decay=0.01))


def test_importing_optbook_search_does_not_import_optuna():
    code = ("import sys, optbook, optbook.search; "
            "bad = [m for m in ('optuna', 'sqlalchemy', 'matplotlib', 'sympy', 'scipy', 'sklearn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- review additions

def test_bayes_opt_survives_diverged_runs():
    "optimizer_objective returns inf for a diverged run: the GP must see the worst finite value, never inf or NaN."
    def f(x):
        if x[0] > 0.5: return math.inf           # "diverged"
        if x[1] > 0.8: return math.nan
        return _bowl(x)
    res = bayes_opt(f, BOX, n_iter=15, n_init=4, seed=0)
    assert (~res.y.isfinite()).any(), "the test must hit the bad regions"
    assert math.isfinite(res.best_y) and res.best_y == res.y[res.y.isfinite()].min().item()
    assert res.best_y < 2e-2 and torch.equal(res.best_x, res.X[int(res.y.nan_to_num(math.inf).argmin())])
    # nothing finite yet: the loop keeps drawing random points instead of failing
    allbad = bayes_opt(lambda x: math.inf, BOX, n_iter=3, n_init=2, seed=0)
    assert allbad.X.shape == (5, 2) and ((allbad.X >= -1) & (allbad.X <= 1)).all() and allbad.best_y == math.inf


def test_bayes_opt_refuses_an_infinite_box():
    with pytest.raises(ValueError, match="bounds must be finite"):
        bayes_opt(_bowl, torch.tensor([[0.0, math.inf]], **F64), n_iter=1)


def test_optimizer_objective_follows_the_data_dtype(digits):
    data64 = tuple(t.double() if t.is_floating_point() else t for t in digits)
    F = optimizer_objective(lambda ps, lr: optbook.SGD(ps, lr=lr), data64, steps=3)
    F32 = optimizer_objective(lambda ps, lr: optbook.SGD(ps, lr=lr), digits, steps=3)
    assert math.isfinite(F(dict(lr=0.1))) and abs(F(dict(lr=0.1)) - F32(dict(lr=0.1))) < 1e-4   # same init, float64 net


@pytest.mark.parametrize("c", [2.0 ** 10, 2.0 ** -10])
def test_bayes_opt_does_not_depend_on_the_scale_of_f(c):
    "μ₀ and s² come from y, σ²_noise and ξ are relative to s²: scaling f by a power of two (exact in floating point) changes nothing."
    a = bayes_opt(_bowl, BOX, n_iter=6, n_init=3, seed=0)
    b = bayes_opt(lambda x: c * _bowl(x), BOX, n_iter=6, n_init=3, seed=0)
    assert torch.equal(a.X, b.X) and torch.equal(b.y, c * a.y)


@pytest.mark.parametrize("c", [2.0 ** 10, 2.0 ** -10])
def test_gp_jitter_is_relative_to_the_signal(c):
    X, y = _data(4)
    X2, y2 = torch.cat([X, X[:1]]), torch.cat([y, y[:1] + 0.2])          # singular K: the jitter retries are used
    a = GaussianProcess(X2, y2, 0.3, noise=0.0, jitter=0.0)
    b = GaussianProcess(X2, c * y2, 0.3, noise=0.0, jitter=0.0)
    Xs = torch.rand(20, 2, generator=torch.Generator().manual_seed(4), **F64)
    (ma, va), (mb, vb) = a.predict(Xs), b.predict(Xs)
    torch.testing.assert_close(mb, c * ma, rtol=1e-12, atol=0)
    torch.testing.assert_close(vb, c * c * va, rtol=1e-9, atol=1e-300)


@needs_optuna
def test_tune_uses_the_distribution_each_spec_names():
    study = tune(_quad, SPACE, 2)
    d = study.trials[0].distributions
    assert isinstance(d["x"], optuna.distributions.FloatDistribution) and not d["x"].log
    assert isinstance(d["lr"], optuna.distributions.FloatDistribution) and d["lr"].log
    assert isinstance(d["k"], optuna.distributions.IntDistribution) and (d["k"].low, d["k"].high) == (0, 4)
    assert isinstance(d["act"], optuna.distributions.CategoricalDistribution) and d["act"].choices == ("tanh", "relu")
