"""Linear assignment against a brute force over every partial matching of small random matrices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.tracking.assignment import _extended, iou_cost, linear_assignment, solve_square

pytestmark = pytest.mark.unit


def best_full_cost(cost: np.ndarray) -> float:
    """The minimum total cost over every way of giving each row a distinct column (rows <= cols)."""
    n, m = cost.shape
    return min(sum(cost[i, cols[i]] for i in range(n)) for cols in itertools.permutations(range(m), n))


def best_limited_gain(cost: np.ndarray, limit: float) -> float:
    """The largest sum of (limit - cost) over every partial matching using only pairs <= limit."""
    n, m = cost.shape
    best = 0.0
    for k in range(1, min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                pairs = [cost[r, c] for r, c in zip(rows, cols, strict=True)]
                if all(p <= limit for p in pairs):
                    best = max(best, sum(limit - p for p in pairs))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_solve_square_finds_the_brute_force_minimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    cost = rng.uniform(-3, 10, size=(n, int(rng.integers(n, 7))))
    if seed % 3 == 0:  # ties: a few repeated integer costs
        cost = np.round(cost / 3)
    cols = solve_square(cost)
    assert len(set(cols.tolist())) == n and (cols >= 0).all()
    assert cost[np.arange(n), cols].sum() == pytest.approx(best_full_cost(cost))


@pytest.mark.parametrize("seed", range(40))
def test_linear_assignment_matches_the_brute_force_under_the_limit(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    cost = rng.uniform(0, 1, size=(int(rng.integers(0, 6)), int(rng.integers(0, 6))))
    cost[rng.random(cost.shape) < 0.2] = np.inf  # forbidden pairs (another class)
    limit = float(rng.uniform(0.2, 0.9))
    result = linear_assignment(cost, limit)
    rows, cols = result.matches[:, 0], result.matches[:, 1]
    assert (cost[rows, cols] <= limit).all()
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert sorted([*rows, *result.unmatched_rows]) == list(range(cost.shape[0]))
    assert sorted([*cols, *result.unmatched_cols]) == list(range(cost.shape[1]))
    assert (limit - cost[rows, cols]).sum() == pytest.approx(best_limited_gain(cost, limit))


def test_a_cheap_pair_is_given_up_when_two_pairs_gain_more() -> None:
    # Greedy takes (0, 0) at 0.1 and leaves row 1 alone; the optimum takes (0, 1) and (1, 0).
    cost = np.array([[0.1, 0.2], [0.2, 0.9]])  # gains 0.4 alone against 0.3 + 0.3
    assert linear_assignment(cost, 0.5).matches.tolist() == [[0, 1], [1, 0]]


def test_iou_cost_is_one_minus_iou() -> None:
    cost = iou_cost([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(cost, [[0.0, 1 - 50 / 150, 1.0]])


@pytest.mark.parametrize("seed", range(10))
def test_solving_group_by_group_gains_what_one_solve_of_the_whole_matrix_gains(seed: int) -> None:
    # Tracker-sized and sparse: most pairs over the limit, so many small groups and a few large ones.
    rng = np.random.default_rng(200 + seed)
    cost = rng.uniform(0, 1, size=(int(rng.integers(10, 30)), int(rng.integers(10, 30))))
    cost[rng.random(cost.shape) < 0.85] = 1.0
    limit = 0.8
    result = linear_assignment(cost, limit)
    whole = solve_square(_extended(cost, limit))[: cost.shape[0]]
    rows = np.flatnonzero(whole < cost.shape[1])
    expected = (limit - cost[rows, whole[rows]]).sum()
    assert (limit - cost[result.matches[:, 0], result.matches[:, 1]]).sum() == pytest.approx(expected)
