"""``index_factory``: gpuann indexes from faiss's description strings."""

from __future__ import annotations

import re
from typing import Any

import torch

from gpuann.metrics import Metric

__all__ = ["index_factory", "parse_description"]

_IVF = re.compile(r"IVF(\d+)")
_PQ = re.compile(r"PQ(\d+)(?:x(\d+))?")
_SUPPORTED = '"Flat", "IVF<nlist>,Flat", "IVF<nlist>,PQ<m>[x<nbits>]" and "...,PQ<m>,RFlat"'


def parse_description(description: str) -> dict[str, Any]:
    """Parse a faiss factory string into gpuann constructor arguments.

    Parameters
    ----------
    description : str
        ``"Flat"``, ``"IVF<nlist>,Flat"``, ``"IVF<nlist>,PQ<m>[x<nbits>]"``, optionally followed
        by ``",RFlat"`` (or ``",Refine(Flat)"``) after a PQ.

    Returns
    -------
    dict
        ``kind`` (``"Flat"``, ``"IVFFlat"`` or ``"IVFPQ"``) and the parameters found.

    >>> parse_description("IVF1024,PQ32x8,RFlat")
    {'kind': 'IVFPQ', 'nlist': 1024, 'm': 32, 'nbits': 8, 'refine': True}
    """
    if not isinstance(description, str):
        raise TypeError(f"description: expected a str, got {type(description).__name__}")
    parts = [p.strip() for p in description.split(",")]
    refine = parts[-1] in ("RFlat", "Refine(Flat)") and len(parts) > 1
    if refine:
        parts = parts[:-1]
    if parts == ["Flat"] and not refine:
        return {"kind": "Flat"}
    if len(parts) == 2 and (ivf := _IVF.fullmatch(parts[0])):
        nlist = int(ivf.group(1))
        if parts[1] == "Flat" and not refine:
            return {"kind": "IVFFlat", "nlist": nlist}
        if pq := _PQ.fullmatch(parts[1]):
            nbits = int(pq.group(2)) if pq.group(2) else 8
            return {
                "kind": "IVFPQ",
                "nlist": nlist,
                "m": int(pq.group(1)),
                "nbits": nbits,
                "refine": refine,
            }
    raise ValueError(f"description: unsupported {description!r}; gpuann supports {_SUPPORTED}")


def index_factory(
    dim: int,
    description: str,
    metric: str | Metric = "l2",
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Any:
    """A gpuann index from a faiss factory string.

    Parameters
    ----------
    dim : int
    description : str
        See :func:`parse_description`. ``"Flat"`` gives a :class:`gpuann.FlatIndex` (exact,
        nothing to train); IVF strings give :class:`gpuann.IVFFlatIndex` or
        :class:`gpuann.IVFPQIndex` (``RFlat``: ``refine=True``).
    metric : {"l2", "ip", "cosine"}
    device : str or torch.device, optional
    **kwargs
        Passed on to the index's constructor (e.g. ``nprobe``, ``seed``).

    >>> index = index_factory(64, "IVF256,PQ16x4,RFlat", metric="ip", device="cpu")
    >>> type(index).__name__, index.nlist, index.m, index.nbits, index.refine, index.metric.value
    ('IVFPQIndex', 256, 16, 4, True, 'ip')
    """
    spec = parse_description(description)
    kind = spec.pop("kind")
    if kind == "Flat":
        from gpuann.flat import FlatIndex

        return FlatIndex(dim, metric, device, **kwargs)
    if kind == "IVFFlat":
        from gpuann.ivf.ivf_flat import IVFFlatIndex

        return IVFFlatIndex(dim, spec["nlist"], metric, device, **kwargs)
    from gpuann.ivf.ivf_pq import IVFPQIndex

    return IVFPQIndex(
        dim, spec["nlist"], spec["m"], spec["nbits"], metric, device, spec["refine"], **kwargs
    )
