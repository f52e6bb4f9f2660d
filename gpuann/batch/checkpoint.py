"""The checkpoint of a batch search: which query rows are done, for which job.

``<out>/checkpoint.json`` is rewritten after every completed chunk of queries, atomically:
written to a temporary file in the same folder, fsynced, renamed over the old one
(``os.replace``), and the folder fsynced. A reader therefore sees the previous checkpoint or
the new one, never a torn file, whatever moment the process is killed at. The result rows of
a chunk are flushed to disk *before* its checkpoint is written, so every row the checkpoint
counts as done is on disk.

Format (JSON)::

    {"format": 1,
     "job": {...},            # everything that determines the results; compared on resume
     "plan": {...},           # tile sizes the results were computed with; reused on resume
     "rows_done": int,        # query rows [0, rows_done) are final
     "chunks_done": int,      # completed chunks, over every run of the job
     "complete": bool,
     "queries_sha256": str,   # SHA-256 of the stored bytes of query rows [0, rows_done)
     "database_sha256": str}  # exact search: SHA-256 of every database row, as streamed

The job's query fingerprint hashes only sampled rows (a cheap first check); ``queries_sha256``
covers every query row done, hashed as the chunks were read: a resumed job re-reads and hashes
those rows and refuses to continue when they changed anywhere (checkpoints written before this
field existed hold ``null`` and are not checked this way). Likewise ``database_sha256``
covers every database row of an exact job, hashed during the first database pass of a run:
a resumed run compares it after its first chunk is computed, before that chunk is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from gpuann._atomic import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "Checkpoint",
    "CheckpointMismatchError",
    "read_checkpoint",
    "verify_database",
    "verify_job",
    "verify_rows_done",
    "write_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.json"
FORMAT = 1


class CheckpointMismatchError(ValueError):
    """``resume=True`` found a checkpoint of a different job (or an unreadable one)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The state of a job after its last completed chunk.

    Attributes
    ----------
    job : dict
        The job's parameters (queries and database fingerprints, k, metric, ...).
    plan : dict
        Tile sizes (``query_tile``, ``database_tile``): a resumed run reuses them, so its
        rows are computed exactly as the first run would have.
    rows_done : int
        Query rows ``[0, rows_done)`` are final in the output files.
    chunks_done : int
        Chunks completed over every run of the job.
    complete : bool
        True once every row is done.
    queries_sha256 : str or None
        SHA-256 of the stored bytes of query rows ``[0, rows_done)``.
    database_sha256 : str or None
        Exact search: SHA-256 of the whole database as it streamed through the first chunk.
    """

    job: dict[str, Any]
    plan: dict[str, Any]
    rows_done: int
    chunks_done: int
    complete: bool = False
    queries_sha256: str | None = None
    database_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to disk."""
        return {"format": FORMAT, **dataclasses.asdict(self)}


def write_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Atomically replace the checkpoint at ``path`` (temp file, fsync, ``os.replace``)."""
    path = Path(path)
    data = json.dumps(checkpoint.to_json(), sort_keys=True, indent=1).encode()
    with atomic_write(path) as f:
        f.write(data)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint at ``path``, or ``None`` when there is none.

    Raises
    ------
    CheckpointMismatchError
        The file exists but is not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.pop("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}")
        return Checkpoint(**raw)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointMismatchError(
            f"out: {str(path)!r} is not a gpuann batch-search checkpoint (format {FORMAT}): {err}"
        ) from None


def verify_job(checkpoint: Checkpoint, job: dict[str, Any], where: str) -> None:
    """Raise unless ``checkpoint`` was written by a job with exactly these parameters.

    Parameters
    ----------
    checkpoint : Checkpoint
    job : dict
        This run's parameters (JSON values).
    where : str
        The checkpoint's path, for the message.
    """
    saved = checkpoint.job
    if saved == job:
        return
    lines = []
    for key in sorted(set(saved) | set(job)):
        if saved.get(key) != job.get(key):
            lines.append(
                f"  {key}: checkpoint has {saved.get(key)!r}, this run has {job.get(key)!r}"
            )
    raise CheckpointMismatchError(
        f"resume: the checkpoint {where!r} belongs to a different job; refusing to mix results.\n"
        + "\n".join(lines)
        + "\nRun with the original inputs, or use another out folder (or overwrite=True)."
    )


def verify_rows_done(checkpoint: Checkpoint, digest: Any, where: str, name: str) -> None:
    """Raise unless ``digest`` (of this run's rows ``[0, rows_done)``) matches the checkpoint's.

    Parameters
    ----------
    checkpoint : Checkpoint
    digest : hashlib hash object
        Fed this run's query rows ``[0, checkpoint.rows_done)``.
    where : str
        The checkpoint's path, for the message.
    name : str
        The queries' argument name (``queries``, ``x``).
    """
    if checkpoint.queries_sha256 is None or checkpoint.queries_sha256 == digest.hexdigest():
        return
    raise CheckpointMismatchError(
        f"resume: {name} rows 0..{checkpoint.rows_done - 1} differ from those the checkpoint "
        f"{where!r} was computed from; refusing to mix results of two inputs.\n"
        "Run with the original inputs, or use another out folder (or overwrite=True)."
    )


def verify_database(checkpoint: Checkpoint, sha256: str, where: str, name: str) -> None:
    """Raise unless ``sha256`` (this run's database hash) matches the checkpoint's."""
    if checkpoint.database_sha256 is None or checkpoint.database_sha256 == sha256:
        return
    raise CheckpointMismatchError(
        f"resume: {name} differs from the one the checkpoint {where!r} was computed with "
        "(its rows hash differently); refusing to mix results of two inputs.\n"
        "Run with the original inputs, or use another out folder (or overwrite=True)."
    )
