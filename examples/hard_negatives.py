"""Contrastive training with in-batch and memory-bank hard negatives mined by gpuann.

A small MLP learns embeddings of generated data (Gaussian classes, some of them close to each
other, so that hard negatives matter). Each step:

1. embeds two noisy views of a batch;
2. mines, for each anchor, the ``hard_k`` most similar *other-class* embeddings of past steps
   with ``MemoryBank.search(..., exclude_labels=labels, differentiable=True)``;
3. takes an InfoNCE loss over [positive view, in-batch other-class views, bank negatives];
4. adds the batch's second views into the bank (a ring buffer: the oldest are overwritten).

Run ``python examples/hard_negatives.py`` (CPU, a few seconds): it prints the loss falling and
the kNN accuracy of the final embeddings, measured with the bank.
"""

from __future__ import annotations

import argparse

import torch

import gpuann

__all__ = ["make_data", "train"]


def make_data(n: int = 4096, classes: int = 16, dim: int = 32, seed: int = 0):
    """Seeded Gaussian classes; class ``2c + 1`` sits close to class ``2c`` (hard pairs).

    Returns
    -------
    x : torch.Tensor, shape (n, dim), float32
    y : torch.Tensor, shape (n,), int64
    """
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.0
    centers[1::2] = centers[0::2] + 0.8 * torch.randn(classes // 2, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return x, y


def info_nce(anchor, positive, labels, hard, hard_ids, temperature: float = 0.1):
    """InfoNCE over [positive, in-batch other-class views, memory-bank hard negatives].

    ``hard`` (B, k) are similarities to the bank's negatives (``-inf``/id ``-1`` = none).
    """
    in_batch = anchor @ positive.T  # (B, B): the diagonal holds each anchor's positive
    same_class = labels[:, None] == labels[None, :]
    negatives = in_batch.masked_fill(same_class, float("-inf"))
    hard = hard.masked_fill(hard_ids < 0, float("-inf"))
    logits = torch.cat([in_batch.diagonal()[:, None], negatives, hard], dim=1) / temperature
    return torch.nn.functional.cross_entropy(logits, torch.zeros_like(labels))


def train(
    steps: int = 150,
    batch: int = 128,
    capacity: int = 2048,
    hard_k: int = 32,
    seed: int = 0,
    log_every: int = 15,
    device: str = "cpu",
) -> list[float]:
    """Train and return the mean loss of every ``log_every`` steps (printed as it goes)."""
    torch.manual_seed(seed)
    x, y = make_data(n=4096 + 512, seed=seed)
    (x, test_x), (y, test_y) = x.to(device).split(4096), y.to(device).split(4096)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    bank = gpuann.MemoryBank(capacity, 16, device=device, metric="cosine")

    def embed(inputs):
        noisy = inputs + 0.3 * torch.randn_like(inputs)  # the "augmentation"
        return torch.nn.functional.normalize(model(noisy), dim=1)

    with torch.no_grad():  # fill the bank once, so every step sees as many negatives
        for start in range(0, capacity, batch):
            bank.add(embed(x[start : start + batch]), labels=y[start : start + batch])
    losses, window = [], []
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), device=device)
        anchor, positive = embed(x[idx]), embed(x[idx])
        hard, hard_ids = bank.search(anchor, hard_k, exclude_labels=y[idx], differentiable=True)
        loss = info_nce(anchor, positive, y[idx], hard, hard_ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bank.add(positive, labels=y[idx])
        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0:
            losses.append(sum(window) / len(window))
            window = []
            print(f"step {step + 1:4d}  loss {losses[-1]:.4f}")
    with torch.no_grad():
        _, neighbours = bank.search(embed(test_x), 10)
        sorted_ids, slot_of = bank.slot_ids.sort()  # ring slots are not in id order
        votes = bank.labels[slot_of[torch.searchsorted(sorted_ids, neighbours)]]
        predicted = votes.mode(dim=1).values
        accuracy = (predicted == test_y).float().mean()
        print(f"10-NN accuracy of 512 held-out points against the bank: {accuracy:.3f}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    train(steps=args.steps, device=args.device)
