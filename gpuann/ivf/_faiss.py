"""Everything that touches faiss directly: the lazy import, GPU detection, and the calls.

faiss is imported on first use, never when gpuann is imported. Tensors reach faiss without a
copy:

- CPU tensors as numpy views of the same memory (faiss's own Python wrappers);
- CUDA tensors by raw pointer, on torch's current CUDA stream (as faiss's
  ``contrib/torch_utils.py`` does with ``using_stream``), so faiss-gpu's kernels are ordered
  after the work that produced the queries and before whatever consumes the results, with no
  host round trip and no device synchronisation.

``POINTER_CALLS_ON_CPU`` routes CPU tensors through the pointer path too (the stream part
excepted), so that the code path used on CUDA runs in CPU-only tests.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "GPU_MAX_K",
    "FaissUnavailableError",
    "add_with_ids",
    "device_lock",
    "faiss_gpu_available",
    "gpu_resources",
    "id_selector",
    "import_faiss",
    "index_to_cpu",
    "index_to_device",
    "optional_faiss",
    "range_search",
    "remove_ids",
    "same_training",
    "search",
    "train",
]

#: Largest ``k`` (and ``nprobe``) a faiss GPU index accepts (``GPU_MAX_SELECTION_K``).
GPU_MAX_K = 2048
#: Test switch: send CPU tensors through the pointer path used for CUDA tensors.
POINTER_CALLS_ON_CPU = False

_RESOURCES: dict[int, Any] = {}
_RESOURCES_LOCK = threading.Lock()
_DEVICE_LOCKS: dict[int, threading.RLock] = {}
_REAL_FAISS: Any = None
_IMPORT_LOCK = threading.Lock()


class FaissUnavailableError(ImportError):
    """faiss (or faiss with GPU support) is needed but cannot be imported."""


def import_faiss() -> Any:
    """The ``faiss`` module, imported on first use.

    Raises
    ------
    FaissUnavailableError
        faiss is not installed; the message names the extra to install.
    """
    shim = sys.modules.get("faiss")
    if getattr(shim, "__name__", None) == "gpuann.compat.faiss":
        return _real_faiss_beside(shim)
    try:
        import faiss
    except ImportError as err:
        raise FaissUnavailableError(
            "gpuann's IVF indexes need faiss: pip install gpuann[faiss] (CPU), or "
            "faiss-gpu for CUDA indexes"
        ) from err
    global _REAL_FAISS
    _REAL_FAISS = faiss  # for when the shim takes its name later
    return faiss


def optional_faiss() -> Any | None:
    """The real ``faiss`` module (:func:`import_faiss`), or None where it cannot be imported
    (a broken install counts as missing): for the CPU paths that use faiss when it is there."""
    try:
        return import_faiss()
    except Exception:
        return None


def _real_faiss_beside(shim: Any) -> Any:
    """The real faiss while ``sys.modules["faiss"]`` is gpuann's shim (code handed the shim
    as ``faiss``), then cached.

    A real faiss imported before the shim was put in its place is reused: importing faiss a
    second time would run its class wrappers again over the same SWIG classes (every
    constructor then recurses until RecursionError) and leave two faiss modules whose
    parameter objects the other's indexes refuse. Only when none was loaded is faiss
    imported, with the shim set aside for the import.
    """
    global _REAL_FAISS
    if _REAL_FAISS is not None:
        return _REAL_FAISS
    with _IMPORT_LOCK:
        if _REAL_FAISS is None:
            _REAL_FAISS = _loaded_real_faiss(shim)
        if _REAL_FAISS is None:
            if any(name.startswith("faiss.") for name in sys.modules):
                raise FaissUnavailableError(
                    "a real faiss was imported before sys.modules['faiss'] was set to "
                    "gpuann.compat.faiss, and gpuann cannot find that module to reuse it "
                    "(importing faiss twice breaks it): import gpuann.compat.faiss before "
                    "substituting it, or substitute it before faiss is imported"
                )
            del sys.modules["faiss"]
            try:
                import faiss
            except ImportError as err:
                raise FaissUnavailableError(
                    "gpuann's IVF indexes need faiss: pip install gpuann[faiss]"
                ) from err
            finally:
                sys.modules["faiss"] = shim
            _REAL_FAISS = faiss
        return _REAL_FAISS


def _loaded_real_faiss(shim: Any) -> Any | None:
    """A real faiss package already imported in this process, found through its own
    submodules (faiss's ``class_wrappers`` and ``extra_wrappers`` import the package as
    ``faiss``), or None."""
    for name in ("faiss.class_wrappers", "faiss.extra_wrappers"):
        candidate = getattr(sys.modules.get(name), "faiss", None)
        if (
            candidate is not None
            and candidate is not shim
            and getattr(candidate, "__name__", None) == "faiss"
            and hasattr(candidate, "IndexFlat")
        ):
            return candidate
    return None


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    faiss = import_faiss()
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return False
    return faiss.get_num_gpus() > 0


def gpu_resources(device: torch.device) -> Any:
    """The shared ``faiss.StandardGpuResources`` for a CUDA ``device`` (one per device)."""
    if device.type != "cuda":
        raise ValueError(f"device: faiss GPU resources need a CUDA device, got {device}")
    if not faiss_gpu_available():
        raise FaissUnavailableError(
            f"device: {device} was asked for, but the installed faiss has no GPU support "
            "(install faiss-gpu, e.g. pip install gpuann[gpu]), or use device='cpu'"
        )
    with _RESOURCES_LOCK:
        if device.index not in _RESOURCES:
            _RESOURCES[device.index] = import_faiss().StandardGpuResources()
        return _RESOURCES[device.index]


def device_lock(device: torch.device) -> threading.RLock:
    """The lock serialising faiss-gpu calls on ``device``.

    faiss GPU indexes are not thread-safe, and every index on a device shares that device's
    ``StandardGpuResources`` (whose default stream each call sets to torch's current one).
    """
    with _RESOURCES_LOCK:
        return _DEVICE_LOCKS.setdefault(device.index, threading.RLock())


def index_to_device(cpu_index: Any, device: torch.device) -> Any:
    """A faiss index for ``device``: a clone of ``cpu_index`` (a GPU clone on CUDA)."""
    faiss = import_faiss()
    if device.type == "cpu":
        return faiss.clone_index(cpu_index)
    if cpu_index.direct_map.type != faiss.DirectMap.NoMap:
        # the id -> entry map (built by reconstruct) has no GPU counterpart: drop it first
        cpu_index = faiss.clone_index(cpu_index)
        cpu_index.set_direct_map_type(faiss.DirectMap.NoMap)
    options = faiss.GpuClonerOptions()
    options.useFloat16 = False  # keep full-precision coarse quantizer and lookup tables
    try:
        return faiss.index_cpu_to_gpu(gpu_resources(device), device.index, cpu_index, options)
    except RuntimeError as err:
        raise ValueError(f"faiss-gpu cannot hold this index on {device}: {err}") from err


def index_to_cpu(index: Any) -> Any:
    """A CPU clone of a faiss index (CPU or GPU)."""
    faiss = import_faiss()
    if hasattr(index, "getDevice"):
        return faiss.index_gpu_to_cpu(index)
    return faiss.clone_index(index)


# ---------------------------------------------------------------- calls on tensors
def _pointer(t: torch.Tensor) -> Any:
    faiss = import_faiss()
    address = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
    if t.dtype == torch.float32:
        return faiss.cast_integer_to_float_ptr(address)
    if t.dtype == torch.int64:
        return faiss.cast_integer_to_idx_t_ptr(address)
    raise TypeError(f"no faiss pointer type for {t.dtype}")


@contextlib.contextmanager
def _on_current_stream(t: torch.Tensor) -> Iterator[None]:
    """Run faiss-gpu calls on torch's current stream of ``t``'s device (no-op on CPU)."""
    if not t.is_cuda:
        yield
        return
    faiss = import_faiss()
    res = gpu_resources(t.device)
    with torch.cuda.device(t.device):
        stream = faiss.cast_integer_to_cudastream_t(torch.cuda.current_stream().cuda_stream)
        prior = res.getDefaultStream(t.device.index)
        res.setDefaultStream(t.device.index, stream)
        try:
            yield
        finally:
            res.setDefaultStream(t.device.index, prior)


def _use_pointers(t: torch.Tensor) -> bool:
    return t.is_cuda or POINTER_CALLS_ON_CPU


def _check(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype != dtype or not t.is_contiguous():
        raise TypeError(f"internal: faiss needs contiguous {dtype}, got {t.dtype}")
    return t.detach()


def train(index: Any, x: torch.Tensor) -> None:
    """``index.train(x)``; ``x`` contiguous float32 on the index's device."""
    x = _check(x, torch.float32)
    if _use_pointers(x):
        with _on_current_stream(x):
            index.train_c(x.shape[0], _pointer(x))
    else:
        index.train(x.numpy())


def add_with_ids(index: Any, x: torch.Tensor, ids: torch.Tensor) -> None:
    """``index.add_with_ids(x, ids)``; float32 ``x`` and int64 ``ids`` on the index's device."""
    x, ids = _check(x, torch.float32), _check(ids, torch.int64)
    if _use_pointers(x):
        with _on_current_stream(x):
            index.add_with_ids_c(x.shape[0], _pointer(x), _pointer(ids))
    else:
        index.add_with_ids(x.numpy(), ids.numpy())


def search(
    index: Any, q: torch.Tensor, k: int, nprobe: int, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``index.search(q, k)`` with ``nprobe`` lists, into tensors allocated by torch.

    ``allowed`` (int64, ascending, unique), given to a CPU faiss index only: the only labels
    faiss may return, passed as an id selector (:func:`id_selector`).

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32, on ``q.device`` (faiss's raw values:
        ``±FLT_MAX`` next to missing ids)
    labels : torch.Tensor, shape (Q, k), int64, ``-1`` for missing results
    """
    faiss = import_faiss()
    q = _check(q, torch.float32)
    n = q.shape[0]
    distances = torch.empty((n, k), dtype=torch.float32, device=q.device)
    labels = torch.empty((n, k), dtype=torch.int64, device=q.device)
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    if n == 0:
        return distances, labels
    # ``keep`` holds the selector and the array it reads until faiss has returned
    keep = None if allowed is None else id_selector(allowed)
    if keep is not None:
        params.sel = keep[0]
    if _use_pointers(q):
        with _on_current_stream(q):
            index.search_c(n, _pointer(q), k, _pointer(distances), _pointer(labels), params)
    else:
        index.search(q.numpy(), k, params=params, D=distances.numpy(), I=labels.numpy())
    return distances, labels


def id_selector(allowed: torch.Tensor) -> tuple[Any, np.ndarray]:
    """A faiss id selector of the labels ``allowed`` (int64, ascending, unique, non-empty),
    and the numpy array it reads (keep both alive while faiss searches).

    An ``IDSelectorBitmap`` over ``0 … max(allowed)`` when the labels are dense enough that the
    bitmap takes at most 8 bytes per allowed label (one bit test per candidate), else an
    ``IDSelectorBatch`` (a hash set of the labels).
    """
    faiss = import_faiss()
    labels = np.ascontiguousarray(allowed.detach().cpu().numpy(), dtype=np.int64)
    top = int(labels[-1]) if labels.size else -1
    if labels.size and int(labels[0]) >= 0 and top // 8 + 1 <= 8 * labels.size:
        bits = np.zeros(top + 1, dtype=bool)
        bits[labels] = True
        bitmap = np.ascontiguousarray(np.packbits(bits, bitorder="little"))
        return faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap)), bitmap
    return faiss.IDSelectorBatch(labels.size, faiss.swig_ptr(labels)), labels


def range_search(
    index: Any, q: torch.Tensor, radius: float, nprobe: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``index.range_search(q, radius)`` on a CPU faiss index with ``nprobe`` lists.

    Returns faiss's ``(lims, distances, labels)`` as numpy arrays (unordered per query).
    """
    faiss = import_faiss()
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    x = np.ascontiguousarray(q.detach().cpu().float().numpy())
    lims, distances, labels = index.range_search(x, float(radius), params=params)
    return lims.astype(np.int64), distances, labels


def remove_ids(index: Any, ids: torch.Tensor) -> int:
    """Remove ``ids`` from a CPU faiss index; returns how many were removed."""
    return int(index.remove_ids(np.ascontiguousarray(ids.detach().cpu().numpy())))


def same_training(a: Any, b: Any) -> bool:
    """Whether two CPU IVF indexes share their coarse centroids (and PQ codebooks)."""
    import numpy as np

    faiss = import_faiss()
    if a.nlist != b.nlist or a.d != b.d or type(a) is not type(b):
        return False
    if not np.array_equal(
        a.quantizer.reconstruct_n(0, a.nlist), b.quantizer.reconstruct_n(0, b.nlist)
    ):
        return False
    pq_a, pq_b = getattr(a, "pq", None), getattr(b, "pq", None)
    if pq_a is None:
        return True
    return np.array_equal(
        faiss.vector_to_array(pq_a.centroids), faiss.vector_to_array(pq_b.centroids)
    )
