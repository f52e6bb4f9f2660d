"""Write the fixture index for the current file-format version (run once per new version).

python tests/data/make_fixtures.py
"""

import pathlib

import torch

import gpuann
from gpuann.serialization import FORMAT_VERSION

index = gpuann.FlatIndex(3, metric="l2", device="cpu", dtype=torch.float16)
index.add(torch.arange(15, dtype=torch.float32).reshape(5, 3) / 10, ids=[2, 4, 6, 8, 10])
index.save(pathlib.Path(__file__).parent / f"flat_v{FORMAT_VERSION}.gpuann")
