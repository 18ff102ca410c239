"""Linear assignment with a cost limit, and the IoU cost of tracks against detections.

ByteTrack matches with `lap.lapjv(cost, extend_cost=True, cost_limit=limit)`; scipy and lap are no
serving dependencies, so the same problem is solved here by a shortest-augmenting-path Hungarian
algorithm (Jonker-Volgenant's potentials, O(n^3)) on the matrices a tracker meets: tens of rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service.processing.boxes import box_iou

IntArray = npt.NDArray[np.intp]
FloatMatrix = npt.NDArray[np.float64]


class Assignment(NamedTuple):
    """`matches` (K, 2) of (row, column); the rows and columns left out, ascending."""

    matches: IntArray
    unmatched_rows: IntArray
    unmatched_cols: IntArray


def solve_square(cost: npt.ArrayLike) -> IntArray:
    """The column of each row in a minimum-cost perfect matching of a finite (N, M) matrix, N <= M.

    Rows are added one at a time; each finds the shortest augmenting path over reduced costs
    (row potentials `u`, column potentials `v`), so every step keeps the potentials feasible.
    """
    matrix = np.asarray(cost, dtype=np.float64)
    n, m = matrix.shape
    if n > m:
        raise ValueError(f"solve_square needs rows <= columns, got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("costs must be finite")
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.intp)  # owner[j]: the 1-based row holding column j; 0 = free
    way = np.zeros(m + 1, dtype=np.intp)  # the previous column on the shortest path to j
    for row in range(1, n + 1):
        owner[0] = row  # column 0: the virtual start of the path
        col = 0
        min_to = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while owner[col] != 0:  # column 0 is owned by the row being added
            used[col] = True
            reduced = matrix[owner[col] - 1] - u[owner[col]] - v[1:]
            free = ~used[1:]
            closer = free & (reduced < min_to[1:])
            min_to[1:][closer] = reduced[closer]
            way[1:][closer] = col
            candidates = np.where(free, min_to[1:], np.inf)
            nearest = int(np.argmin(candidates)) + 1
            delta = candidates[nearest - 1]
            u[owner[used]] += delta
            v[used] -= delta
            min_to[1:][free] -= delta
            col = nearest
        while col != 0:  # flip the path: each column on it takes the row of the one before
            previous = way[col]
            owner[col] = owner[previous]
            col = previous
    assigned = np.full(n, -1, dtype=np.intp)
    for j in range(1, m + 1):
        if owner[j]:
            assigned[owner[j] - 1] = j - 1
    return assigned


def linear_assignment(cost: npt.ArrayLike, limit: float) -> Assignment:
    """Match rows to columns at most once each, maximizing the sum of (limit - cost) over the matches.

    A pair costing more than `limit` is never matched. This is lapjv's `extend_cost` with
    `cost_limit`: the matrix is extended by a dummy column per row and a dummy row per column at
    `limit / 2`, so leaving a row and a column both unmatched costs `limit` and any pair under it wins.
    Rows and columns with no pair under the limit are set aside, and each connected group of the
    rest is solved on its own: a track and a detection close only to each other need no solver.
    """
    matrix = np.asarray(cost, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"cost must be (N, M), got shape {matrix.shape}")
    n, m = matrix.shape
    if n == 0 or m == 0:
        return Assignment(np.empty((0, 2), dtype=np.intp), np.arange(n), np.arange(m))
    allowed = matrix <= limit
    pairs: list[IntArray] = []
    for rows, cols in _components(allowed):
        if len(rows) == 1 and len(cols) == 1:  # the usual case: a track alone near its box
            pairs.append(np.array([[rows[0], cols[0]]], dtype=np.intp))
            continue
        sub = matrix[np.ix_(rows, cols)]
        assigned = solve_square(_extended(sub, limit))[: len(rows)]
        real = np.flatnonzero(assigned < len(cols))
        pairs.append(np.stack([rows[real], cols[assigned[real]]], axis=1).astype(np.intp))
    matches = np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.intp)
    matches = matches[np.argsort(matches[:, 0], kind="stable")]
    free_rows, free_cols = np.ones(n, dtype=np.bool_), np.ones(m, dtype=np.bool_)
    free_rows[matches[:, 0]] = False
    free_cols[matches[:, 1]] = False
    return Assignment(matches, np.flatnonzero(free_rows), np.flatnonzero(free_cols))


def _components(allowed: npt.NDArray[np.bool_]) -> list[tuple[IntArray, IntArray]]:
    """The connected components (rows, columns) of the bipartite graph of allowed pairs, each with
    at least one pair; an optimal matching is the union of the components' optimal matchings."""
    # A row with one allowed column that no other row may take is a component of its own.
    only = np.argmax(allowed, axis=1)
    alone = (allowed.sum(axis=1) == 1) & (allowed.sum(axis=0)[only] == 1)
    found = [(np.array([r]), np.array([only[r]])) for r in np.flatnonzero(alone)]
    unseen: npt.NDArray[np.bool_] = np.any(allowed, axis=1) & ~alone
    while unseen.any():
        rows: npt.NDArray[np.bool_] = np.zeros(allowed.shape[0], dtype=np.bool_)
        rows[np.argmax(unseen)] = True
        while True:  # grow: the columns of these rows, then the rows of those columns
            cols: npt.NDArray[np.bool_] = np.any(allowed[rows], axis=0)
            grown: npt.NDArray[np.bool_] = np.any(allowed[:, cols], axis=1)
            if np.array_equal(grown, rows):
                break
            rows = grown
        unseen = unseen & ~rows
        found.append((np.flatnonzero(rows), np.flatnonzero(cols)))
    return found


def _extended(sub: FloatMatrix, limit: float) -> FloatMatrix:
    """The (R + C) square matrix whose perfect matchings are the partial matchings of `sub`: a dummy
    column per row and a dummy row per column at limit / 2, dummy to dummy free, the rest forbidden."""
    r, c = sub.shape
    usable = sub <= limit
    forbidden = (r + c) * (abs(limit) + float(np.abs(np.where(usable, sub, 0)).max())) + 1.0
    extended = np.full((r + c, c + r), forbidden)
    extended[:r, :c] = np.where(usable, sub, forbidden)
    extended[np.arange(r), c + np.arange(r)] = limit / 2
    extended[r + np.arange(c), np.arange(c)] = limit / 2
    extended[r:, c:] = 0.0
    return extended


def iou_cost(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatMatrix:
    """1 - IoU of (N, 4) and (M, 4) xyxy boxes, (N, M) float64."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    return 1.0 - box_iou(a, b).astype(np.float64)
