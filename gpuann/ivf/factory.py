"""``index_factory``: gpuann indexes from faiss's description strings.

Supported (faiss's grammar, comma-separated):

- an optional pre-transform: ``PCA<d>`` (:class:`gpuann.PCA` to ``d`` dimensions) or
  ``OPQ<m>[_<d>]`` (:class:`gpuann.OPQ` for ``m`` sub-quantisers, output ``d``), giving a
  :class:`gpuann.TransformedIndex` around the index that follows;
- the index: ``Flat``; ``IVF<nlist>,Flat``; ``IVF<nlist>,PQ<m>[x<nbits>]``;
  ``IVF<nlist>,SQ8`` (also ``SQ4``, ``SQfp16``); ``HNSW[<M>][,Flat]``; ``HNSW[<M>],SQ8``
  (``M`` 32 by default, as faiss);
- an optional ``,RFlat`` (or ``,Refine(Flat)``) after PQ or SQ codes: ``refine=True``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from gpuann.metrics import Metric

__all__ = ["index_factory", "parse_description"]

_IVF = re.compile(r"IVF(\d+)")
_PQ = re.compile(r"PQ(\d+)(?:x(\d+))?")
_SQ = re.compile(r"SQ(8|4|fp16)")
_HNSW = re.compile(r"HNSW(\d*)")
_PCA = re.compile(r"PCA(\d+)")
_OPQ = re.compile(r"OPQ(\d+)(?:_(\d+))?")
_SUPPORTED = (
    '"[PCA<d>,|OPQ<m>[_<d>],]" then "Flat", "IVF<nlist>,Flat", "IVF<nlist>,PQ<m>[x<nbits>]", '
    '"IVF<nlist>,SQ8|SQ4|SQfp16", "HNSW<M>[,Flat|,SQ8]", with ",RFlat" after PQ or SQ codes'
)


def _transform(part: str) -> dict[str, Any] | None:
    if pca := _PCA.fullmatch(part):
        return {"kind": "PCA", "d_out": int(pca.group(1))}
    if opq := _OPQ.fullmatch(part):
        d_out = int(opq.group(2)) if opq.group(2) else None
        return {"kind": "OPQ", "m": int(opq.group(1)), "d_out": d_out}
    return None


def _index(parts: list[str], refine: bool) -> dict[str, Any] | None:
    if parts == ["Flat"] and not refine:
        return {"kind": "Flat"}
    if len(parts) in (1, 2) and (hnsw := _HNSW.fullmatch(parts[0])):
        codes = parts[1] if len(parts) == 2 else "Flat"
        if codes in ("Flat", "SQ8") and not refine:
            m = int(hnsw.group(1)) if hnsw.group(1) else 32  # faiss's default
            return {"kind": "HNSW", "M": m, "sq8": codes == "SQ8"}
        return None
    if len(parts) != 2 or not (ivf := _IVF.fullmatch(parts[0])):
        return None
    nlist = int(ivf.group(1))
    if parts[1] == "Flat" and not refine:
        return {"kind": "IVFFlat", "nlist": nlist}
    if sq := _SQ.fullmatch(parts[1]):
        return {"kind": "IVFSQ", "nlist": nlist, "sq": f"SQ{sq.group(1)}", "refine": refine}
    if pq := _PQ.fullmatch(parts[1]):
        nbits = int(pq.group(2)) if pq.group(2) else 8
        return {"kind": "IVFPQ", "nlist": nlist, "m": int(pq.group(1)), "nbits": nbits,
                "refine": refine}  # fmt: skip
    return None


def parse_description(description: str) -> dict[str, Any]:
    """Parse a faiss factory string into gpuann constructor arguments.

    Parameters
    ----------
    description : str
        See the module docstring.

    Returns
    -------
    dict
        ``kind`` (``"Flat"``, ``"IVFFlat"``, ``"IVFPQ"``, ``"IVFSQ"`` or ``"HNSW"``), the
        parameters found, and ``transform`` (a dict) when a pre-transform leads.

    >>> parse_description("IVF1024,PQ32x8,RFlat")
    {'kind': 'IVFPQ', 'nlist': 1024, 'm': 32, 'nbits': 8, 'refine': True}
    >>> parse_description("PCA64,IVF256,SQ8")
    {'kind': 'IVFSQ', 'nlist': 256, 'sq': 'SQ8', 'refine': False, 'transform': {'kind': 'PCA', 'd_out': 64}}
    """  # noqa: E501
    if not isinstance(description, str):
        raise TypeError(f"description: expected a str, got {type(description).__name__}")
    parts = [p.strip() for p in description.split(",")]
    transform = _transform(parts[0]) if len(parts) > 1 else None
    if transform is not None:
        parts = parts[1:]
    refine = parts[-1] in ("RFlat", "Refine(Flat)") and len(parts) > 1
    if refine:
        parts = parts[:-1]
    spec = _index(parts, refine)
    if spec is None:
        raise ValueError(f"description: unsupported {description!r}; gpuann supports {_SUPPORTED}")
    if transform is not None:
        spec["transform"] = transform
    return spec


def _build_index(dim: int, spec: dict[str, Any], metric: Any, device: Any, kwargs: dict) -> Any:
    kind = spec.pop("kind")
    if kind == "Flat":
        from gpuann.flat import FlatIndex

        return FlatIndex(dim, metric=metric, device=device, **kwargs)
    if kind == "HNSW":
        from gpuann.hnsw import HNSWIndex

        return HNSWIndex(dim, M=spec["M"], sq8=spec["sq8"], metric=metric, device=device, **kwargs)
    if kind == "IVFFlat":
        from gpuann.ivf.ivf_flat import IVFFlatIndex

        return IVFFlatIndex(dim, spec["nlist"], metric=metric, device=device, **kwargs)
    if kind == "IVFSQ":
        from gpuann.ivf.ivf_sq import IVFSQIndex

        return IVFSQIndex(
            dim, spec["nlist"], sq=spec["sq"], refine=spec["refine"], metric=metric,
            device=device, **kwargs,
        )  # fmt: skip
    from gpuann.ivf.ivf_pq import IVFPQIndex

    return IVFPQIndex(
        dim,
        spec["nlist"],
        spec["m"],
        nbits=spec["nbits"],
        metric=metric,
        device=device,
        refine=spec["refine"],
        **kwargs,
    )


def index_factory(
    dim: int,
    description: str,
    *,
    metric: str | Metric = "l2",
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Any:
    """A gpuann index from a faiss factory string.

    Parameters
    ----------
    dim : int
        Dimension of the vectors given to ``add``/``search`` (before any pre-transform).
    description : str
        See :func:`parse_description`. ``"Flat"`` gives a :class:`gpuann.FlatIndex` (exact,
        nothing to train); IVF strings give :class:`gpuann.IVFFlatIndex`,
        :class:`gpuann.IVFPQIndex` or :class:`gpuann.IVFSQIndex` (``RFlat``: ``refine=True``);
        ``HNSW`` strings a :class:`gpuann.HNSWIndex`; a ``PCA``/``OPQ`` prefix wraps the
        index in a :class:`gpuann.TransformedIndex` (``train`` trains both).
    metric : {"l2", "ip", "cosine"}
    device : str or torch.device, optional
    **kwargs
        Passed on to the index's constructor (e.g. ``nprobe``, ``seed``).

    >>> index = index_factory(64, "IVF256,PQ16x4,RFlat", metric="ip", device="cpu")
    >>> type(index).__name__, index.nlist, index.m, index.nbits, index.refine, index.metric.value
    ('IVFPQIndex', 256, 16, 4, True, 'ip')
    >>> index = index_factory(64, "OPQ16_32,IVF64,PQ16", device="cpu")
    >>> type(index).__name__, index.transform.d_out, index.index.dim
    ('TransformedIndex', 32, 32)
    """
    spec = parse_description(description)
    transform = spec.pop("transform", None)
    if transform is None:
        return _build_index(dim, spec, metric, device, kwargs)
    from gpuann.transformed import TransformedIndex
    from gpuann.transforms import OPQ, PCA

    if transform["kind"] == "PCA":
        pre = PCA(dim, transform["d_out"], device=device)
    else:
        pre = OPQ(dim, transform["m"], d_out=transform["d_out"], device=device)
    return TransformedIndex(pre, _build_index(pre.d_out, spec, metric, device, kwargs))
