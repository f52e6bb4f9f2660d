"""The errors gpuann raises beyond Python's own (each also a ``ValueError`` or ``RuntimeError``).

Bad arguments raise ``ValueError`` / ``TypeError`` naming the argument. The classes here let a
caller tell the common cases apart without parsing messages.
"""

from __future__ import annotations

__all__ = ["NotTrainedError", "UnknownIdError"]


class UnknownIdError(ValueError, KeyError):
    """Ids passed to ``remove``/``update``/``reconstruct`` that the index does not hold.

    A ``ValueError`` (a bad argument) and a ``KeyError`` (a missing key) at once.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotTrainedError(RuntimeError):
    """An index that needs ``train`` was asked to ``add`` or ``search`` before it."""
