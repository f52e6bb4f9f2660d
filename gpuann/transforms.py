"""Pre-transforms in front of an index: PCA (trained in torch), OPQ (trained by faiss).

Both are linear maps ``y = (x - mean) @ forward.T`` applied in torch on the transform's device,
with ``reverse(y) = y @ backward + mean``. :class:`gpuann.TransformedIndex` composes one with
any index and keeps the shared API (``train``, ``add``, ``search``, ``remove``, ``save``…).

Transforms save to gpuann's index file format (JSON header and raw arrays, no pickle), and load
with their class's ``load`` or :func:`gpuann.load`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import torch

from gpuann._validate import as_float_matrix, positive_int, resolve_device
from gpuann.errors import NotTrainedError
from gpuann.index import DEFAULT_SEED

__all__ = ["OPQ", "PCA", "Transform"]

_KINDS: dict[str, type[Transform]] = {}


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


class Transform:
    """A trained linear map from ``d_in`` to ``d_out`` dimensions (the base of PCA and OPQ).

    Parameters
    ----------
    d_in, d_out : int
        Input and output dimensions; ``d_out <= d_in``.
    device : str or torch.device, optional
        Where training and :meth:`apply` run (default: CUDA when available, else CPU).
    """

    kind: ClassVar[str] = ""
    _option_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = cls.__name__
        _KINDS[cls.kind] = cls
        from gpuann.serialization import register_index_kind

        register_index_kind(cls.kind, _from_file)  # gpuann.load reads transforms too

    def __init__(self, d_in: int, d_out: int, *, device: str | torch.device | None = None):
        self.d_in = positive_int(d_in, "d_in")
        self.d_out = positive_int(d_out, "d_out")
        if self.d_out > self.d_in:
            raise ValueError(f"d_out: expected at most d_in ({self.d_in}), got {self.d_out}")
        self.device = resolve_device(device)
        self._mean: torch.Tensor | None = None
        self._forward: torch.Tensor | None = None
        self._backward: torch.Tensor | None = None

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` (or :meth:`load`) has set the map."""
        return self._forward is not None

    def _options(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._option_keys}

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self._options().items())
        trained = "" if self.is_trained else ", untrained"
        return f"{self.kind}({self.d_in} → {self.d_out}{options}, device='{self.device}'{trained})"

    # ---------------------------------------------------------------- training
    def train(self, x: Any) -> Transform:
        """Learn the map from sample vectors ``x`` (n, d_in); returns ``self``."""
        x, _ = as_float_matrix(x, "x", dim=self.d_in, dim_source="d_in")
        if x.shape[0] < 2:
            raise ValueError(f"x: training needs at least 2 vectors, got {x.shape[0]}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x: contains NaN or infinite values")
        self._fit(x.to(self.device))
        return self

    def _fit(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _trained_twin(self, x: Any) -> Transform:
        """A twin of this transform (same options) trained on ``x``; this one is unchanged."""
        return self._empty(self.d_in, self.d_out, self._options(), self.device).train(x)

    def _adopt(self, other: Transform) -> None:
        """Take the learned map (and statistics) of ``other``, a trained twin."""
        _, arrays = other.state()
        self._set(arrays["mean"], arrays["forward"], arrays["backward"])
        self._restore_extra(arrays)

    def _set(self, mean: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor) -> None:
        self._mean = mean.to(self.device, torch.float32).contiguous()
        self._forward = forward.to(self.device, torch.float32).contiguous()
        self._backward = backward.to(self.device, torch.float32).contiguous()

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"{self.kind}: call train(x) before applying the transform")

    # ---------------------------------------------------------------- applying
    def apply(self, x: Any, *, name: str = "x") -> Any:
        """``x`` (n, d_in) mapped to (n, d_out), float32.

        numpy in → numpy out; a tensor comes back on its own device.
        """
        self._require_trained()
        x, was_numpy = as_float_matrix(x, name, dim=self.d_in, dim_source="the transform's d_in")
        source = x.device
        y = (x.to(self.device, torch.float32) - self._mean) @ self._forward.T
        return y.cpu().numpy() if was_numpy else y.to(source)

    __call__ = apply

    def reverse(self, y: Any) -> Any:
        """Map ``y`` (n, d_out) back to (n, d_in): exact when ``d_out == d_in``, else the
        projection onto the kept subspace."""
        self._require_trained()
        y, was_numpy = as_float_matrix(y, "y", dim=self.d_out, dim_source="the transform's d_out")
        source = y.device
        x = y.to(self.device, torch.float32) @ self._backward + self._mean
        return x.cpu().numpy() if was_numpy else x.to(source)

    # ---------------------------------------------------------------- state
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(meta, arrays)``: JSON values and tensors that :meth:`from_state` rebuilds from."""
        self._require_trained()
        meta = {"kind": self.kind, "d_in": self.d_in, "d_out": self.d_out, **self._options()}
        arrays = {"mean": self._mean, "forward": self._forward, "backward": self._backward}
        return meta, {**arrays, **self._extra_arrays()}

    def _extra_arrays(self) -> dict[str, torch.Tensor]:
        return {}

    def _restore_extra(self, arrays: dict[str, torch.Tensor]) -> None:
        pass

    @classmethod
    def _empty(cls, d_in: int, d_out: int, options: dict[str, Any], device: Any) -> Transform:
        """An untrained twin built from ``options`` (the constructor's keyword arguments)."""
        return cls(d_in, d_out, **options, device=device)

    @staticmethod
    def from_state(
        meta: dict[str, Any], arrays: dict[str, torch.Tensor], device: Any = None
    ) -> Transform:
        """The transform that :meth:`state` described, on ``device``."""
        cls = _KINDS.get(meta.get("kind", ""))
        if cls is None:
            raise ValueError(f"meta: unknown transform kind {meta.get('kind')!r}")
        options = {key: meta[key] for key in cls._option_keys if key in meta}
        transform = cls._empty(meta["d_in"], meta["d_out"], options, device)
        shapes = {
            "mean": (transform.d_in,),
            "forward": (transform.d_out, transform.d_in),
            "backward": (transform.d_out, transform.d_in),
        }
        for key, shape in shapes.items():
            if key not in arrays or tuple(arrays[key].shape) != shape:
                raise ValueError(f"arrays: {key!r} is missing or not of shape {shape}")
        transform._set(arrays["mean"], arrays["forward"], arrays["backward"])
        transform._restore_extra(arrays)
        return transform

    def to(self, device: str | torch.device) -> Transform:
        """This transform on ``device`` (``self`` if already there)."""
        device = resolve_device(device)
        if device == self.device or not self.is_trained:
            if device != self.device:
                return self._empty(self.d_in, self.d_out, self._options(), device)
            return self
        return Transform.from_state(*self.state(), device=device)

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained transform to ``path`` (atomically; no pickle)."""
        from gpuann.serialization import write_index_file

        meta, arrays = self.state()
        write_index_file(path, self.kind, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> Transform:
        """Load a transform saved with :meth:`save`."""
        from gpuann.serialization import IndexFileError, read_index_file

        kind, meta, arrays = read_index_file(path)
        expected = cls.kind or "a transform"
        if kind not in _KINDS or (cls is not Transform and kind != cls.kind):
            raise ValueError(f"path: {str(path)!r} holds a {kind}, not {expected}")
        try:
            return Transform.from_state(meta, arrays, device)
        except (KeyError, TypeError, ValueError) as err:
            raise IndexFileError(f"{str(path)!r} holds an inconsistent transform: {err}") from None


def _from_file(meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> Transform:
    """:func:`gpuann.load`'s loader of a saved transform."""
    return Transform.from_state(meta, arrays, device)


class PCA(Transform):
    """Principal component analysis, trained in torch (float64) on the device.

    Parameters
    ----------
    d_in, d_out : int
        Input dimension and components kept (``d_out <= d_in``).
    whiten : bool
        Scale each component to unit variance.
    device : str or torch.device, optional
    seed : int
        Unused (PCA is deterministic); accepted for a uniform signature.

    Attributes
    ----------
    explained_variance : torch.Tensor, shape (d_out,)
        Variance along each kept component, descending.
    explained_variance_ratio : torch.Tensor, shape (d_out,)
        The same as fractions of the total variance.

    Components are the top eigenvectors of the (float64) covariance matrix, each signed so its
    largest-magnitude entry is positive.

    Examples
    --------
    >>> x = torch.randn(1000, 2) @ torch.tensor([[3.0, 0.0], [0.0, 0.1]])
    >>> pca = PCA(2, 1, device="cpu").train(x)
    >>> round(float(pca.explained_variance_ratio[0]), 2)
    1.0
    >>> pca(x).shape
    torch.Size([1000, 1])
    """

    _option_keys = ("whiten",)

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        whiten: bool = False,
        device: str | torch.device | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__(d_in, d_out, device=device)
        self.whiten = _bool(whiten, "whiten")
        self.seed = seed
        self.explained_variance: torch.Tensor | None = None
        self.explained_variance_ratio: torch.Tensor | None = None

    def _fit(self, x: torch.Tensor) -> None:
        x = x.double()
        mean = x.mean(dim=0)
        centred = x - mean
        cov = centred.T @ centred / (x.shape[0] - 1)
        values, vectors = torch.linalg.eigh(cov)  # ascending
        values = values.flip(0).clamp(min=0)
        components = vectors.flip(1).T[: self.d_out]  # (d_out, d_in)
        biggest = components.abs().argmax(dim=1, keepdim=True)
        components = components * torch.sign(components.gather(1, biggest))
        kept = values[: self.d_out]
        total = values.sum()
        self.explained_variance = kept.float()
        self.explained_variance_ratio = (kept / total if total > 0 else kept * 0).float()
        if self.whiten:
            scale = kept.clamp(min=1e-12 * max(float(kept[0]), 1e-300)).sqrt()[:, None]
            self._set(mean, components / scale, components * scale)
        else:
            self._set(mean, components, components)

    def _extra_arrays(self) -> dict[str, torch.Tensor]:
        return {
            "explained_variance": self.explained_variance,
            "explained_variance_ratio": self.explained_variance_ratio,
        }

    def _restore_extra(self, arrays: dict[str, torch.Tensor]) -> None:
        for key in ("explained_variance", "explained_variance_ratio"):
            if key in arrays:
                setattr(self, key, arrays[key].to(self.device, torch.float32))


class OPQ(Transform):
    """Optimised product quantisation's rotation (faiss ``OPQMatrix``), applied in torch.

    Learns an orthonormal map that balances the variance across the ``m`` sub-vectors of a
    product quantiser: put it in front of an IVF-PQ or PQ index with the same ``m``.

    Parameters
    ----------
    d_in : int
    m : int
        Sub-quantisers of the PQ index it feeds; ``d_out`` must be a multiple of it.
    d_out : int, optional
        Output dimension (default ``d_in``).
    nbits : int
        Bits per sub-quantiser code used while training.
    niter, niter_pq : int
        OPQ's alternating iterations, and k-means iterations of each PQ step.
    device : str or torch.device, optional
        Where :meth:`apply` runs (faiss trains on the CPU).
    seed : int
        Seeds the k-means of the PQ steps (the initial rotation is faiss's fixed one).
    """

    _option_keys = ("m", "nbits", "niter", "niter_pq", "seed")

    def __init__(
        self,
        d_in: int,
        m: int,
        *,
        d_out: int | None = None,
        nbits: int = 8,
        niter: int = 50,
        niter_pq: int = 4,
        device: str | torch.device | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__(d_in, d_in if d_out is None else d_out, device=device)
        self.m = positive_int(m, "m")
        if self.d_out % self.m:
            raise ValueError(f"m: d_out ({self.d_out}) must be a multiple of m, got {self.m}")
        self.nbits = positive_int(nbits, "nbits")
        self.niter = positive_int(niter, "niter")
        self.niter_pq = positive_int(niter_pq, "niter_pq")
        self.seed = int(seed)

    @classmethod
    def _empty(cls, d_in: int, d_out: int, options: dict[str, Any], device: Any) -> Transform:
        options = dict(options)
        return cls(d_in, options.pop("m"), d_out=d_out, **options, device=device)

    def _fit(self, x: torch.Tensor) -> None:
        from gpuann._hnsw_faiss import import_faiss

        faiss = import_faiss()
        opq = faiss.OPQMatrix(self.d_in, self.m, self.d_out)
        opq.niter, opq.niter_pq, opq.verbose = self.niter, self.niter_pq, False
        pq = faiss.ProductQuantizer(self.d_out, self.m, self.nbits)
        pq.cp.seed = self.seed
        pq.verbose = False
        opq.pq = pq
        opq.train(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()))
        a = torch.from_numpy(faiss.vector_to_array(opq.A).reshape(self.d_out, self.d_in).copy())
        self._set(torch.zeros(self.d_in), a, a)
