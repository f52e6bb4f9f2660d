"""``Embedder``: texts → one embedding tensor on the device, in batches, ready for ``index.add``.

sentence-transformers (and transformers) are imported only when a model is loaded by name,
never by ``import gpuann``; tqdm only when a progress bar is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from gpuann._validate import resolve_device

__all__ = ["Embedder"]

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _is_sentence_transformer(model: Any) -> bool:
    return (
        isinstance(model, torch.nn.Module)
        and hasattr(model, "encode")
        and (hasattr(model, "preprocess") or hasattr(model, "tokenize"))
    )


def _is_hf_tokenizer(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "pad_token") and hasattr(tokenizer, "model_input_names")


def _module_device(model: Any) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return None


def _to_device(features: Any, device: torch.device) -> Any:
    if isinstance(features, torch.Tensor):
        return features.to(device, non_blocking=True)
    if isinstance(features, Mapping):
        return {key: _to_device(value, device) for key, value in features.items()}
    return features


def _mean_pool(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the token vectors (B, L, d) where ``mask`` (B, L) is 1."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class Embedder:
    """Turns texts into embeddings on one device, batch by batch, with no host round trip.

    Parameters
    ----------
    model : str, sentence-transformers model, torch.nn.Module or callable
        - a ``str``: a sentence-transformers model name or local directory, loaded with
          ``SentenceTransformer(model, device=device)`` (set ``HF_HUB_OFFLINE=1`` to forbid
          downloads);
        - a ``SentenceTransformer``: its own tokenizer and pooling are used;
        - a module or callable with a ``tokenizer``: called as ``model(**features)`` (or
          ``model(features)`` when the tokenizer returns a tensor). Its output may be a (B, d)
          tensor, a (B, L, d) tensor of token vectors, an object with ``last_hidden_state``
          (both mean-pooled over the attention mask) or a dict with ``"sentence_embedding"``;
        - a callable without tokenizer: called with the list of texts, returning (B, d).
    tokenizer : callable, optional
        Texts → tensor or dict of tensors. A Hugging Face tokenizer is called with
        ``padding=True, truncation=True, return_tensors="pt"``.
    device : str or torch.device, optional
        Where the embeddings are computed and returned. Default: the module's device, else CUDA
        when available, else CPU. A module elsewhere is moved there (``model.to(device)``).
    dtype : torch.dtype
        Output dtype: float32 (default), float16 or bfloat16 (a cast of the model's output;
        run the model itself in half precision with ``model.half()``).
    normalize : bool
        L2-normalise each embedding (in float32, before the cast); use for cosine / IP search.
    batch_size : int
        Texts per forward pass. Texts are sorted by length first so batches pad little; the
        output keeps the input order.
    max_length : int, optional
        Truncation length passed to a Hugging Face tokenizer.
    progress : bool, optional
        Show a ``tqdm.auto`` progress bar. Default (None): when tqdm is installed and there is
        more than one batch.

    Examples
    --------
    >>> table = torch.nn.EmbeddingBag(100, 8, mode="mean")
    >>> def tokenize(texts):
    ...     ids = [[hash(w) % 100 for w in t.split()] for t in texts]
    ...     width = max(map(len, ids))
    ...     return torch.tensor([row + row[-1:] * (width - len(row)) for row in ids])
    >>> embedder = Embedder(table, tokenize, device="cpu", normalize=True, progress=False)
    >>> embedder(["a small test", "another one"]).shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[[list[str]], Any] | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        normalize: bool = False,
        batch_size: int = 64,
        max_length: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if dtype not in _OUT_DTYPES:
            raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if isinstance(model, str):
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(model, device=str(resolve_device(device)))
        if not callable(model):
            raise TypeError(f"model: expected a callable or a model name, got {type(model)}")
        current = _module_device(model)
        if device is None and current is not None:
            self.device = current
        else:
            self.device = resolve_device(device)
            if isinstance(model, torch.nn.Module) and current not in (None, self.device):
                model.to(self.device)
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.normalize = bool(normalize)
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress
        self._dim: int | None = None
        if _is_sentence_transformer(model):
            get_dim = getattr(model, "get_embedding_dimension", None) or getattr(
                model, "get_sentence_embedding_dimension", None
            )
            self._dim = get_dim() if get_dim is not None else None

    @property
    def dim(self) -> int | None:
        """Embedding dimension (None until known: a first call tells it)."""
        return self._dim

    def __repr__(self) -> str:
        return (
            f"Embedder({type(self.model).__name__}, dim={self._dim}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, normalize={self.normalize}, "
            f"batch_size={self.batch_size})"
        )

    # ---------------------------------------------------------------- one batch
    def _tokenize(self, texts: list[str]) -> Any:
        if _is_hf_tokenizer(self.tokenizer):
            return self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        return self.tokenizer(texts)

    def _forward(self, texts: list[str]) -> torch.Tensor:
        """Embeddings (B, d) of one batch, on the device, in the model's dtype."""
        model = self.model
        if _is_sentence_transformer(model):
            prepare = getattr(model, "preprocess", None) or model.tokenize
            features = _to_device(prepare(texts), self.device)
            return model(features)["sentence_embedding"]
        if self.tokenizer is None:
            return _to_device(torch.as_tensor(model(texts)), self.device)
        features = _to_device(self._tokenize(texts), self.device)
        mask = None
        if isinstance(features, Mapping):
            mask = features.get("attention_mask")
            out = model(**features)
        else:
            out = model(features)
        if isinstance(out, Mapping) and "sentence_embedding" in out:
            return out["sentence_embedding"]
        if hasattr(out, "last_hidden_state"):
            out = out.last_hidden_state
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim not in (2, 3):
            raise TypeError(
                "model: expected a (B, d) or (B, L, d) tensor (or last_hidden_state), got "
                f"{type(out).__name__}{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}"
            )
        return _mean_pool(out, mask) if out.ndim == 3 else out

    def _finish(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.normalize:
            batch = torch.nn.functional.normalize(batch.float(), dim=1)
        return batch.to(self.dtype)

    def _bar(self, total: int, desc: str | None) -> Any:
        show = self.progress
        if show is False or (show is None and total <= self.batch_size):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            if show:
                raise ImportError("progress=True needs tqdm: pip install tqdm") from None
            return None
        return tqdm(total=total, desc=desc or "embedding", unit="text")

    # ---------------------------------------------------------------- all texts
    def __call__(self, texts: Sequence[str] | str, *, desc: str | None = None) -> torch.Tensor:
        """Embed ``texts``.

        Parameters
        ----------
        texts : sequence of str, or one str
        desc : str, optional
            Label of the progress bar.

        Returns
        -------
        torch.Tensor, shape (len(texts), dim), ``self.dtype``, on ``self.device``
            Rows in the order of ``texts``. The result stays on the device: nothing is
            copied back to the host.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected strings")
        n = len(texts)
        if n == 0:
            return torch.empty((0, self._dim or 0), dtype=self.dtype, device=self.device)
        order = sorted(range(n), key=lambda i: -len(texts[i]))  # long first: little padding
        positions = torch.tensor(order, device=self.device)
        out: torch.Tensor | None = None
        bar = self._bar(n, desc)
        module = self.model if isinstance(self.model, torch.nn.Module) else None
        was_training = module.training if module is not None else False
        try:
            if module is not None:
                module.eval()
            with torch.no_grad():
                for start in range(0, n, self.batch_size):
                    rows = order[start : start + self.batch_size]
                    batch = self._finish(self._forward([texts[i] for i in rows]))
                    if out is None:
                        out = torch.empty((n, batch.shape[1]), dtype=self.dtype, device=self.device)
                        self._dim = batch.shape[1]
                    out[positions[start : start + len(rows)]] = batch
                    if bar is not None:
                        bar.update(len(rows))
        finally:
            if module is not None:
                module.train(was_training)
            if bar is not None:
                bar.close()
        return out
