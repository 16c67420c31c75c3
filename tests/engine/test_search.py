"""The search on synthetic objectives with known optima: it must find them within budget 40."""

import pickle

import numpy as np
import pytest

from lorahub_serve.engine.search import SearchConfig, SearchState, run_search

K = 20


def quadratic(optimum: np.ndarray, floor: float = 0.2):
    """A loss [P, K] -> [P] with its minimum `floor` at `optimum`; scaled like few-shot CE."""
    def loss(w: np.ndarray) -> np.ndarray:
        return floor + np.sum((w - optimum) ** 2, axis=1)
    return loss


def objective(w: np.ndarray, optimum: np.ndarray, l1: float = 0.05) -> float:
    return float(quadratic(optimum)(w[None])[0] + l1 * np.mean(np.abs(w)))


def test_first_generation_is_zero_and_the_one_hots():
    state = SearchState(K, SearchConfig(budget=40, seed=0))
    first = np.stack([c.value for c in state.ask()])
    assert first.shape == (K + 1, K)
    np.testing.assert_array_equal(first[0], 0)
    np.testing.assert_array_equal(first[1:], np.eye(K))
    assert np.abs(first).max() == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_a_one_hot_optimum_within_budget_40(seed):
    optimum = np.eye(K)[7]
    state = run_search(quadratic(optimum), K, SearchConfig(budget=40, seed=seed))
    assert state.evaluations == 40
    assert np.argmax(np.abs(state.best_weights)) == 7
    np.testing.assert_allclose(state.best_weights, optimum, atol=0.05)  # the one-hot itself, found at start


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moves_from_the_best_start_point_towards_a_mixed_optimum(seed):
    """Optimum 0.8·e3 + 0.5·e11 − 0.3·e15 on a loss that, like the real ones, reacts strongly to
    a few modules and weakly to the rest: the start finds e3; the population search must close
    at least half the gap to the optimum within budget 40."""
    optimum = np.zeros(K)
    optimum[[3, 11, 15]] = [0.8, 0.5, -0.3]
    curvature = np.full(K, 0.05)
    curvature[[3, 11, 15]] = 1.0

    def loss(w):
        return 0.2 + np.sum(curvature * (w - optimum) ** 2, axis=1)

    def objective(w):
        return float(loss(w[None])[0] + 0.05 * np.mean(np.abs(w)))

    state = run_search(loss, K, SearchConfig(budget=40, seed=seed))
    start_best, best_possible = objective(np.eye(K)[3]), objective(optimum)
    assert state.best_objective < start_best - 0.5 * (start_best - best_possible), state.best_objective
    assert abs(state.best_weights[11] - 0.5) < 0.5 and state.best_weights[3] > 0.5


MIXED_TOL = 0.15  # ||w - optimum||: measured 0.04-0.09 over seeds 0-5; every start point is 0.88 away


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_population_phase_reaches_a_mixed_optimum_far_from_every_start_point(seed):
    """Optimum 0.6·e0 − 0.5·e1 + 0.45·e2 + 0.4·e3: no start point (w = 0, one-hots) is within 0.88
    of it, so only the population search can get there; with budget 600 it ends within MIXED_TOL."""
    optimum = np.zeros(K)
    optimum[:4] = [0.6, -0.5, 0.45, 0.4]
    starts = np.vstack([np.zeros(K), np.eye(K)])
    assert np.linalg.norm(starts - optimum, axis=1).min() > 0.85
    seen = []

    def loss(w):
        seen.append(w)
        return quadratic(optimum)(w)

    state = run_search(loss, K, SearchConfig(budget=600, seed=seed))
    assert state.evaluations == 600
    np.testing.assert_array_equal(seen[0], starts)  # the start batch ran first ...
    start_best = min(state.history[: K + 1])
    best = state.best_objective
    assert best < start_best - 0.5, (best, start_best)  # ... and the population search went far past it
    err = np.linalg.norm(state.best_weights - optimum)
    assert err < MIXED_TOL, (err, state.best_weights[:5])
    assert np.sign(state.best_weights[:4]).tolist() == [1, -1, 1, 1]


def test_old_default_without_the_start_never_reaches_weight_one():
    """Why the start exists: the bounded CMA of nevergrad's defaults barely moves from 0."""
    seen = []
    run_search(lambda w: (seen.append(w), quadratic(np.eye(K)[7])(w))[1], K,
               SearchConfig(budget=40, seed=0, onehot_start=False, sigma=0.075))
    assert np.abs(np.concatenate(seen)).max() < 0.6


@pytest.mark.parametrize("optimizer", ["cma", "de"])
def test_never_worse_than_the_best_start_point(optimizer):
    def loss(w):  # a rugged loss: only the start points are any good
        return np.where(np.isclose(np.abs(w).sum(1), 1.0) | (np.abs(w).sum(1) == 0), 0.3, 5.0)

    state = run_search(loss, K, SearchConfig(budget=40, seed=3, optimizer=optimizer))
    assert state.best_objective <= min(state.history[: K + 1]) + 1e-12
    assert state.start_losses is not None and len(state.start_losses) == K + 1


def test_candidates_stay_within_bounds_and_budget_is_exact():
    seen = []
    cfg = SearchConfig(budget=37, seed=1, sigma=3.0, bound=1.5)
    state = run_search(lambda w: (seen.append(w), np.ones(len(w)))[1], K, cfg)
    assert state.evaluations == 37 == sum(len(w) for w in seen)
    assert np.abs(np.concatenate(seen)).max() <= 1.5


def test_population_leaves_several_updates():
    cfg = SearchConfig(budget=40)
    assert cfg.start_size(K) == K + 1
    assert (cfg.budget - cfg.start_size(K)) // cfg.population(K) >= 4
    assert SearchConfig(budget=200).population(K) == 4 + int(3 * np.log(K))


def test_budget_smaller_than_the_start_evaluates_part_of_it():
    state = run_search(quadratic(np.eye(K)[2]), K, SearchConfig(budget=5))
    assert state.evaluations == 5 and len(state.start_losses) == 5


@pytest.mark.parametrize("budget", [40, 5])
def test_known_onehot_losses_are_told_not_evaluated_and_the_search_is_unchanged(budget):
    loss = quadratic(np.eye(K)[4] * 0.7)
    cfg = SearchConfig(budget=budget, seed=5)
    full = run_search(loss, K, cfg)
    asked = []
    known = SearchState(K, cfg, known_onehot=loss(np.eye(K)))
    reused = run_search(lambda w: (asked.append(w), loss(w))[1], K, cfg, state=known)
    np.testing.assert_array_equal(asked[0], np.zeros((1, K)))  # the start batch asks w = 0 only
    assert sum(len(w) for w in asked) == budget - (cfg.start_size(K) - 1)
    assert reused.history == full.history and reused.evaluations == budget
    np.testing.assert_array_equal(reused.start_losses, full.start_losses)
    assert reused.reused_evaluations == cfg.start_size(K) - 1


def test_known_onehot_losses_must_match_k():
    with pytest.raises(ValueError, match=r"one loss per module \(\[20\]\)"):
        SearchState(K, SearchConfig(), known_onehot=np.ones(3))


def test_state_pickles_mid_search_and_resumes_identically():
    loss = quadratic(np.eye(K)[4] * 0.7)
    cfg = SearchConfig(budget=40, seed=5)
    full = run_search(loss, K, cfg)
    part = SearchState(K, cfg)
    for _ in range(3):  # the start batch and two population generations
        cands = part.ask()
        part.tell(cands, loss(np.stack([c.value for c in cands])))
    resumed = run_search(loss, K, cfg, state=pickle.loads(pickle.dumps(part)))
    assert resumed.history == full.history


def test_ngopt_is_the_sequential_reference():
    state = run_search(quadratic(np.eye(K)[1]), K, SearchConfig(budget=6, optimizer="ngopt"))
    assert state.optimizer_name.startswith("NGOpt") and state.evaluations == 6
    assert state.start_losses is None


@pytest.mark.parametrize("bad, match", [({"sigma": 0}, "sigma"), ({"optimizer": "adam"}, "optimizer"),
                                        ({"budget": 0}, "budget"), ({"popsize": 1}, "popsize")])
def test_bad_config_names_the_parameter(bad, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**bad)
