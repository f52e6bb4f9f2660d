"""Binary codes: 1-bit quantisation, exact Hamming search and LSH.

Importing this package imports torch and numpy only; the Triton kernel is imported on the first
search that uses it.
"""

from gpuann.binary.binary_flat import BinaryFlatIndex
from gpuann.binary.codes import quantize_binary
from gpuann.binary.lsh import LSHIndex

__all__ = ["BinaryFlatIndex", "LSHIndex", "quantize_binary"]
