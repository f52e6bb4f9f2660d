"""How ``LSHIndex`` turns vectors into bits: a projection, then thresholds.

``bits = (x @ P - t) > 0`` with ``P`` of shape (dim, nbits) and ``t`` of shape (nbits,):

- ``"gaussian"``: i.i.d. N(0, 1) entries (SimHash / sign random projections: the probability
  that a bit differs is angle / π);
- ``"orthogonal"``: a random matrix with orthonormal columns (or rows when nbits > dim), as
  faiss's ``IndexLSH(rotate_data=True)``;
- ``"identity"``: the first ``nbits`` coordinates (faiss's ``rotate_data=False``; needs
  nbits <= dim);
- ``"itq"``: learned: PCA to ``nbits`` dimensions then the ITQ rotation (Gong & Lazebnik 2011)
  that minimises the quantisation error; needs training data and nbits <= dim.

Thresholds are 0, or learned per bit as the training median (faiss's ``train_thresholds``);
``"itq"`` without median thresholds centres the data on its training mean.

Random matrices are drawn on the CPU from ``seed``, so the same seed gives the same index on
every device.
"""

from __future__ import annotations

import torch

__all__ = ["PROJECTIONS", "itq_projection", "median_thresholds", "random_projection"]

PROJECTIONS = ("gaussian", "orthogonal", "identity", "itq")


def random_projection(kind: str, dim: int, nbits: int, seed: int) -> torch.Tensor | None:
    """The (dim, nbits) float32 CPU matrix of a data-independent projection.

    Returns ``None`` for ``"identity"`` (the first ``nbits`` coordinates are used as they are).
    """
    generator = torch.Generator().manual_seed(seed)
    if kind == "identity":
        return None
    if kind == "gaussian":
        return torch.randn(dim, nbits, generator=generator)
    if kind == "orthogonal":
        size = max(dim, nbits)
        q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # a Haar-distributed rotation
        return q[:dim, :nbits].float().contiguous()
    raise ValueError(
        f"projection: expected one of {', '.join(map(repr, PROJECTIONS))}, got {kind!r}"
    )


def itq_projection(
    x: torch.Tensor, nbits: int, seed: int, iterations: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA + ITQ rotation learned from ``x``.

    Parameters
    ----------
    x : torch.Tensor, shape (n, dim), floating (any device; computed in float64 on the CPU)
    nbits : int
        At most ``dim``.
    seed : int
        Seeds the initial random rotation.
    iterations : int

    Returns
    -------
    projection : torch.Tensor, shape (dim, nbits), float32, CPU
    offsets : torch.Tensor, shape (nbits,), float32: the projected training mean
    """
    x = x.detach().to("cpu", torch.float64)
    mean = x.mean(dim=0)
    xc = x - mean
    _, eigvecs = torch.linalg.eigh(xc.T @ xc)
    pca = eigvecs[:, -nbits:].flip(1)  # top components, largest first
    v = xc @ pca
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(
        torch.randn(nbits, nbits, generator=generator, dtype=torch.float64)
    )
    for _ in range(iterations):
        b = torch.where(v @ rotation >= 0, 1.0, -1.0).to(torch.float64)
        u, _, vt = torch.linalg.svd(b.T @ v)
        rotation = vt.T @ u.T  # orthogonal Procrustes: argmin_R ||B - V R||
    projection = pca @ rotation
    return projection.float(), (mean @ projection).float()


def median_thresholds(projected: torch.Tensor) -> torch.Tensor:
    """Per-column median, as faiss's ``IndexLSH::train`` computes it (mean of the two middle
    values for an even count), in float32.

    Parameters
    ----------
    projected : torch.Tensor, shape (n, nbits), float32, n >= 1
    """
    values = torch.sort(projected.float(), dim=0).values
    n = values.shape[0]
    if n % 2:
        return values[n // 2].clone()
    return (values[n // 2 - 1] + values[n // 2]) / 2
