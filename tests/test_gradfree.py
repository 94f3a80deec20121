"""Chapter 9 (optbook.gradfree): simulated annealing and the genetic algorithm, without gradients.

- Metropolis: the acceptance probability's formula and limits, its empirical frequency, detailed balance and πP = π
  for a Metropolis matrix built with `acceptance_probability`, the cold limit of the Boltzmann distribution;
- schedules: their values and the errors for bad arguments;
- `anneal`: equal to a chain-by-chain, step-by-step reference in float64 (same random stream), reproducible by seed,
  greedy at 𝒯 = 0, the discrete proposal changes exactly one coordinate to another allowed value;
- GA operators: tournament winners are the best of their entrants, k = 2 selection frequencies, uniform and one-point
  crossover take every coordinate from a parent, mutation rate and size statistics; `evolve`'s elitism, seeds, errors;
- nan losses count as +inf: a nan member never wins a tournament against a finite one nor becomes the best, a chain
  leaves a nan start; integer losses and losses on another device are refused;
- `population_forward` (functional_call + vmap) equals a loop over members;
- devices: state follows x0 / pop0 under FakeTensorMode "cuda", a CPU generator with CUDA tensors is refused, a real
  CUDA run when there is a GPU.
"""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from optbook.gradfree import (Annealed, Evolved, acceptance_probability, anneal, evolve, gaussian_mutation,
                              gaussian_proposal, geometric_schedule, linear_schedule, log_schedule, one_point_crossover,
                              population_forward, population_params, resample_one, tournament, uniform_crossover)

pytestmark = pytest.mark.filterwarnings("error")
F64 = dict(dtype=torch.float64)


def gen(seed, device="cpu"): return torch.Generator(device=device).manual_seed(seed)
def sphere(x): return (x**2).sum(1)
def rastrigin(x): return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)


# ---------------------------------------------------------------- Metropolis and the Boltzmann distribution
def test_acceptance_probability_formula_and_limits():
    delta = torch.tensor([-2.0, 0.0, 0.3, 4.0, math.inf], **F64)
    want = torch.tensor([1.0, 1.0, math.exp(-0.3 / 1.5), math.exp(-4.0 / 1.5), 0.0], **F64)
    torch.testing.assert_close(acceptance_probability(delta, 1.5), want, rtol=0, atol=0)
    assert acceptance_probability(delta, 0.0).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert acceptance_probability(delta[:4], 1e12).min() > 1 - 1e-11
    with pytest.raises(ValueError, match=r"temperature must be >= 0, got -0.1"):
        acceptance_probability(delta, -0.1)
    with pytest.raises(ValueError, match="temperature"):
        acceptance_probability(delta, float("nan"))


@pytest.mark.parametrize("d_over_T", [0.05, 0.5, 1.0, 3.0])
def test_acceptance_frequency(d_over_T):
    n = 200_000
    a = acceptance_probability(torch.full((n,), 2.0 * d_over_T, **F64), 2.0)
    freq = (torch.rand(n, generator=gen(int(d_over_T * 100)), **F64) < a).double().mean().item()
    p = math.exp(-d_over_T)
    assert abs(freq - p) < 4.5 * math.sqrt(p * (1 - p) / n)


def metropolis_matrix(losses, T):
    "The Metropolis transition matrix on a ring of states with the symmetric ±1 proposal (1/2 each)."
    n = len(losses)
    P = torch.zeros(n, n, **F64)
    for i in range(n):
        for j in ((i - 1) % n, (i + 1) % n):
            P[i, j] += 0.5 * acceptance_probability(losses[j] - losses[i], T)
        P[i, i] = 1 - P[i].sum()
    return P


@pytest.mark.parametrize("T", [0.3, 1.0, 7.0])
def test_detailed_balance_and_stationarity(T):
    losses = torch.tensor([3.0, 1.0, 4.0, 0.0, 2.0, 5.0, 1.5], **F64)
    P = metropolis_matrix(losses, T)
    pi = torch.softmax(-losses / T, 0)
    flow = pi[:, None] * P
    torch.testing.assert_close(flow, flow.T, rtol=0, atol=1e-15)       # π_i P_ij = π_j P_ji
    torch.testing.assert_close(pi @ P, pi, rtol=0, atol=1e-15)         # πP = π
    assert (P >= 0).all() and torch.allclose(P.sum(1), torch.ones(len(losses), **F64))


def test_detailed_balance_fails_for_a_wrong_rule():
    "The check bites: accepting uphill moves with exp(−ΔL/(2𝒯)) breaks balance with π_𝒯."
    losses = torch.tensor([3.0, 1.0, 4.0, 0.0, 2.0], **F64)
    P = metropolis_matrix(losses, 2.0)               # correct at 𝒯 = 2 for π_2 ...
    pi = torch.softmax(-losses / 1.0, 0)             # ... but not for π_1
    assert not torch.allclose(pi @ P, pi, atol=1e-6)


def test_cold_limit_concentrates_on_the_global_minimum():
    losses = torch.tensor([3.0, 1.0, 4.0, 0.0, 2.0], **F64)
    masses = [torch.softmax(-losses / T, 0)[3].item() for T in (10.0, 1.0, 0.3, 0.05)]
    assert masses == sorted(masses) and masses[-1] > 1 - 1e-8
    assert abs(torch.softmax(-losses / 1e9, 0) - 0.2).max() < 1e-8


# ---------------------------------------------------------------- schedules
def test_schedule_values():
    g, lg, ln = geometric_schedule(8.0, 0.5), log_schedule(3.0), linear_schedule(6.0, 300)
    assert [g(t) for t in (1, 2, 3)] == [4.0, 2.0, 1.0]
    assert lg(1) == 3.0 / math.log(2) and math.isclose(lg(math.e - 1), 3.0)
    assert [ln(t) for t in (0, 100, 300, 301, 10**6)] == [6.0, 4.0, 0.0, 0.0, 0.0]
    assert geometric_schedule(1.0, 1.0)(1000) == 1.0


@pytest.mark.parametrize("make, match", [
    (lambda: geometric_schedule(-1.0, 0.9), r"temperature must be >= 0, got -1.0"),
    (lambda: geometric_schedule(1.0, 0.0), r"gamma must be in \(0, 1\], got 0.0"),
    (lambda: geometric_schedule(1.0, 1.01), "gamma"),
    (lambda: log_schedule(-2.0), "temperature"),
    (lambda: linear_schedule(1.0, 0), r"Invalid steps: 0 \(must be an int >= 1\)"),
    (lambda: linear_schedule(1.0, 2.5), "steps"),
])
def test_schedule_errors(make, match):
    with pytest.raises(ValueError, match=match): make()


# ---------------------------------------------------------------- anneal
def anneal_reference(f, x0, steps, T_of, step_size, g):
    "Chain by chain and step by step, with Python scalars; the random numbers drawn in anneal's order."
    n = x0.shape[0]
    x, fx = [x0[i].clone() for i in range(n)], [f(x0[i:i + 1])[0].item() for i in range(n)]
    best, accepted = list(fx), [0] * n
    for t in range(1, steps + 1):
        noise, u = torch.randn(x0.shape, generator=g, **F64), torch.rand(n, generator=g, **F64)
        T = T_of(t)
        for i in range(n):
            prop = x[i] + step_size * noise[i]
            fp = f(prop[None])[0].item()
            a = 1.0 if fp <= fx[i] else (math.exp(-(fp - fx[i]) / T) if T > 0 else 0.0)
            if u[i].item() < a: x[i], fx[i], accepted[i] = prop, fp, accepted[i] + 1
            best[i] = min(best[i], fx[i])
    return torch.stack(x), torch.tensor(fx, **F64), torch.tensor(best, **F64), torch.tensor(accepted, **F64) / steps


@pytest.mark.parametrize("schedule", [geometric_schedule(20.0, 0.95), linear_schedule(5.0, 40), lambda t: 0.0])
def test_anneal_equals_reference(schedule):
    x0 = torch.randn(5, 3, generator=gen(0), **F64) * 2
    ours = anneal(rastrigin, x0, 40, schedule=schedule, step_size=0.5, generator=gen(1), progress=False)
    x, fx, best, rate = anneal_reference(rastrigin, x0, 40, schedule, 0.5, gen(1))
    assert torch.equal(ours.x, x) and torch.equal(ours.f, fx) and torch.equal(ours.best_f, best)
    assert torch.equal(ours.accept_rate, rate)
    assert torch.equal(rastrigin(ours.best_x), ours.best_f) and torch.equal(ours.fs.min(0).values, ours.best_f)
    assert isinstance(ours, Annealed) and ours.fs.shape == (41, 5) and ours.path is None


def test_anneal_seeds_and_path():
    x0 = torch.randn(4, 2, generator=gen(0), **F64)
    run = lambda seed: anneal(sphere, x0, 30, schedule=0.5, step_size=0.2, generator=gen(seed), keep_path=True, progress=False)
    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a.x, c.x)
    assert a.path.shape == (31, 4, 2) and torch.equal(a.path[0], x0) and torch.equal(a.path[-1], a.x)
    torch.testing.assert_close(sphere(a.path.reshape(-1, 2)).view(31, 4), a.fs, rtol=0, atol=0)
    assert torch.equal(x0, torch.randn(4, 2, generator=gen(0), **F64))          # x0 untouched


def test_anneal_greedy_and_hot():
    x0 = torch.randn(16, 4, generator=gen(0), **F64) * 3
    cold = anneal(rastrigin, x0, 300, schedule=0.0, step_size=0.3, generator=gen(1), progress=False)
    assert (cold.fs.diff(dim=0) <= 0).all()
    hot = anneal(rastrigin, x0, 300, schedule=1e8, step_size=0.3, generator=gen(1), progress=False)
    assert hot.accept_rate.min() > 0.99


def test_anneal_finds_the_sphere_minimum():
    x0 = torch.full((8, 3), 4.0, **F64)
    r = anneal(sphere, x0, 2000, schedule=geometric_schedule(1.0, 0.995), step_size=0.1, generator=gen(0), progress=False)
    assert r.best_f.max() < 0.05


def test_chains_are_independent_of_each_other_given_the_random_numbers():
    "A chain's moves depend on its own state and its own random numbers only: changing one chain's start leaves the others."
    x0 = torch.randn(6, 2, generator=gen(0), **F64)
    x1 = x0.clone(); x1[2] += 5.0
    a = anneal(rastrigin, x0, 50, schedule=2.0, step_size=0.3, generator=gen(1), progress=False)
    b = anneal(rastrigin, x1, 50, schedule=2.0, step_size=0.3, generator=gen(1), progress=False)
    keep = torch.tensor([0, 1, 3, 4, 5])
    assert torch.equal(a.x[keep], b.x[keep]) and not torch.equal(a.x[2], b.x[2])


def test_resample_one_is_a_one_coordinate_move_to_another_value():
    propose = resample_one([1, -1, 0, 0])
    x = torch.randint(-1, 2, (3000, 9), generator=gen(0)).to(torch.float64)
    y = propose(x, gen(1))
    assert ((y != x).sum(1) == 1).all() and set(y.unique().tolist()) <= {-1.0, 0.0, 1.0}
    j = (y != x).to(torch.int64).argmax(1)
    counts = torch.bincount(j, minlength=9).double() / len(x)
    assert (counts - 1 / 9).abs().max() < 0.03                         # the coordinate is uniform
    old, new = x.gather(1, j[:, None]).squeeze(1), y.gather(1, j[:, None]).squeeze(1)
    zero_to = new[old == 0]
    assert abs((zero_to == 1).double().mean().item() - 0.5) < 0.05     # both other values equally likely (symmetric)
    assert torch.equal(propose(x, gen(1)), y)


def test_gaussian_proposal_statistics():
    x = torch.zeros(20000, 3, **F64)
    y = gaussian_proposal(0.7)(x, gen(0))
    assert abs(y.std().item() - 0.7) < 0.01 and abs(y.mean().item()) < 0.01


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), r"Invalid steps: 0 \(must be an int >= 1\)"),
    (dict(steps=True), "steps"),
    (dict(schedule=-1.0), r"temperature must be >= 0, got -1.0"),
    (dict(schedule=lambda t: 2.0 - t), r"temperature must be >= 0, got -1.0"),
    (dict(step_size=0.0), r"step_size must be > 0, got 0.0"),
    (dict(step_size=None), "exactly one of step_size and propose"),
    (dict(propose=resample_one((0, 1))), "exactly one"),
    (dict(x0=torch.zeros(3, **F64)), r"x0 must have shape \(chains, dim\), got shape \(3,\)"),
    (dict(f=lambda x: x.sum()), r"f must map a \(4, dim\) batch to \(4,\) losses, got \(\)"),
])
def test_anneal_errors(kwargs, match):
    args = dict(f=sphere, x0=torch.zeros(4, 2, **F64), steps=3, schedule=1.0, step_size=0.1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        anneal(args.pop("f"), args.pop("x0"), args.pop("steps"), **args)


def test_resample_one_needs_two_values():
    with pytest.raises(ValueError, match="at least two different values"): resample_one([2, 2.0])


# ---------------------------------------------------------------- GA operators
def test_tournament_winner_is_the_best_entrant():
    losses = torch.randn(11, generator=gen(0), **F64)
    for size in (1, 2, 5):
        win = tournament(losses, 500, size=size, generator=gen(size))
        entrants = torch.randint(11, (500, size), generator=gen(size))
        assert torch.equal(losses[win], losses[entrants].min(1).values)


def test_tournament_selection_frequencies():
    M, n = 6, 300_000
    losses = torch.tensor([0.5, -1.0, 3.0, 2.0, 0.0, 1.0], **F64)
    freq = torch.bincount(tournament(losses, n, size=2, generator=gen(0)), minlength=M).double() / n
    r = losses.argsort().argsort().double()                     # rank, 0 = best
    expected = ((M - r) ** 2 - (M - r - 1) ** 2) / M**2
    assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / n)
    assert tournament(losses, 0, generator=gen(0)).shape == (0,)
    with pytest.raises(ValueError, match=r"Invalid size: 0 \(must be an int >= 1\)"): tournament(losses, 3, size=0)
    with pytest.raises(ValueError, match=r"losses must have shape \(pop,\) with pop >= 1, got shape \(0,\)"):
        tournament(torch.zeros(0), 3)
    with pytest.raises(ValueError, match=r"losses must have shape \(pop,\)"): tournament(torch.zeros(3, 2), 3)


def test_crossovers_take_each_coordinate_from_a_parent():
    a = torch.randn(3000, 12, generator=gen(0), **F64) + 10
    b = torch.randn(3000, 12, generator=gen(1), **F64) - 10
    u = uniform_crossover(a, b, generator=gen(2))
    assert ((u == a) | (u == b)).all()
    assert abs((u == a).double().mean().item() - 0.5) < 0.01
    o = one_point_crossover(a, b, generator=gen(3))
    src = (o == a).to(torch.int64)
    assert ((o == a) | (o == b)).all() and (src[:, 0] == 1).all() and (src[:, -1] == 0).all()
    assert (src.diff(dim=1) <= 0).all() and (src.diff(dim=1).abs().sum(1) == 1).all()
    cuts = src.sum(1)
    assert set(cuts.tolist()) == set(range(1, 12))                  # every cut 1..dim−1 occurs
    with pytest.raises(ValueError, match="dim >= 2"): one_point_crossover(a[:, :1], b[:, :1])
    for cross in (uniform_crossover, one_point_crossover):                 # no silent broadcasting of a single parent
        with pytest.raises(ValueError, match=r"the parents must have the same shape \(n, dim\), got \(3000, 12\) and \(1, 12\)"):
            cross(a, b[:1])


def test_mutation_statistics_and_errors():
    x = torch.zeros(400, 250, **F64)
    y = gaussian_mutation(x, rate=0.2, sigma=3.0, generator=gen(0))
    hit = y != 0
    assert abs(hit.double().mean().item() - 0.2) < 4 * math.sqrt(0.16 / hit.numel())
    assert abs(y[hit].std().item() - 3.0) < 0.05
    assert torch.equal(gaussian_mutation(x, rate=0.0, sigma=1.0), x)
    assert (gaussian_mutation(x, rate=1.0, sigma=1.0, generator=gen(1)) != 0).all()
    with pytest.raises(ValueError, match=r"mutation rate must be in \[0, 1\], got 1.5"): gaussian_mutation(x, rate=1.5, sigma=1.0)
    with pytest.raises(ValueError, match=r"mutation rate"): gaussian_mutation(x, rate=-0.1, sigma=1.0)
    with pytest.raises(ValueError, match=r"sigma must be >= 0, got -1.0"): gaussian_mutation(x, rate=0.5, sigma=-1.0)


# ---------------------------------------------------------------- evolve
def test_evolve_elitism_keeps_the_best_unchanged():
    pop0 = torch.randn(30, 10, generator=gen(0), **F64) * 3
    e = evolve(sphere, pop0, 60, elite=1, keep_best=True, generator=gen(1), progress=False)
    assert isinstance(e, Evolved) and e.best_path.shape == (61, 10) and e.pop.shape == pop0.shape
    assert e.losses.shape == (30,) and e.best_fs.shape == e.mean_fs.shape == (61,)
    assert (e.best_fs.diff() <= 0).all() and torch.equal(sphere(e.best_path), e.best_fs)
    assert any(torch.equal(e.best_path[-2], row) for row in e.pop)
    assert torch.equal(sphere(e.pop), e.losses) and torch.equal(e.best_f, e.best_fs.min())
    assert e.best_f < sphere(pop0).min() / 20


def test_evolve_seeds_and_options():
    pop0 = torch.randn(12, 5, generator=gen(0), **F64)
    run = lambda seed, **kw: evolve(sphere, pop0, 15, generator=gen(seed), progress=False, **kw)
    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(u, v) for u, v in zip(a, b) if u is not None) and not torch.equal(a.pop, c.pop)
    assert run(3, crossover="one_point").best_f <= sphere(pop0).min()
    custom = run(3, crossover=lambda m, f, generator=None: (m + f) / 2)      # blend crossover
    assert custom.best_f <= sphere(pop0).min()
    no_elite = run(3, elite=0, rate=1.0, sigma=2.0)
    assert (no_elite.best_fs.diff() > 0).any()                              # without elites the best can get worse ...
    assert torch.equal(no_elite.best_f, no_elite.best_fs.min()) and no_elite.best_f < no_elite.best_fs[-1]
    assert torch.equal(sphere(no_elite.best_x[None])[0], no_elite.best_f)  # ... but best_x/best_f are the best of all generations
    assert torch.equal(pop0, torch.randn(12, 5, generator=gen(0), **F64))    # pop0 untouched


@pytest.mark.parametrize("kwargs, match", [
    (dict(pop0=torch.zeros(1, 3, **F64)), "at least 2 members, got 1"),
    (dict(pop0=torch.zeros(5, **F64)), r"pop0 must have shape \(pop, dim\)"),
    (dict(generations=0), r"Invalid generations: 0 \(must be an int >= 1\)"),
    (dict(elite=4), r"elite must be < the population size 4, got 4"),
    (dict(elite=-1), r"Invalid elite: \-1 \(must be an int >= 0\)"),
    (dict(size=0), r"Invalid size: .* \(must be an int >= 1\)"),
    (dict(rate=1.2), r"mutation rate must be in \[0, 1\], got 1.2"),
    (dict(sigma=-0.5), r"sigma must be >= 0, got -0.5"),
    (dict(crossover="two_point"), "crossover must be one of"),
])
def test_evolve_errors(kwargs, match):
    args = dict(pop0=torch.zeros(4, 3, **F64), generations=2, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evolve(sphere, args.pop("pop0"), args.pop("generations"), **args)


# ---------------------------------------------------------------- nan, integer and misplaced losses
def test_tournament_never_prefers_a_nan():
    losses = torch.tensor([0.3, math.nan, -0.2, 1.0, math.nan], **F64)
    win = tournament(losses, 2000, size=2, generator=gen(0))
    entrants = torch.randint(5, (2000, 2), generator=gen(0))
    finite = losses[entrants].isfinite()
    assert (~finite.any(1)).any() and finite.any(1).any()               # both kinds of tournaments occur
    assert losses[win[finite.any(1)]].isfinite().all()                   # a finite entrant always beats a nan
    assert torch.equal(losses[win[finite.any(1)]], losses[entrants].nan_to_num(math.inf).min(1).values[finite.any(1)])


def test_evolve_treats_nan_as_the_worst_loss():
    f = lambda P: torch.where(P[:, 0] > 1, math.nan, sphere(P))          # a region where the loss is undefined
    pop0 = torch.randn(20, 3, generator=gen(0), **F64)
    pop0[:5, 0] = 5.0                                                    # a quarter of the first generation is nan
    e = evolve(f, pop0, 30, elite=1, keep_best=True, generator=gen(1), progress=False)
    assert e.best_f.isfinite() and e.best_fs.isfinite().all() and (e.best_fs.diff() <= 0).all()
    assert e.best_f <= sphere(pop0[5:]).min() and f(e.best_x[None]).isfinite().all()
    assert (e.losses.isinf() == f(e.pop).isnan()).all()                  # nan losses are reported as +inf


def test_anneal_leaves_a_nan_start_and_rejects_nan_proposals():
    f = lambda x: torch.where(x[:, 0] > 0, math.nan, sphere(x))
    r = anneal(f, torch.full((8, 2), 0.1, **F64), 40, schedule=1.0, step_size=0.5, generator=gen(0), progress=False)
    assert r.fs[0].isinf().all() and r.fs[-1].isfinite().all() and (r.x[:, 0] <= 0).all()
    moved = r.fs[:-1].isfinite()                                         # once finite, a chain never goes back to nan
    assert r.fs[1:][moved].isfinite().all()


def test_losses_must_be_floating_point_and_on_the_device():
    x = torch.zeros(4, 2, **F64)
    with pytest.raises(ValueError, match="f must return floating-point losses, got torch.int64"):
        anneal(lambda x: (x > 0).sum(1), x, 3, schedule=1.0, step_size=0.1, progress=False)
    with pytest.raises(ValueError, match="floating-point"):
        evolve(lambda x: (x > 0).sum(1), x, 3, progress=False)
    with FakeTensorMode():
        xc = torch.zeros(4, 2, device="cuda")
        with pytest.raises(ValueError, match="f must return its losses on cuda"):
            anneal(lambda x: torch.zeros(4), xc, 3, schedule=1.0, step_size=0.1, progress=False)
        with pytest.raises(ValueError, match="f must return its losses on cuda"):
            evolve(lambda x: torch.zeros(4), xc, 3, progress=False)


# ---------------------------------------------------------------- population forward
def make_net():
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()


def test_population_forward_equals_the_loop():
    net = make_net()
    d = sum(p.numel() for p in net.parameters())
    pop = torch.randn(9, d, generator=gen(0), **F64)
    x = torch.randn(13, 5, generator=gen(1), **F64)
    out = population_forward(net, pop, x)
    loop = make_net()
    want = []
    for row in pop:
        torch.nn.utils.vector_to_parameters(row, loop.parameters())
        with torch.no_grad(): want.append(loop(x))
    torch.testing.assert_close(out, torch.stack(want), rtol=1e-13, atol=1e-13)
    params = population_params(net, pop)
    assert list(params) == [n for n, _ in net.named_parameters()]
    assert params["0.weight"].shape == (9, 7, 5) and params["2.bias"].shape == (9, 3)
    assert torch.equal(torch.cat([v.reshape(9, -1) for v in params.values()], 1), pop)
    with pytest.raises(ValueError, match=rf"pop must have shape \(pop, {d}\)"): population_params(net, pop[:, 1:])
    with pytest.raises(ValueError, match="pop must have shape"): population_params(net, pop[0])


def test_population_forward_gives_grads_to_the_population():
    "Not needed by the GA, but the batched forward is differentiable in the population (it is plain torch)."
    net = make_net()
    pop = torch.randn(3, sum(p.numel() for p in net.parameters()), generator=gen(0), **F64).requires_grad_()
    population_forward(net, pop, torch.randn(4, 5, **F64)).sum().backward()
    assert pop.grad is not None and pop.grad.shape == pop.shape


# ---------------------------------------------------------------- devices
def test_fake_cuda_state_follows_the_input():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    with FakeTensorMode():
        x0 = torch.zeros(4, 3, device="cuda")
        for kw in (dict(step_size=0.1), dict(propose=resample_one((-1, 0, 1)))):
            r = anneal(sphere, x0, 3, schedule=geometric_schedule(1.0, 0.9), keep_path=True, progress=False, **kw)
            assert all(t.device.type == "cuda" for t in r)
        for cross in ("uniform", "one_point"):
            e = evolve(sphere, torch.zeros(6, 3, device="cuda"), 2, crossover=cross, keep_best=True, progress=False)
            assert all(t.device.type == "cuda" for t in e)
        out = population_forward(net, torch.zeros(5, 26, device="cuda"), torch.zeros(7, 3, device="cuda"))
        assert out.device.type == "cuda" and out.shape == (5, 7, 2)
        with pytest.raises(ValueError, match="generator is on cpu but the tensors are on cuda"):
            anneal(sphere, x0, 3, schedule=1.0, step_size=0.1, generator=gen(0), progress=False)
        with pytest.raises(ValueError, match="generator is on cpu"):
            evolve(sphere, torch.zeros(6, 3, device="cuda"), 2, generator=gen(0), progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_follows_the_dtype(dtype):
    x0 = torch.randn(5, 3, generator=gen(0)).to(dtype)
    r = anneal(sphere, x0, 4, schedule=1.0, step_size=0.1, generator=gen(1), keep_path=True, progress=False)
    assert all(t.dtype == dtype for t in (r.x, r.f, r.best_x, r.best_f, r.accept_rate, r.fs, r.path))
    e = evolve(sphere, x0, 3, generator=gen(1), keep_best=True, progress=False)
    assert all(t.dtype == dtype for t in e)
    w = torch.zeros(4, 6, dtype=dtype)
    assert resample_one((-1, 0, 1))(w, gen(0)).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_and_is_reproducible():
    x0 = torch.randn(64, 4, device="cuda")
    a = anneal(rastrigin, x0, 50, schedule=geometric_schedule(5.0, 0.9), step_size=0.3, generator=gen(0, "cuda"), progress=False)
    b = anneal(rastrigin, x0, 50, schedule=geometric_schedule(5.0, 0.9), step_size=0.3, generator=gen(0, "cuda"), progress=False)
    assert a.x.is_cuda and torch.equal(a.x, b.x)
    e = evolve(sphere, x0, 10, generator=gen(0, "cuda"), progress=False)
    assert e.pop.is_cuda and e.best_f <= sphere(x0).min()
    net = torch.nn.Linear(4, 2).cuda()
    assert population_forward(net, torch.randn(3, 10, device="cuda"), x0).shape == (3, 64, 2)


def test_progress_bar_is_optional():
    "progress=True works (tqdm installed here); its bar goes to stderr, so tests and the book pass progress=False."
    r = anneal(sphere, torch.zeros(2, 2, **F64), 3, schedule=1.0, step_size=0.1, generator=gen(0), progress=True)
    assert r.fs.shape == (4, 2)
