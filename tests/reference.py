"""Float64 reference search and tie-aware comparisons, shared by the tests.

The tolerance table is the one place that says how close float32 accumulation must come to
the float64 reference. Storage rounding (float16, bfloat16) is not an error: the reference is
computed from the stored (rounded) values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

#: Devices every device-parametrised test runs on; CUDA cases are skipped without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

#: (rtol, atol) of distances against the float64 reference, by the dtype scores are computed in.
TOLERANCE = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-5, 1e-4),
    torch.bfloat16: (1e-5, 1e-4),
}


def reference_scores(queries, database, metric: str) -> np.ndarray:
    """All (Q, N) distances in float64 (l2: squared; ip, cosine: similarity)."""
    q = torch.as_tensor(queries).double().cpu().numpy()
    x = torch.as_tensor(database).double().cpu().numpy()
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return q @ x.T


def reference_knn(queries, database, k: int, metric: str, ids=None):
    """Exact top-k in float64, ties by lower id, padded with -1 / ±inf."""
    scores = reference_scores(queries, database, metric)
    n = scores.shape[1]
    ids = np.arange(n) if ids is None else np.asarray(ids)
    key = scores if metric == "l2" else -scores
    D = np.full((scores.shape[0], k), np.inf if metric == "l2" else -np.inf)
    I = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for row in range(scores.shape[0]):
        order = np.lexsort((ids, key[row]))[:k]
        D[row, : len(order)] = scores[row, order]
        I[row, : len(order)] = ids[order]
    return D, I


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_knn_matches(D, I, queries, database, k: int, metric: str, ids=None, tol=(1e-5, 1e-4)):
    """Tie-aware check of a search result against the float64 reference.

    Passes when: the returned distances match the reference's sorted top-k distances; each
    returned id's true distance matches what was returned; ids in a row are distinct; and every
    id whose reference distance is clearly inside the top-k (not tied within tolerance with the
    k-th) is returned. Padding (-1, ±inf) must be exactly where the reference has it.
    """
    D, I = _as_numpy(D).astype(np.float64), _as_numpy(I)
    D_ref, I_ref = reference_knn(queries, database, k, metric, ids)
    rtol, atol = tol
    scale = max(1.0, float(np.abs(D_ref[np.isfinite(D_ref)]).max(initial=0.0)))
    assert I.shape == I_ref.shape, f"shape {I.shape} != {I_ref.shape}"
    np.testing.assert_array_equal(I == -1, I_ref == -1, err_msg="padding (-1 ids) differs")
    valid = I_ref != -1
    np.testing.assert_array_equal(D[~valid], D_ref[~valid], err_msg="padding distances differ")
    np.testing.assert_allclose(
        D[valid],
        D_ref[valid],
        rtol=rtol,
        atol=atol * scale,
        err_msg="distances differ from the float64 reference",
    )
    all_ids = np.arange(torch.as_tensor(database).shape[0]) if ids is None else np.asarray(ids)
    position = {int(v): i for i, v in enumerate(all_ids)}
    scores = reference_scores(queries, database, metric)
    for row in range(I.shape[0]):
        got = [int(v) for v in I[row] if v != -1]
        assert len(set(got)) == len(got), f"row {row}: repeated ids {got}"
        true = np.array([scores[row, position[v]] for v in got])
        np.testing.assert_allclose(
            true,
            D[row, : len(got)],
            rtol=rtol,
            atol=atol * scale,
            err_msg=f"row {row}: returned distances are not the ids' distances",
        )
        if got:
            kth = D_ref[row, len(got) - 1]
            clear = np.abs(D_ref[row, : len(got)] - kth) > 2 * (atol * scale + rtol * abs(kth))
            missing = set(I_ref[row, : len(got)][clear].tolist()) - set(got)
            assert not missing, (
                f"row {row}: ids {sorted(missing)} are clearly in the top-k but missing"
            )
