"""Reference Hamming k-NN for the binary tests: unpacked bits, full distance matrix, stable sort."""

from __future__ import annotations

import numpy as np
import torch


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def reference_hamming(queries, database, k: int, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """(int32 distances, int64 ids) of shape (Q, k): ties by lower id, -1 / 2**31-1 padding."""
    q = np.unpackbits(as_numpy(queries), axis=1).astype(np.int32)
    x = np.unpackbits(as_numpy(database), axis=1).astype(np.int32)
    ids = np.arange(x.shape[0]) if ids is None else np.asarray(ids)
    dist = (
        (q[:, None, :] != x[None, :, :]).sum(-1) if x.shape[0] else np.zeros((q.shape[0], 0), int)
    )
    D = np.full((q.shape[0], k), 2**31 - 1, dtype=np.int32)
    I = np.full((q.shape[0], k), -1, dtype=np.int64)
    for row in range(q.shape[0]):
        order = np.lexsort((ids, dist[row]))[:k]
        D[row, : len(order)] = dist[row, order]
        I[row, : len(order)] = ids[order]
    return D, I


def tie_heavy_codes(generator: torch.Generator, n: int, nbytes: int) -> torch.Tensor:
    """Codes drawn from 8 patterns with a few flipped bits: many equal distances and duplicates."""
    patterns = torch.randint(0, 256, (8, nbytes), dtype=torch.uint8, generator=generator)
    codes = patterns[torch.randint(0, 8, (n,), generator=generator)]
    flips = torch.randint(0, 2, (n, nbytes), generator=generator, dtype=torch.uint8)
    flips *= (torch.rand(n, nbytes, generator=generator) < 0.2).to(torch.uint8)
    return codes ^ flips


def assert_same_knn_tie_aware(D, I, D_ref, I_ref) -> None:
    """Equal distances exactly; ids equal except that, at the k-th distance, any tied id may
    stand for another (for comparing with libraries whose tie order is unspecified)."""
    D, I, D_ref, I_ref = map(as_numpy, (D, I, D_ref, I_ref))
    np.testing.assert_array_equal(D, D_ref)
    for row in range(D.shape[0]):
        kth = D_ref[row, -1]
        inside = D_ref[row] < kth
        assert set(I[row][inside].tolist()) == set(I_ref[row][inside].tolist()), f"row {row}"
        assert len(set(I[row].tolist()) - {-1}) == int((I[row] != -1).sum()), (
            f"row {row}: repeated ids"
        )


def clustered(seed: int, n: int, q: int, dim: int, clusters: int = 30, spread: float = 0.6):
    """Seeded clustered data (Gaussian blobs around random centres), database and queries."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)

    def draw(m):
        return centres[torch.randint(0, clusters, (m,), generator=g)] + spread * torch.randn(
            m, dim, generator=g
        )

    return draw(n), draw(q)


def recall(I, I_true) -> float:
    """Mean fraction of the true neighbours found (recall@k)."""
    I, I_true = as_numpy(I), as_numpy(I_true)
    return float(
        np.mean(
            [
                len(set(a) & set(b)) / len(b)
                for a, b in zip(I.tolist(), I_true.tolist(), strict=True)
            ]
        )
    )
