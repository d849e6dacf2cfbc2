"""The residual VQ-VAE: exact lookups, EMA arithmetic, dead-code restart, ranks that agree, training."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from a2p.config.vq import VQConfig, vq_preset
from a2p.models.vq import EMACodebook, ResidualVQ, build_vq


def no_op(tensor):
    return None


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_codebook_vectors_quantize_to_themselves():
    torch.manual_seed(0)
    book = EMACodebook(codes=16, dim=4, decay=0.9, dead_threshold=0.0, kmeans_iters=1)
    index = book.assign(book.embed.clone())
    assert torch.equal(index, torch.arange(16))
    assert torch.equal(book.lookup(index), book.embed)


def test_ema_update_matches_a_hand_computation():
    book = EMACodebook(codes=2, dim=1, decay=0.5, dead_threshold=0.0, kmeans_iters=1)
    book.embed.copy_(torch.tensor([[0.0], [10.0]]))
    book.embed_sum.copy_(book.embed)
    book.cluster_size.fill_(1.0)
    x = torch.tensor([[1.0], [3.0], [9.0]])
    book.update(x, book.assign(x), no_op, no_op)
    # counts (2, 1), sums (4, 9): cluster = 0.5*1 + 0.5*(2, 1) = (1.5, 1.0); embed_sum = (0 + 2, 5 + 4.5)
    assert torch.allclose(book.cluster_size, torch.tensor([1.5, 1.0]))
    total, eps = 2.5, 1e-5
    smoothed = (torch.tensor([1.5, 1.0]) + eps) / (total + 2 * eps) * total
    assert torch.allclose(book.embed.squeeze(1), torch.tensor([2.0, 9.5]) / smoothed)


def test_dead_codes_restart_on_data():
    torch.manual_seed(0)
    book = EMACodebook(codes=4, dim=2, decay=0.9, dead_threshold=0.5, kmeans_iters=1)
    book.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0], [-100.0, 50.0]]))
    book.cluster_size.copy_(torch.tensor([5.0, 5.0, 0.1, 0.1]))
    x = torch.randn(32, 2) * 0.1
    restarted = book.update(x, book.assign(x), no_op, no_op)
    assert restarted == 2
    for code in (2, 3):  # far-away unused codes now sit on data rows
        assert (x - book.embed[code]).abs().sum(1).min() < 1e-6


def test_residual_levels_reduce_the_error():
    torch.manual_seed(0)
    quantizer = ResidualVQ(VQConfig(code_dim=4, codes=8, levels=3, kmeans_iters=5, dead_threshold=0.0))
    z = torch.randn(1, 256, 4)
    quantizer.train()(z)
    quantizer.eval()
    _, codes, _ = quantizer(z)
    errors = []
    for levels in range(1, 4):
        partial = sum(quantizer.codebooks[i].lookup(codes[..., i]) for i in range(levels))
        errors.append(float((z - partial).pow(2).mean()))
    assert errors[0] < float(z.pow(2).mean())
    assert errors[2] < errors[1] < errors[0]


def test_doubled_statistics_equal_a_duplicated_batch():
    """An all-reduce over two identical ranks doubles counts and sums: one rank with the batch twice."""
    torch.manual_seed(0)
    config = VQConfig(code_dim=4, codes=8, levels=2, kmeans_iters=3, dead_threshold=0.0)
    z = torch.randn(2, 50, 4)
    one, two = ResidualVQ(config), ResidualVQ(config)
    for book in [*one.codebooks, *two.codebooks]:
        book.initialized.fill_(True)
    two.load_state_dict(one.state_dict())
    calls = []

    def doubling(tensor):
        calls.append(tensor.shape)
        tensor.mul_(2)

    two.set_collectives(all_reduce=doubling)
    for _ in range(3):
        one.train()(torch.cat([z, z]))
        two.train()(z)
    assert calls
    for a, b in zip(one.codebooks, two.codebooks):
        torch.testing.assert_close(a.embed, b.embed, rtol=1e-4, atol=1e-5)


def _rank_worker(
    rank: int, world: int, init_file: str, state: dict | None, z: torch.Tensor, out: str
) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # ranks draw different random rows: only the broadcast aligns them
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    threshold = 0.0 if state is not None else 1.0
    quantizer = ResidualVQ(VQConfig(code_dim=4, codes=8, levels=2, kmeans_iters=3, dead_threshold=threshold))
    if state is not None:
        quantizer.load_state_dict(state)
        for book in quantizer.codebooks:
            book.initialized.fill_(True)  # start from the same codebook: this run is about EMA sums
    quantizer.set_collectives(all_reduce=dist.all_reduce, broadcast=lambda t: dist.broadcast(t, 0))
    half = z.shape[0] // world
    for _ in range(3):
        quantizer.train()(z[rank * half : (rank + 1) * half])
    torch.save(quantizer.state_dict(), f"{out}.rank{rank}")
    dist.destroy_process_group()


def test_two_gloo_ranks_learn_the_codebook_of_one_process(tmp_path):
    torch.manual_seed(0)
    config = VQConfig(code_dim=4, codes=8, levels=2, kmeans_iters=3, dead_threshold=0.0)
    single = ResidualVQ(config)
    for book in single.codebooks:
        book.initialized.fill_(True)
    state = {k: v.clone() for k, v in single.state_dict().items()}
    z = torch.randn(8, 20, 4)
    for _ in range(3):
        single.train()(z)
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), state, z, out), nprocs=2, join=True)
    ranked = torch.load(f"{out}.rank0")
    for level in range(2):
        torch.testing.assert_close(
            ranked[f"codebooks.{level}.embed"], single.codebooks[level].embed, rtol=1e-5, atol=1e-6
        )


def test_vq_trains_down_and_decode_of_encode_is_stable():
    torch.manual_seed(0)
    model = build_vq(vq_preset("debug"))
    x = torch.randn(4, 20, 104).cumsum(1) * 0.1
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        _, loss, stats = model.train()(x)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append(float(loss["recon"]))
    assert losses[-1] < 0.5 * losses[0]
    assert "perplexity_l0" in stats and float(stats["perplexity_l0"]) >= 1.0
    model.eval()
    codes = model.encode(x)
    assert codes.shape == (4, 20, 2) and codes.dtype == torch.long
    again = model.encode(model.decode_codes(codes))
    assert (again == codes).float().mean() > 0.5  # re-encoding the decoded poses mostly finds the same codes
    assert torch.equal(model.encode(x), codes)  # eval mode does not learn


def test_bad_sizes_are_refused():
    from a2p.errors import ConfigError

    with pytest.raises(ConfigError, match="vq.codes must be positive"):
        VQConfig(codes=0)
    with pytest.raises(ConfigError, match="unknown VQ size"):
        vq_preset("huge")


def test_kmeans_and_restarts_keep_ranks_identical(tmp_path):
    torch.manual_seed(0)
    z = torch.randn(8, 20, 4)
    out = str(tmp_path / "fresh")
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), None, z, out), nprocs=2, join=True)
    rank0, rank1 = torch.load(f"{out}.rank0"), torch.load(f"{out}.rank1")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
