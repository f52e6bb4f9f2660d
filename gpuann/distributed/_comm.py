"""The collectives gpuann uses, and the agreement step every collective call starts with.

A collective call whose ranks pass tensors of different shapes or dtypes does not fail
cleanly: gloo aborts the process, or a rank silently gathers the wrong rows. So each rank
first describes its inputs in a few integers (:func:`matrix_info`, :func:`int_info`), one
small all-gather shares the descriptions (:func:`agree`), and every rank checks the same
table (:func:`check_matrices`, :func:`check_ints`) and so raises the same error, naming the
rank, before any payload moves. :func:`agree_batch` is that step for the usual input: one
matrix with per-row int arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gpuann._validate import FLOAT_DTYPES, as_float_matrix

__all__ = [
    "AgreedBatch",
    "agree",
    "agree_batch",
    "all_gather_equal",
    "all_gather_sized",
    "all_gather_varying",
    "check_ints",
    "check_matrices",
    "group_info",
    "int_info",
    "matrix_info",
]

_OK, _BAD, _WRONG_DIM = 0, 1, 2


def group_info(group: Any = None) -> tuple[int, int]:
    """(rank, world size) of this process in ``group`` (default: the whole world)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gpuann.distributed: call torch.distributed.init_process_group first "
            "(backend 'nccl' for CUDA tensors, 'gloo' for CPU tensors)"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_equal(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (all of the same shape), in rank order. No host sync."""
    _, world = group_info(group)
    tensor = tensor.contiguous()
    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor, group=group)
    return out


def all_gather_sized(
    tensor: torch.Tensor, sizes: Sequence[int], group: Any = None
) -> list[torch.Tensor]:
    """Every rank's ``tensor``, whose first dimension is ``sizes[rank]`` (agreed already).

    Equal sizes are gathered as they are; otherwise padded to the largest and trimmed.
    """
    if len(set(sizes)) == 1:
        return all_gather_equal(tensor, group)
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return [part[:n] for part, n in zip(all_gather_equal(padded, group), sizes, strict=True)]


def all_gather_varying(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's ``tensor``, whose first dimension may differ by rank, in rank order.

    The sizes are exchanged first (one small all-gather and a host sync).
    """
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    return all_gather_sized(tensor, [int(s) for s in all_gather_equal(size, group)], group)


def agree(values: Sequence[int], device: torch.device, group: Any = None) -> list[list[int]]:
    """Every rank's ``values`` (the same length on every rank): one all-gather, one sync."""
    mine = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    return torch.stack(all_gather_equal(mine, group)).tolist()


def matrix_info(x: Any, dim: int) -> tuple[torch.Tensor | None, list[int]]:
    """``x`` as a float matrix (or ``None``) and its description: [problem, rows, cols, dtype]."""
    try:
        t, _ = as_float_matrix(x, "x")
    except (TypeError, ValueError):
        return None, [_BAD, 0, 0, 0]
    problem = _WRONG_DIM if t.shape[1] != dim else _OK
    return t, [problem, t.shape[0], t.shape[1], FLOAT_DTYPES.index(t.dtype)]


def check_matrices(table: Sequence[Sequence[int]], name: str, dim: int) -> torch.dtype:
    """Raise (the same on every rank) unless every rank's matrix is valid; the common dtype.

    ``table[rank][:4]`` is that rank's :func:`matrix_info`.
    """
    for rank, (problem, _, cols, _) in enumerate(row[:4] for row in table):
        if problem == _BAD:
            raise TypeError(
                f"{name}: rank {rank} passed no 2-D floating-point torch.Tensor or numpy.ndarray"
                " (no rank went on)"
            )
        if problem == _WRONG_DIM:
            raise ValueError(
                f"{name}: rank {rank} passed {cols} columns; the index's dim is {dim} "
                "(no rank went on)"
            )
    return functools.reduce(torch.promote_types, (FLOAT_DTYPES[row[3]] for row in table))


def int_info(
    value: Any, rows: int, ndims: tuple[int, ...] = (1,)
) -> tuple[torch.Tensor | None, list[int]]:
    """An optional per-row int argument as int64 (or ``None``) and [given, problem, ndim, cols].

    It must have ``rows`` rows and one of ``ndims`` dimensions; floating or bool values are a
    problem.
    """
    if value is None:
        return None, [0, _OK, 0, 0]
    try:
        t = torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return None, [1, _BAD, 0, 0]
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        return None, [1, _BAD, t.ndim, 0]
    if t.ndim not in ndims or t.shape[0] != rows:
        return None, [1, _BAD, t.ndim, 0]
    return t.to(torch.int64), [1, _OK, t.ndim, t.shape[1] if t.ndim == 2 else 0]


def check_ints(table: Sequence[Sequence[int]], start: int, name: str, what: str) -> bool:
    """Raise (the same on every rank) unless ``name`` (``table[rank][start:start + 4]``, an
    :func:`int_info`) is given by every rank or none, each valid and of one shape; whether it
    is given. ``what`` says the shape expected, e.g. ``"(n,) per row of x"``."""
    infos = [row[start : start + 4] for row in table]
    given = {info[0] for info in infos}
    if len(given) > 1:
        ranks = [r for r, info in enumerate(infos) if info[0]]
        raise ValueError(f"{name}: given by ranks {ranks} only; every rank must pass it or none")
    for rank, (_, problem, _, _) in enumerate(infos):
        if problem == _BAD:
            raise ValueError(f"{name}: rank {rank} passed no integer tensor of shape {what}")
    if len({(info[2], info[3]) for info in infos}) > 1:
        shapes = [f"{info[2]}-D, {info[3]} columns" for info in infos]
        raise ValueError(f"{name}: ranks passed different shapes ({shapes}); expected {what}")
    return given == {1}


@dataclass
class AgreedBatch:
    """What :func:`agree_batch` returns: this rank's inputs and every rank's descriptions."""

    #: This rank's matrix (as converted, not yet in the common dtype).
    x: torch.Tensor
    #: The common dtype of every rank's matrix.
    dtype: torch.dtype
    #: Every rank's description: its matrix (4 values), the ``extra`` values, its ints (4 each).
    table: list[list[int]]
    #: This rank's per-row int arguments as int64 tensors (``None`` where not given).
    ints: dict[str, torch.Tensor | None]
    #: How many ``extra`` values follow the matrix's description.
    n_extra: int

    @property
    def sizes(self) -> list[int]:
        """Every rank's number of rows."""
        return [row[1] for row in self.table]

    def extra(self, j: int) -> list[int]:
        """Every rank's ``extra[j]``."""
        return [row[4 + j] for row in self.table]

    def check_ints(self, what: str) -> dict[str, bool]:
        """:func:`check_ints` for each int argument, in order; whether each is given."""
        start = 4 + self.n_extra
        return {
            name: check_ints(self.table, start + 4 * j, name, what)
            for j, name in enumerate(self.ints)
        }


def agree_batch(
    x: Any,
    dim: int,
    name: str,
    ints: Mapping[str, Any],
    device: torch.device,
    group: Any = None,
    *,
    ndims: Mapping[str, tuple[int, ...]] | None = None,
    extra: Sequence[int] = (),
) -> AgreedBatch:
    """Describe a matrix ``x`` (``dim`` columns) and its per-row int arguments ``ints``
    (``ndims[name]`` dimensions, default 1) with ``extra`` values, agree on every rank's
    descriptions and check the matrices (:func:`check_matrices`, naming ``name``).

    The int arguments are left to :meth:`AgreedBatch.check_ints`, so that a caller can check
    its own values (``extra``, the sizes) first.
    """
    group_info(group)  # a clear error when no process group exists
    t, described = matrix_info(x, dim)
    described += [int(v) for v in extra]
    converted = {}
    for key, value in ints.items():
        converted[key], info = int_info(value, described[1], (ndims or {}).get(key, (1,)))
        described += info
    table = agree(described, device, group)
    dtype = check_matrices(table, name, dim)
    assert t is not None  # check_matrices raised otherwise
    return AgreedBatch(t, dtype, table, converted, len(extra))
