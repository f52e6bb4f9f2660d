"""``__repr__`` and ``_repr_html_`` for indexes, built from Python values only.

Everything shown comes from Python ints and tensor metadata (shape, dtype, device,
``nbytes``), never from tensor values, so displaying an index never waits for the GPU.

An index opts in with one method, ``_display_fields``, returning the fields in display order;
either inherit :class:`DisplayMixin`, or call :func:`text_repr` / :func:`html_repr` from its own
``__repr__`` / ``_repr_html_``::

    class MyIndex(DisplayMixin):
        def _display_fields(self) -> dict[str, object]:
            return {"n": self._n, "dim": self._dim, "metric": self._metric,
                    "dtype": self._dtype, "device": self._device, "memory": Bytes(self.nbytes)}
"""

from __future__ import annotations

import enum
import html
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Bytes", "DisplayMixin", "format_bytes", "html_repr", "text_repr"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units, e.g. ``"1.5 KiB"``.

    >>> format_bytes(0), format_bytes(1536), format_bytes(3 * 2**30)
    ('0 B', '1.5 KiB', '3.0 GiB')
    """
    n = int(n)
    if abs(n) < 1024:
        return f"{n} B"
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {_UNITS[unit]}"


class Bytes(int):
    """An ``int`` number of bytes shown in binary units (``memory='1.5 KiB'``).

    >>> Bytes(1536)
    Bytes(1536)
    >>> str(Bytes(1536))
    '1.5 KiB'
    """

    def __repr__(self) -> str:
        return f"Bytes({int(self)})"

    def __str__(self) -> str:
        return format_bytes(self)


def _text(value: Any) -> str:
    """A field value as shown in ``__repr__``: strings quoted, dtypes bare (``float32``)."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.device):
        return repr(str(value))
    if isinstance(value, Bytes):
        return repr(str(value))
    if isinstance(value, enum.Enum):
        return repr(value.value)
    if isinstance(value, torch.Tensor):
        raise TypeError("display fields must not be tensors (showing values would sync)")
    return repr(value)


def _plain(value: Any) -> str:
    """A field value as shown in the HTML table (no quotes)."""
    shown = _text(value)
    return shown[1:-1] if isinstance(value, (str, torch.device, Bytes, enum.Enum)) else shown


def text_repr(obj: Any, fields: Mapping[str, Any] | None = None) -> str:
    """``TypeName(field=value, ...)`` from ``fields`` (default ``obj._display_fields()``).

    Parameters
    ----------
    obj : object
        The object shown; its type name leads the text.
    fields : mapping of str to value, optional
        Python values: ``int``, ``float``, ``bool``, ``str``, ``None``, :class:`Bytes`,
        ``torch.dtype``, ``torch.device`` or an enum. Tensors are refused.

    Returns
    -------
    str

    >>> class Toy:
    ...     pass
    >>> text_repr(Toy(), {"n": 3, "dtype": torch.float16, "device": torch.device("cpu")})
    "Toy(n=3, dtype=float16, device='cpu')"
    """
    fields = obj._display_fields() if fields is None else fields
    body = ", ".join(f"{name}={_text(value)}" for name, value in fields.items())
    return f"{type(obj).__name__}({body})"


def html_repr(obj: Any, fields: Mapping[str, Any] | None = None) -> str:
    """The same fields as :func:`text_repr`, as a small HTML table for Jupyter.

    The plain ``__repr__`` text is kept in the ``title`` attribute, so hovering the table shows
    it and the two never disagree.

    Returns
    -------
    str
        An HTML fragment (a ``<div>`` holding a ``<table>``).
    """
    fields = obj._display_fields() if fields is None else fields
    name = html.escape(type(obj).__name__)
    title = html.escape(text_repr(obj, fields), quote=True)
    rows = "".join(
        '<tr><th style="text-align:left;padding:1px 8px 1px 0;font-weight:normal;opacity:.7">'
        f'{html.escape(str(key))}</th><td style="text-align:left;padding:1px 0">'
        f"<code>{html.escape(_plain(value))}</code></td></tr>"
        for key, value in fields.items()
    )
    return (
        f'<div class="gpuann-repr" title="{title}">'
        f"<strong>{name}</strong>"
        f'<table style="border-collapse:collapse;margin:2px 0 0 0">{rows}</table></div>'
    )


class DisplayMixin:
    """``__repr__`` and ``_repr_html_`` from one ``_display_fields()`` method.

    Subclasses implement ``_display_fields`` returning a dict of Python values (see
    :func:`text_repr`); it must not read tensor values.
    """

    def _display_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)
