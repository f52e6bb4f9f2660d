"""The progress bar of a batch search: ``tqdm.auto`` imported only when a bar is wanted."""

from __future__ import annotations

from typing import Any

__all__ = ["make_progress"]


class _Silent:
    """Stands in for a bar when ``progress=False`` (or tqdm is not installed)."""

    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(enabled: bool, total: int, initial: int, description: str) -> Any:
    """A tqdm bar over ``total`` query rows (``initial`` already done), or a silent stand-in.

    The bar's rate is in queries per second (``q/s``).
    """
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety: never fail a job for it
        return _Silent()
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit="q",
        unit_scale=True,
        dynamic_ncols=True,
        smoothing=0.1,
    )
