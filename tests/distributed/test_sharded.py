"""gpuann.distributed on 2 gloo processes spawned by the test, against one process.

Every rank builds the same seeded data; the workers save their results and the parent
compares them with single-process searches over the union: ids exactly, distances to 1e-6.
"""

from __future__ import annotations

import datetime

import torch
import torch.multiprocessing as mp

import gpuann

WORLD = 2
N, DIM, K = 700, 8, 6
QUERIES_PER_RANK = (5, 3)
STEPS, BATCH, CAPACITY = 4, 9, 30


def _data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, DIM, generator=g)
    x[600:650] = x[:50]  # exact duplicates: ties between ids held by different ranks
    ids = torch.randperm(10 * N, generator=g)[:N] * 2
    ids[600:650] += 1  # odd: the duplicates live on rank 1, the originals on rank 0
    queries = torch.randn(sum(QUERIES_PER_RANK), DIM, generator=g)
    queries[:2] = x[:2]
    batches = torch.randn(STEPS, WORLD, BATCH, DIM, generator=g)
    labels = torch.randint(0, 3, (STEPS, WORLD, BATCH), generator=g)
    return x, ids, queries, batches, labels


def _worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from gpuann.distributed import DistributedMemoryBank, ReplicatedIndex, ShardedIndex

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        x, ids, queries, batches, labels = _data()
        start = sum(QUERIES_PER_RANK[:rank])
        mine = queries[start : start + QUERIES_PER_RANK[rank]]
        results = {}
        for metric in ("l2", "ip"):
            shard = gpuann.FlatIndex(DIM, metric=metric, device="cpu")
            sharded = ShardedIndex(shard)
            keep = (ids % WORLD) == rank  # interleaved global ids, by parity
            sharded.add(x[keep], ids=ids[keep])
            results[f"sharded_{metric}"] = tuple(sharded.search(mine, K))
            exclude = ids[:1].expand(mine.shape[0], 1)
            results[f"sharded_excl_{metric}"] = tuple(sharded.search(mine, K, exclude_ids=exclude))
            full = gpuann.FlatIndex(DIM, metric=metric, device="cpu")
            full.add(x, ids=ids)
            results[f"replicated_{metric}"] = tuple(ReplicatedIndex(full).search(queries, K))
        bank = DistributedMemoryBank(CAPACITY, DIM, device="cpu")
        for step in range(STEPS):
            bank.add(batches[step, rank], labels=labels[step, rank])
        results["bank_state"] = bank.state_dict()
        results["bank"] = tuple(
            bank.search(mine, K, exclude_labels=torch.zeros(len(mine), dtype=torch.int64))
        )
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(init, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    x, ids, queries, batches, labels = _data()
    bounds = [0, QUERIES_PER_RANK[0], sum(QUERIES_PER_RANK)]
    for metric in ("l2", "ip"):
        full = gpuann.FlatIndex(DIM, metric=metric, device="cpu")
        full.add(x, ids=ids)
        plain = full.search(queries, K)
        excluded = full.search(queries, K, exclude_ids=ids[:1].expand(len(queries), 1))
        if metric == "l2":  # query 0 is row 0, duplicated on the other rank: lower id first
            assert plain.ids[0, :2].tolist() == sorted([int(ids[0]), int(ids[600])])
        for name, expected in (("sharded", plain), ("sharded_excl", excluded)):
            D = torch.cat([results[r][f"{name}_{metric}"][0] for r in range(WORLD)])
            I = torch.cat([results[r][f"{name}_{metric}"][1] for r in range(WORLD)])
            assert torch.equal(I, expected.ids), (name, metric)
            torch.testing.assert_close(D, expected.distances, rtol=0, atol=1e-6)
        for r in range(WORLD):  # every rank gets every query's results
            D, I = results[r][f"replicated_{metric}"]
            assert torch.equal(I, plain.ids)
            torch.testing.assert_close(D, plain.distances, rtol=0, atol=1e-6)
    bank = gpuann.MemoryBank(CAPACITY, DIM, device="cpu")
    for step in range(STEPS):  # rank 0's batch first, then rank 1's
        bank.add(batches[step].reshape(-1, DIM), labels=labels[step].reshape(-1))
    for r in range(WORLD):
        for name, value in bank.state_dict().items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(results[r]["bank_state"][name], value), name
        mine = queries[bounds[r] : bounds[r + 1]]
        D, I = bank.search(mine, K, exclude_labels=torch.zeros(len(mine), dtype=torch.int64))
        assert torch.equal(results[r]["bank"][1], I)
        torch.testing.assert_close(results[r]["bank"][0], D, rtol=0, atol=1e-6)


def _caught(call):
    """(type name, message) of what ``call`` raised, or None."""
    try:
        call()
    except Exception as err:
        return type(err).__name__, str(err)
    return None


def _bad_input_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from gpuann.distributed import DistributedMemoryBank, ReplicatedIndex, ShardedIndex

    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timeout)
    try:
        x, ids, queries, batches, labels = _data()
        results = {}
        shard = gpuann.FlatIndex(DIM, device="cpu")
        keep = (ids % WORLD) == rank
        shard.add(x[keep], ids=ids[keep])
        sharded = ShardedIndex(shard)
        mine = queries[3 * rank : 3 * rank + 3]
        wrong = torch.randn(2, DIM - 3) if rank == 1 else mine  # only rank 1 is wrong
        results["wrong_dim"] = _caught(lambda: sharded.search(wrong, K))
        results["wrong_k"] = _caught(lambda: sharded.search(mine, K + rank))
        half = mine[:, :1].expand(3, 2) if rank == 0 else None  # exclude_ids on rank 0 only
        results["one_sided_option"] = _caught(lambda: sharded.search(mine, K, exclude_ids=half))
        # the group is still in step: a good search afterwards works, numpy in -> numpy out
        results["after"] = tuple(sharded.search(mine, K))
        D, I = sharded.search(mine.numpy(), K)
        results["numpy"] = (type(D).__name__, type(I).__name__, torch.from_numpy(I))
        full = gpuann.FlatIndex(DIM, device="cpu")
        full.add(x, ids=ids)
        replicated = ReplicatedIndex(full)
        results["replicated_rows"] = _caught(lambda: replicated.search(queries[: 4 + rank], K))
        D, I = replicated.search(queries.numpy(), K)
        results["replicated_numpy"] = (type(D).__name__, torch.from_numpy(I))
        bank = DistributedMemoryBank(CAPACITY, DIM, device="cpu")
        sizes = (BATCH, BATCH - 2)  # different batch sizes per rank
        results["bank_sizes"] = _caught(lambda: bank.add(batches[0, rank, : sizes[rank]]))
        results["bank_unchanged"] = (int(bank.count), len(bank))
        results["bank_dim"] = _caught(
            lambda: bank.add(batches[0, rank, :, : DIM - rank])  # rank 1: wrong dim
        )
        results["bank_labels"] = _caught(
            lambda: bank.add(batches[0, rank], labels=labels[0, rank] if rank else None)
        )
        varying = DistributedMemoryBank(CAPACITY, DIM, device="cpu", same_batch_size=False)
        varying.add(batches[0, rank, : sizes[rank]], labels=labels[0, rank, : sizes[rank]])
        results["varying"] = (int(varying.count), varying.ids.clone(), varying.embeddings.clone())
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_bad_input_on_one_rank_raises_the_same_error_on_every_rank(tmp_path):
    """Issue 13 item 4: shapes and flags are agreed first, so no rank aborts inside gloo."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_bad_input_worker, args=(init, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for key, kind, words in (
        ("wrong_dim", "ValueError", ["queries: rank 1 passed 5 columns", "dim is 8"]),
        ("wrong_k", "ValueError", ["k: ranks passed different k [6, 7]"]),
        ("one_sided_option", "ValueError", ["exclude_ids: given by ranks [0] only"]),
        ("replicated_rows", "ValueError", ["queries: ranks passed [4, 5] rows"]),
        ("bank_sizes", "ValueError", ["x: ranks added batches of [9, 7] rows"]),
        ("bank_dim", "ValueError", ["x: rank 1 passed 7 columns"]),
        ("bank_labels", "ValueError", ["labels: given by ranks [1] only"]),
    ):
        assert results[0][key] == results[1][key], key  # the same error on every rank
        assert results[0][key][0] == kind and all(w in results[0][key][1] for w in words), (
            key,
            results[0][key],
        )
    assert results[0]["bank_unchanged"] == results[1]["bank_unchanged"] == (0, 0)
    x, ids, queries, batches, labels = _data()
    full = gpuann.FlatIndex(DIM, device="cpu")
    full.add(x, ids=ids)
    for r in range(WORLD):
        assert torch.equal(results[r]["after"][1], full.search(queries[3 * r : 3 * r + 3], K).ids)
        assert results[r]["numpy"][:2] == ("ndarray", "ndarray")
        assert torch.equal(results[r]["numpy"][2], results[r]["after"][1])
        assert results[r]["replicated_numpy"][0] == "ndarray"
        assert torch.equal(results[r]["replicated_numpy"][1], full.search(queries, K).ids)
    expected = gpuann.MemoryBank(CAPACITY, DIM, device="cpu")
    expected.add(torch.cat([batches[0, 0], batches[0, 1, : BATCH - 2]]))
    for r in range(WORLD):
        count, stored_ids, embeddings = results[r]["varying"]
        assert count == 2 * BATCH - 2 and torch.equal(stored_ids, torch.arange(2 * BATCH - 2))
        assert torch.equal(embeddings, expected.embeddings)
