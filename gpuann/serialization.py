"""The gpuann index file: a versioned, checksummed header and raw arrays. No pickle, ever.

Layout (all integers little-endian)::

    magic          8 bytes   b"GPUANN\\x00\\x1a"
    format         u32       FORMAT_VERSION
    header_len     u64
    header         header_len bytes of UTF-8 JSON
    header_crc32   u32
    payload        the arrays, back to back, in header order

The header holds the index ``kind`` (its class's registered name), its ``meta`` (plain JSON
values), and for each array its name, dtype, shape, byte offset, byte length; and the payload's
length and CRC-32. Loading checks every one of these before building anything, so a truncated
or corrupt file raises :class:`IndexFileError` and never half-loads.

Saving writes to a temporary file in the same folder, fsyncs it and renames it over the target:
a crash or a failed save leaves the previous file as it was.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from gpuann._atomic import atomic_write
from gpuann._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "IndexFileError",
    "load",
    "read_index_file",
    "register_index_kind",
    "write_index_file",
]

MAGIC = b"GPUANN\x00\x1a"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_CRC = struct.Struct("<I")
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
#: kind -> loader(meta, arrays, device) -> index
_LOADERS: dict[str, Callable[[dict, dict[str, torch.Tensor], Any], Any]] = {}


class IndexFileError(ValueError):
    """An index file is not a gpuann file, is of an unknown version, truncated or corrupt."""


def register_index_kind(
    kind: str, loader: Callable[[dict, dict[str, torch.Tensor], Any], Any]
) -> None:
    """Make :func:`load` able to rebuild indexes saved with ``kind``."""
    _LOADERS[kind] = loader


def write_index_file(
    path: str | os.PathLike, kind: str, meta: Mapping[str, Any], arrays: Mapping[str, torch.Tensor]
) -> None:
    """Atomically write an index file (see the module docstring for the layout)."""
    path = Path(path)
    entries, blobs, offset, crc = [], [], 0, 0
    for name, tensor in arrays.items():
        if tensor.dtype not in _DTYPE_NAMES:
            raise TypeError(f"cannot save array {name!r} of dtype {tensor.dtype}")
        blob = tensor.detach().contiguous().cpu().view(torch.uint8).numpy().reshape(-1)
        entries.append(
            {
                "name": name,
                "dtype": _DTYPE_NAMES[tensor.dtype],
                "shape": list(tensor.shape),
                "offset": offset,
                "nbytes": int(blob.nbytes),
            }
        )
        crc = zlib.crc32(blob, crc)
        blobs.append(blob)
        offset += int(blob.nbytes)
    header = json.dumps(
        {
            "kind": kind,
            "meta": dict(meta),
            "arrays": entries,
            "payload_nbytes": offset,
            "payload_crc32": crc,
            "gpuann_version": __version__,
        },
        sort_keys=True,
    ).encode()
    with atomic_write(path) as f:
        f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)))
        f.write(header)
        f.write(_CRC.pack(zlib.crc32(header)))
        for blob in blobs:
            f.write(memoryview(blob))


def read_index_file(path: str | os.PathLike) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """Read and verify an index file.

    Returns
    -------
    kind : str
    meta : dict
    arrays : dict of str to torch.Tensor (CPU)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no index file at {str(path)!r}")
    data = path.read_bytes()
    where = f"{str(path)!r}"
    if len(data) < _PREFIX.size:
        raise IndexFileError(f"{where} is too short to be a gpuann index file ({len(data)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise IndexFileError(f"{where} is not a gpuann index file (bad magic bytes)")
    if version > FORMAT_VERSION or version < 1:
        raise IndexFileError(
            f"{where} has format version {version}; this gpuann ({__version__}) reads versions "
            f"1 to {FORMAT_VERSION}: upgrade gpuann"
        )
    header_end = _PREFIX.size + header_len
    if len(data) < header_end + _CRC.size:
        raise IndexFileError(f"{where} is truncated (header incomplete)")
    header_bytes = data[_PREFIX.size : header_end]
    (header_crc,) = _CRC.unpack_from(data, header_end)
    if zlib.crc32(header_bytes) != header_crc:
        raise IndexFileError(f"{where} is corrupt (header checksum mismatch)")
    header = json.loads(header_bytes)
    payload = memoryview(data)[header_end + _CRC.size :]
    if len(payload) != header["payload_nbytes"]:
        raise IndexFileError(
            f"{where} is truncated or has trailing bytes: payload is {len(payload)} bytes, "
            f"expected {header['payload_nbytes']}"
        )
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise IndexFileError(f"{where} is corrupt (payload checksum mismatch)")
    arrays = {}
    for entry in header["arrays"]:
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise IndexFileError(
                f"{where}: array {entry['name']!r} has unknown dtype {entry['dtype']!r}"
            )
        start, nbytes = entry["offset"], entry["nbytes"]
        chunk = payload[start : start + nbytes]
        count = 1
        for s in entry["shape"]:
            count *= s
        if len(chunk) != nbytes or nbytes != count * dtype.itemsize:
            raise IndexFileError(f"{where}: array {entry['name']!r} does not match its shape")
        flat = (
            torch.frombuffer(bytearray(chunk), dtype=torch.uint8)
            if nbytes
            else torch.empty(0, dtype=torch.uint8)
        )
        arrays[entry["name"]] = flat.view(dtype).reshape(entry["shape"])
    return header["kind"], header["meta"], arrays


def load(
    path: str | os.PathLike, device: str | torch.device | None = None, *, kind: str | None = None
) -> Any:
    """Load an index saved by any gpuann index's ``save``.

    Parameters
    ----------
    path : str or os.PathLike
    device : str or torch.device, optional
        Where to put the index; default CUDA when available, else CPU.
    kind : str, optional
        The index class expected (``"FlatIndex"``…); another kind in the file raises
        ``ValueError``. Each index class's ``load`` passes its own.

    Raises
    ------
    IndexFileError
        The file is not a gpuann index, has an unsupported version, or is truncated or corrupt.
    """
    found, meta, arrays = read_index_file(path)
    if kind is not None and found != kind:
        raise ValueError(f"path: {str(path)!r} holds a {found}, not a {kind}")
    kind = found
    loader = _LOADERS.get(kind)
    if loader is None:
        _import_index_modules()
        loader = _LOADERS.get(kind)
    if loader is None:
        raise IndexFileError(f"{str(path)!r} holds an index of unknown kind {kind!r}")
    try:
        return loader(meta, arrays, device)
    except (KeyError, TypeError) as err:
        raise IndexFileError(f"{str(path)!r} has an inconsistent header: {err}") from None


def _import_index_modules() -> None:
    """Import the modules that register index kinds (indexes outside the core register lazily)."""
    import importlib

    for module in ("gpuann.flat", "gpuann.ivf", "gpuann.binary", "gpuann.kdtree"):
        importlib.import_module(module)
