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

import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from gpuann._atomic import atomic_write
from gpuann._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "IndexFileError",
    "index_from_bytes",
    "index_to_bytes",
    "load",
    "read_index_file",
    "register_index_kind",
    "unpickle_index",
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
    "int8": torch.int8,
    "uint8": torch.uint8,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
#: Arrays start at multiples of this many bytes into the payload.
_ALIGN = 64
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
    header, blobs = _encode(kind, meta, arrays)
    with atomic_write(path) as f:
        _write_stream(f, header, blobs)


def _encode(
    kind: str, meta: Mapping[str, Any], arrays: Mapping[str, torch.Tensor]
) -> tuple[bytes, list]:
    """The header bytes and the payload's pieces."""
    entries, blobs, offset, crc = [], [], 0, 0
    for name, tensor in arrays.items():
        if tensor.dtype not in _DTYPE_NAMES:
            raise TypeError(f"cannot save array {name!r} of dtype {tensor.dtype}")
        pad = -offset % _ALIGN  # each array starts aligned, so loading can view, not copy
        if pad:
            blob = np.zeros(pad, dtype=np.uint8)
            crc = zlib.crc32(blob, crc)
            blobs.append(blob)
            offset += pad
        tensor = tensor.detach().cpu()
        if not tensor.numel():  # an empty tensor may have stride 0, which view() refuses
            tensor = torch.empty(tensor.shape, dtype=tensor.dtype)  # (found by review)
        blob = tensor.contiguous().view(torch.uint8).numpy().reshape(-1)
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
    return header, blobs


def index_to_bytes(kind: str, meta: Mapping[str, Any], arrays: Mapping[str, torch.Tensor]) -> bytes:
    """The bytes :func:`write_index_file` would write (for pickling and in-memory copies)."""
    header, blobs = _encode(kind, meta, arrays)
    buffer = io.BytesIO()
    _write_stream(buffer, header, blobs)
    return buffer.getvalue()


def _write_stream(f: BinaryIO, header: bytes, blobs: list) -> None:
    f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)))
    f.write(header)
    f.write(_CRC.pack(zlib.crc32(header)))
    for blob in blobs:
        f.write(memoryview(blob))


def read_index_file(path: str | os.PathLike) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """Read and verify an index file.

    Sizes are checked against the file's length before any payload is read (a header that
    declares less or more than the file holds is refused at once), and the payload is read once
    into one buffer that the returned tensors share: loading costs the payload's size in memory,
    not twice that.

    Returns
    -------
    kind : str
    meta : dict
    arrays : dict of str to torch.Tensor (CPU)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no index file at {str(path)!r}")
    with open(path, "rb") as f:
        return _read_stream(f, path.stat().st_size, f"{str(path)!r}")


def index_from_bytes(data: bytes | bytearray | memoryview) -> Any:
    """The index held by ``data`` (from :func:`index_to_bytes`), on the CPU."""
    kind, meta, arrays = _read_stream(io.BytesIO(data), len(data), "the index bytes")
    return _build(kind, meta, arrays, torch.device("cpu"), "the index bytes")


def unpickle_index(data: bytes, device: str) -> Any:
    """Rebuild a pickled index (``Index.__reduce__``) on ``device``, or the CPU if it is absent."""
    kind, meta, arrays = _read_stream(io.BytesIO(data), len(data), "the pickled index")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        target = torch.device("cpu")
    return _build(kind, meta, arrays, target, "the pickled index")


def _read_stream(f: BinaryIO, size: int, where: str) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """Read and verify an index file's content from ``f`` (``size`` bytes)."""
    prefix = f.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise IndexFileError(f"{where} is too short to be a gpuann index file ({size} bytes)")
    magic, version, header_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise IndexFileError(f"{where} is not a gpuann index file (bad magic bytes)")
    if version > FORMAT_VERSION or version < 1:
        raise IndexFileError(
            f"{where} has format version {version}; this gpuann ({__version__}) reads "
            f"versions 1 to {FORMAT_VERSION}: upgrade gpuann"
        )
    header_end = _PREFIX.size + header_len
    if size < header_end + _CRC.size:
        raise IndexFileError(f"{where} is truncated (header incomplete)")
    header_bytes = f.read(header_len)
    (header_crc,) = _CRC.unpack(f.read(_CRC.size))
    if zlib.crc32(header_bytes) != header_crc:
        raise IndexFileError(f"{where} is corrupt (header checksum mismatch)")
    header = _parse_header(header_bytes, where)
    payload_nbytes = size - header_end - _CRC.size
    if payload_nbytes != header["payload_nbytes"]:
        raise IndexFileError(
            f"{where} is truncated or has trailing bytes: payload is {payload_nbytes} "
            f"bytes, expected {header['payload_nbytes']}"
        )
    entries = _check_entries(header, where)
    payload = bytearray(payload_nbytes)
    if f.readinto(payload) != payload_nbytes:
        raise IndexFileError(f"{where} changed while it was read")
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise IndexFileError(f"{where} is corrupt (payload checksum mismatch)")
    whole = torch.frombuffer(payload, dtype=torch.uint8) if payload_nbytes else None
    arrays = {}
    for name, dtype, shape, start, nbytes in entries:
        if not nbytes:
            flat = torch.empty(0, dtype=torch.uint8)
        elif start % dtype.itemsize:  # files written before arrays were aligned
            flat = whole[start : start + nbytes].clone()
        else:
            flat = whole[start : start + nbytes]
        arrays[name] = flat.view(dtype).reshape(shape)
    return header["kind"], header["meta"], arrays


def _parse_header(header_bytes: bytes, where: str) -> dict:
    """The header as a dict with the fields every file has, or :class:`IndexFileError`."""
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFileError(f"{where} has an unreadable header: {err}") from None
    fields = {
        "kind": str,
        "meta": dict,
        "arrays": list,
        "payload_nbytes": int,
        "payload_crc32": int,
    }
    if not isinstance(header, dict):
        raise IndexFileError(f"{where} has a header that is not a JSON object")
    for name, kind in fields.items():
        if not isinstance(header.get(name), kind) or isinstance(header.get(name), bool):
            raise IndexFileError(f"{where}: header field {name!r} is missing or not a {kind}")
    return header


def _check_entries(header: dict, where: str) -> list[tuple[str, torch.dtype, list, int, int]]:
    """Each array entry checked against the payload's bounds before anything is read."""
    entries = []
    total = header["payload_nbytes"]
    for entry in header["arrays"]:
        try:
            name, dtype_name = entry["name"], entry["dtype"]
            shape, start, nbytes = entry["shape"], entry["offset"], entry["nbytes"]
        except (KeyError, TypeError):
            raise IndexFileError(f"{where}: an array entry lacks name/dtype/shape/offset") from None
        dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise IndexFileError(f"{where}: array {name!r} has unknown dtype {dtype_name!r}")
        ints = [start, nbytes, *shape] if isinstance(shape, list) else None
        if ints is None or not all(isinstance(v, int) and v >= 0 for v in ints):
            raise IndexFileError(f"{where}: array {name!r} has a malformed shape or offset")
        count = 1
        for s in shape:
            count *= s
        if nbytes != count * dtype.itemsize or start + nbytes > total:
            raise IndexFileError(f"{where}: array {name!r} does not match its shape")
        entries.append((str(name), dtype, shape, start, nbytes))
    return entries


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
    from gpuann._validate import resolve_device

    device = resolve_device(device)  # a bad device is the caller's error, not the file's
    found, meta, arrays = read_index_file(path)
    if kind is not None and found != kind:
        raise ValueError(f"path: {str(path)!r} holds a {found}, not a {kind}")
    return _build(found, meta, arrays, device, f"{str(path)!r}")


def _build(kind: str, meta: dict, arrays: dict, device: torch.device, where: str) -> Any:
    loader = _LOADERS.get(kind)
    if loader is None:
        _import_index_modules()
        loader = _LOADERS.get(kind)
    if loader is None:
        raise IndexFileError(f"{where} holds an index of unknown kind {kind!r}")
    try:
        return loader(meta, arrays, device)
    except IndexFileError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, RuntimeError) as err:
        raise IndexFileError(
            f"{where} has content inconsistent with its header: {type(err).__name__}: {err}"
        ) from None


def _import_index_modules() -> None:
    """Import the modules that register index kinds (indexes outside the core register lazily)."""
    import importlib

    for module in (
        "gpuann.flat",
        "gpuann.ivf",
        "gpuann.binary",
        "gpuann.kdtree",
        "gpuann.memory_bank",
        "gpuann.hnsw",
        "gpuann.transforms",
        "gpuann.transformed",
    ):
        importlib.import_module(module)
