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

from gpuann.binary.codes import pack_bits

__all__ = [
    "HASH_BYTES_PER_BIT",
    "PROJECTIONS",
    "hash_vectors",
    "itq_projection",
    "median_thresholds",
    "random_projection",
]

PROJECTIONS = ("gaussian", "orthogonal", "identity", "itq")
#: Working bytes per (vector, bit) while hashing: the float32 projection, its thresholded
#: copy, its bool sign and the uint8 bits being packed.
HASH_BYTES_PER_BIT = 7


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


def hash_vectors(
    x: torch.Tensor,
    matrix: torch.Tensor | None,
    thresholds: torch.Tensor | None,
    nbits: int,
    width: int,
    memory_budget: int,
) -> torch.Tensor:
    """Packed codes ``pack_bits((x @ matrix - thresholds) > 0)``, zero-padded to ``width`` bytes.

    Rows are hashed in blocks whose temporaries (about :data:`HASH_BYTES_PER_BIT` bytes per
    row and bit) fit ``memory_budget``, so hashing many queries never overshoots it.

    Parameters
    ----------
    x : torch.Tensor, shape (n, dim), float32
    matrix : torch.Tensor, shape (dim, nbits), float32, on ``x.device``; ``None``: the first
        ``nbits`` coordinates
    thresholds : torch.Tensor, shape (nbits,), float32, optional
    nbits, width : int
        Bits per code and bytes per padded code (at least ``ceil(nbits / 8)``).
    memory_budget : int
        Bytes.

    Returns
    -------
    torch.Tensor, shape (n, width), uint8, on ``x.device``
    """
    n = x.shape[0]
    code_size = (nbits + 7) // 8
    out = torch.zeros((n, width), dtype=torch.uint8, device=x.device)
    block = max(1, memory_budget // (HASH_BYTES_PER_BIT * width * 8))
    for r0 in range(0, n, block):
        chunk = x[r0 : r0 + block]
        projected = chunk[:, :nbits] if matrix is None else chunk @ matrix
        if thresholds is not None:
            projected = projected - thresholds
        out[r0 : r0 + block, :code_size] = pack_bits(projected > 0)
    return out
