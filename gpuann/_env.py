"""Environment flags, parsed in one place.

Every switch gpuann reads from the environment is here, with one spelling of "true"/"false":
``1/true/on/yes`` and ``0/false/off/no`` (case-insensitive). They are read at call time, not at
import, so a test or a notebook can set them after ``import gpuann``.

- ``TRITON_INTERPRET``: Triton's own interpreter flag; when on, the Triton backend runs on CPU
  tensors (slowly: for tests).
- ``GPUANN_AUTOTUNE``: ``0`` turns off autotuning (fixed, pre-checked configurations are used);
  on by default on CUDA, always off under the interpreter.
- ``GPUANN_CPU_BLAS``: ``auto`` (default), ``numpy`` or ``torch``: which BLAS multiplies on the
  CPU (see :mod:`gpuann.engine.cpu_blas`): numpy's OpenBLAS for single queries and, in the
  verified passes of :mod:`gpuann.engine.verified_cpu`, for large unfiltered float32
  searches; ``torch`` keeps MKL and the tiled engine everywhere.
- ``GPUANN_CPU_SELECT``: ``auto`` (default) or ``torch``: how unfiltered CPU searches keep their
  running top-k: faiss's heaps when faiss imports (:mod:`gpuann.engine.heap_select`, also
  behind the verified passes), or ``torch``'s threshold filter (:mod:`gpuann.engine.running`,
  and no verified passes).
- ``GPUANN_TRITON_FP32``: ``tf32x3`` (default) or ``ieee``: how the fused k-NN kernel multiplies
  float32 storage (three TF32 tensor-core products of a hi/lo split, or FMA dots).
- ``GPUANN_TRITON_PRESET``: ``auto`` (default) or ``off``: whether the fused k-NN kernel takes
  preset thresholds from a sample pass for large k (:mod:`gpuann._triton.knn_plan`).
- ``GPUANN_AOT_CACHE``: the folder of the ahead-of-time compile checks' disk cache (default
  ``~/.cache/gpuann/aot``); ``0`` turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "aot_cache_dir",
    "autotune_enabled",
    "cpu_blas_mode",
    "cpu_select_mode",
    "env_choice",
    "env_flag",
    "interpreter_enabled",
    "triton_fp32_dot",
    "triton_preset",
]

_TRUE = frozenset({"1", "true", "on", "yes"})
_FALSE = frozenset({"0", "false", "off", "no", ""})


def env_flag(name: str, default: bool) -> bool:
    """The boolean value of environment variable ``name`` (``default`` when unset).

    An unrecognised value raises, naming the variable, rather than being read as either.

    >>> env_flag("GPUANN_SURELY_UNSET_FLAG", True)
    True
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}: expected one of 1/true/on/yes or 0/false/off/no, got {raw!r}")


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the Triton interpreter (kernels run on the CPU)."""
    return env_flag("TRITON_INTERPRET", False)


def autotune_enabled() -> bool:
    """True unless ``GPUANN_AUTOTUNE=0`` or the interpreter runs (fixed configs are used then)."""
    return env_flag("GPUANN_AUTOTUNE", True) and not interpreter_enabled()


def aot_cache_dir() -> Path | None:
    """The compile checks' disk cache folder (``GPUANN_AOT_CACHE``), or None when turned off."""
    raw = os.environ.get("GPUANN_AOT_CACHE")
    if raw is not None and raw.strip().lower() in _FALSE:
        return None
    return Path(raw) if raw else Path.home() / ".cache" / "gpuann" / "aot"


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The value of environment variable ``name``, one of ``choices`` (unset or blank: the
    first); anything else raises, naming the variable and the choices.

    >>> env_choice("GPUANN_SURELY_UNSET_CHOICE", ("auto", "off"))
    'auto'
    """
    raw = os.environ.get(name)
    value = choices[0] if raw is None or not raw.strip() else raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{name}: expected one of {'/'.join(choices)}, got {raw!r}")
    return value


def cpu_blas_mode() -> str:
    """``GPUANN_CPU_BLAS``: ``auto`` (default), ``numpy`` or ``torch``; anything else raises.

    >>> cpu_blas_mode() in ("auto", "numpy", "torch")
    True
    """
    return env_choice("GPUANN_CPU_BLAS", ("auto", "numpy", "torch"))


def cpu_select_mode() -> str:
    """``GPUANN_CPU_SELECT``: ``auto`` (default) or ``torch``; anything else raises.

    >>> cpu_select_mode() in ("auto", "torch")
    True
    """
    return env_choice("GPUANN_CPU_SELECT", ("auto", "torch"))


def triton_fp32_dot() -> str:
    """``GPUANN_TRITON_FP32``: ``tf32x3`` (default) or ``ieee``; anything else raises.

    >>> triton_fp32_dot() in ("tf32x3", "ieee")
    True
    """
    return env_choice("GPUANN_TRITON_FP32", ("tf32x3", "ieee"))


def triton_preset() -> str:
    """``GPUANN_TRITON_PRESET``: ``auto`` (default) or ``off``; anything else raises.

    >>> triton_preset() in ("auto", "off")
    True
    """
    return env_choice("GPUANN_TRITON_PRESET", ("auto", "off"))
