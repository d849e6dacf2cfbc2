"""The residual VQ-VAE: exact lookups, EMA arithmetic, k-means, dead-code restart, ranks that agree, training."""

import dataclasses
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from a2p.config.core import from_dict, to_dict
from a2p.config.vq import VQConfig, vq_preset
from a2p.errors import ConfigError
from a2p.models.quantize import LAPLACE_EPS, EMACodebook, ResidualVQ, no_op
from a2p.models.vq import build_vq


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def quantizer(codes=8, dim=4, levels=2, **kwargs) -> ResidualVQ:
    return ResidualVQ(codes, dim, levels, **{"kmeans_iters": 3, "dead_fraction": 0.0, **kwargs})


def initialized(q: ResidualVQ) -> ResidualVQ:
    for book in q.codebooks:
        book.initialized.fill_(True)
    return q


def test_decode_then_encode_returns_the_codes():
    torch.manual_seed(0)
    q = quantizer(codes=16, dim=4, levels=3).eval()
    # Each level's vectors much smaller than the spacing of the level before: greedy residual
    # quantization then recovers any combination exactly.
    for level, book in enumerate(q.codebooks):
        book.embed.copy_(torch.randn(16, 4) * 100.0 ** (-level))
    codes = torch.randint(0, 16, (3, 7, 3))
    assert torch.equal(q.encode(q.decode_codes(codes)), codes)
    book = q.codebooks[0]
    assert torch.equal(book.assign(book.embed.clone()), torch.arange(16))


def test_ema_update_matches_a_hand_computation():
    book = EMACodebook(codes=2, dim=1, decay=0.5, dead_fraction=0.0, kmeans_iters=1)
    book.embed.copy_(torch.tensor([[0.0], [10.0]]))
    book.embed_sum.copy_(book.embed)
    book.cluster_size.fill_(1.0)
    x = torch.tensor([[1.0], [3.0], [9.0], [500.0]])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last row is padding: it must not count
    counts, dead = book.update(x, book.assign(x), weight, no_op, no_op)
    # counts (2, 1), sums (4, 9): N = 0.5 * 1 + 0.5 * (2, 1) = (1.5, 1); m = 0.5 * (0, 10) + 0.5 * (4, 9)
    assert counts.tolist() == [2.0, 1.0] and not dead.any()
    assert torch.allclose(book.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(book.embed_sum.squeeze(1), torch.tensor([2.0, 9.5]))
    total = 2.5
    smoothed = (torch.tensor([1.5, 1.0]) + LAPLACE_EPS) / (total + 2 * LAPLACE_EPS) * total
    assert torch.allclose(book.embed.squeeze(1), torch.tensor([2.0, 9.5]) / smoothed)


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres[:, None] + 0.1 * torch.randn(4, 50, 2)).reshape(-1, 2)
    book = EMACodebook(codes=4, dim=2, decay=0.99, dead_fraction=0.0, kmeans_iters=10)
    best = float("inf")
    for seed in range(3):  # Lloyd can land in a local optimum from unlucky seeds; one of three suffices
        torch.manual_seed(seed)
        book.kmeans_init(x, torch.ones(200), no_op, no_op)
        found = book.embed[book.assign(centres)]  # the code nearest each true centre
        best = min(best, float((found - centres).abs().max()))
    assert best < 0.1
    assert bool(book.initialized) and book.cluster_size.sum() == 200


def test_dead_codes_restart_on_data():
    torch.manual_seed(0)
    book = EMACodebook(codes=4, dim=2, decay=0.9, dead_fraction=0.5, kmeans_iters=1)
    book.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0], [-100.0, 50.0]]))
    book.embed_sum.copy_(book.embed * 5.0)
    book.cluster_size.copy_(torch.tensor([5.0, 5.0, 0.1, 0.1]))
    x = torch.randn(32, 2) * 0.1
    codes = book.assign(x)
    assert set(codes.tolist()) <= {0, 1}  # codes 2 and 3 are far from every row: unused
    used = torch.bincount(codes, minlength=4).float()
    usage = 0.9 * torch.tensor([5.0, 5.0, 0.1, 0.1]) + 0.1 * used  # after the EMA step
    assert usage[2] < 0.5 * usage.mean() < usage[:2].min()  # 2 and 3 dead, 0 and 1 alive
    _, dead = book.update(x, codes, torch.ones(32), no_op, no_op)
    assert dead.tolist() == [False, False, True, True]
    for code in (2, 3):  # they now sit on data rows, with the mean usage
        assert (x - book.embed[code]).abs().sum(1).min() < 1e-6
        torch.testing.assert_close(book.cluster_size[code], usage.mean())
    torch.testing.assert_close(book.cluster_size[:2], usage[:2])
    live = book.embed[:2] - torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert live.abs().max() < 0.2  # live codes only moved a little by the EMA step


def test_absolute_threshold_restarts_exactly_the_codes_below_it():
    torch.manual_seed(0)
    usage = torch.tensor([8.0, 8.0, 4.0, 3.0, 6.0])
    embed = torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0], [-100.0, 50.0], [50.0, -100.0]])
    books = {}
    for threshold in (2.0, 0.0):  # the rule on, and a twin without it
        book = EMACodebook(
            codes=5, dim=2, decay=0.5, dead_fraction=0.0, kmeans_iters=1, dead_threshold=threshold
        )
        book.embed.copy_(embed)
        book.embed_sum.copy_(embed * usage[:, None])
        book.cluster_size.copy_(usage)
        books[threshold] = book
    x = torch.randn(32, 2) * 0.1 + (torch.arange(32) % 2)[:, None]  # around codes 0 and 1
    codes = books[2.0].assign(x)
    assert set(codes.tolist()) == {0, 1}  # 2, 3, 4 unused: their usage halves to 2, 1.5, 3
    _, dead = books[2.0].update(x, codes, torch.ones(32), no_op, no_op)
    _, never = books[0.0].update(x, codes, torch.ones(32), no_op, no_op)
    assert dead.tolist() == [False, False, False, True, False]  # 2.0 exactly is not below 2
    assert not never.any()
    book, twin = books[2.0], books[0.0]
    assert (x - book.embed[3]).abs().sum(1).min() < 1e-6  # on a data row, with the mean usage
    torch.testing.assert_close(book.cluster_size[3], twin.cluster_size.mean())
    alive = torch.tensor([0, 1, 2, 4])
    for name in ("embed", "embed_sum", "cluster_size"):  # the others learn as without the rule
        assert torch.equal(getattr(book, name)[alive], getattr(twin, name)[alive]), name


@pytest.mark.parametrize(
    "fraction, threshold, expected",
    [
        (0.0, 0.0, []),
        (0.2, 0.0, [4]),  # below 0.2 x the mean usage 12.8 = 2.56
        (0.0, 1.0, []),  # 1.0 is not below 1
        (0.0, 5.0, [3, 4]),
        (0.2, 1.0, [4]),  # the fraction rule alone
        (0.2, 5.0, [3, 4]),  # code 3 by the threshold alone
    ],
)
def test_a_code_is_dead_when_either_rule_says_so(fraction, threshold, expected):
    book = EMACodebook(
        codes=5, dim=1, decay=0.99, dead_fraction=fraction, kmeans_iters=1, dead_threshold=threshold
    )
    book.cluster_size.copy_(torch.tensor([20.0, 20.0, 20.0, 3.0, 1.0]))
    assert book.dead_codes().nonzero().flatten().tolist() == expected


@pytest.mark.parametrize("floor", [1.0, 0.5])
def test_kmeans_count_floor_comes_from_the_config(floor):
    torch.manual_seed(0)
    config = dataclasses.replace(vq_preset("debug"), kmeans_count_floor=floor, dead_threshold=3.0)
    book = build_vq(config).quantizer.codebooks[0]
    assert (book.dead_threshold, book.kmeans_sum) == (3.0, "count_weighted")
    x = torch.randn(4, config.code_dim)  # 4 rows for 16 codes: at least 12 clusters stay empty
    book.kmeans_init(x, torch.ones(4), no_op, no_op)
    counts = torch.bincount(book.assign(x), minlength=16).float()
    torch.testing.assert_close(book.cluster_size, torch.where(counts > 0, counts, floor))
    torch.testing.assert_close(book.embed_sum, book.embed * book.cluster_size[:, None])


REFERENCE_EPS = 1e-5
"""`laplace_smoothing`'s epsilon in the reference (model/vqvae.py:45)."""
REFERENCE_DEAD_BELOW = 2
"""Its `threshold_ema_dead_code` (model/vqvae.py:492)."""


def _reference_kmeans(x: torch.Tensor, codes: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's `kmeans` (model/vqvae.py:73-93): seeds from the global RNG, counts left at 0."""
    rows, dim = x.shape
    seeds = torch.randperm(rows)[:codes] if rows >= codes else torch.randint(0, rows, (codes,))
    means = x[seeds]
    bins = torch.zeros(codes, dtype=torch.long)
    for _ in range(iters):
        nearest = (-((x[:, None] - means[None]) ** 2).sum(-1)).max(-1).indices  # (N,)
        bins = torch.bincount(nearest, minlength=codes)
        sums = torch.zeros(codes, dim).scatter_add_(0, nearest[:, None].expand(rows, dim), x)
        means = torch.where((bins == 0)[:, None], means, sums / bins.clamp(min=1)[:, None])
    return means, bins


def _reference_codebook_step(book: dict, x: torch.Tensor, decay: float, generator: torch.Generator):
    """One training forward of the reference's `EuclideanCodebook` (model/vqvae.py:201-224) on x (N, D).

    Returns the code of each row and its code vector, both from the codebook before this step.
    """
    embed = book["embed"]
    codes = (-(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None])).max(-1).indices
    onehot = torch.nn.functional.one_hot(codes, embed.shape[0]).to(x.dtype)  # (N, K)
    chosen = torch.nn.functional.embedding(codes, embed)
    # expire_codes_: codes with EMA count below 2 move onto batch rows (the reference draws them
    # from the global RNG; the test's own generator leaves a2p's k-means draws aligned) ...
    expired = book["cluster_size"] < REFERENCE_DEAD_BELOW
    rows = torch.randint(0, x.shape[0], (embed.shape[0],), generator=generator)
    book["embed"] = torch.where(expired[:, None], x[rows], embed)
    # ... then the EMA step, in its ema_inplace's operations, rewrites every code vector.
    book["cluster_size"].mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
    book["embed_avg"].mul_(decay).add_((x.t() @ onehot).t(), alpha=1 - decay)
    size = book["cluster_size"]
    smoothed = (size + REFERENCE_EPS) / (size.sum() + embed.shape[0] * REFERENCE_EPS) * size.sum()
    book["embed"] = book["embed_avg"] / smoothed[:, None]
    return codes, chosen


def test_paper_codebooks_learn_exactly_as_the_reference():
    """Residual levels over 4 steps: k-means init, EMA counts, sums and code vectors, bit for bit.

    The first batch has fewer rows than codes, as the reference's (batch 4 x 20 keyframes for 1024
    codes): k-means seeds repeat and leave codes at count 0, where a2p's count floor of 1 would
    differ. The reference's restart runs and is undone in its step; `paper` has none.
    """
    config = dataclasses.replace(vq_preset("paper"), codes=16, code_dim=4, levels=2)
    quantizer = build_vq(config).quantizer.train()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(rows, 4, generator=generator) for rows in (12, 40, 40, 40)]
    torch.manual_seed(0)
    learnt = []
    for x in batches:
        out = quantizer(x[None])
        states = [{k: v.clone() for k, v in book.state_dict().items()} for book in quantizer.codebooks]
        learnt.append((out.codes[0], states))
    torch.manual_seed(0)  # the same k-means seeds
    books: list[dict] = [{}, {}]
    restarted = 0
    for x, (codes, states) in zip(batches, learnt):
        residual = x
        for level, book in enumerate(books):
            if not book:
                means, bins = _reference_kmeans(residual, 16, config.kmeans_iters)
                book.update(embed=means.clone(), embed_avg=means.clone(), cluster_size=bins.float())
                assert (bins == 0).any(), "the case needs a code that k-means left empty"
            restarted += int((book["cluster_size"] < REFERENCE_DEAD_BELOW).sum())
            index, chosen = _reference_codebook_step(book, residual, config.decay, generator)
            assert torch.equal(codes[:, level], index)
            for ours, theirs in (
                ("cluster_size", "cluster_size"),
                ("embed_sum", "embed_avg"),
                ("embed", "embed"),
            ):
                torch.testing.assert_close(states[level][ours], book[theirs], rtol=0, atol=0)
            residual = residual - chosen
    assert restarted > 0  # the reference's restart did run, to no effect


def test_residual_levels_reduce_the_error():
    torch.manual_seed(0)
    q = quantizer(codes=8, dim=4, levels=3, kmeans_iters=5)
    z = torch.randn(1, 256, 4)
    q.train()(z)
    codes = q.eval().encode(z)
    errors = [float(z.pow(2).mean())]
    for levels in range(1, 4):
        partial = sum(q.codebooks[i].lookup(codes[..., i]) for i in range(levels))
        errors.append(float((z - partial).pow(2).mean()))
    assert errors[3] < errors[2] < errors[1] < errors[0]


def test_commitment_reaches_the_encoder_through_the_first_level_only():
    """As the reference: mean over levels of ||r_l - sg(q_l)||^2, only r_0 = z carrying gradient."""
    torch.manual_seed(0)
    q = initialized(quantizer(levels=3)).eval()
    z = torch.randn(1, 10, 4, requires_grad=True)
    out = q(z)
    (grad,) = torch.autograd.grad(out.commitment, z)
    q0 = q.codebooks[0].lookup(out.codes[..., 0])
    (expected,) = torch.autograd.grad((z - q0).pow(2).mean() / 3, z)
    torch.testing.assert_close(grad, expected)
    residual, values = z.detach(), []
    for level, book in enumerate(q.codebooks):
        chosen = book.lookup(out.codes[..., level])
        values.append((residual - chosen).pow(2).mean())
        residual = residual - chosen
    torch.testing.assert_close(out.commitment, torch.stack(values).mean())
    torch.testing.assert_close(out.quantized, q.decode_codes(out.codes))


def test_masked_rows_neither_learn_nor_count():
    torch.manual_seed(0)
    z = torch.randn(2, 30, 4)
    garbage = z.clone()
    garbage[:, 20:] = 1e3  # padding with absurd values
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[:, :20] = True
    plain, masked = initialized(quantizer()), initialized(quantizer())
    masked.load_state_dict(plain.state_dict())
    for _ in range(3):
        a = plain.train()(z[:, :20])
        b = masked.train()(garbage, mask)
    torch.testing.assert_close(masked.state_dict(), plain.state_dict())
    torch.testing.assert_close(a.commitment, b.commitment)


def test_injected_all_reduce_of_two_identical_ranks_equals_the_doubled_batch():
    """Two identical ranks sum to doubled counts and sums: one process with the batch twice."""
    torch.manual_seed(0)
    z = torch.randn(2, 50, 4)
    one, two = initialized(quantizer()), initialized(quantizer())
    two.load_state_dict(one.state_dict())
    calls = []

    def doubling(tensor):
        calls.append(tuple(tensor.shape))
        tensor.mul_(2)

    two.set_collectives(all_reduce=doubling)
    for _ in range(3):
        one.train()(torch.cat([z, z]))
        two.train()(z)
    assert calls == [(8, 5)] * 6  # one fused (counts | sums) reduction per level and step
    torch.testing.assert_close(one.state_dict(), two.state_dict())


def _rank_worker(rank: int, world: int, init_file: str, state: dict, z: torch.Tensor, mask, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # ranks draw different random rows: only the broadcast aligns them
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    collectives = {"all_reduce": dist.all_reduce, "broadcast": lambda t: dist.broadcast(t, 0)}
    half = slice(rank * z.shape[0] // world, (rank + 1) * z.shape[0] // world)
    # 1. From one shared codebook, halves of a batch on two ranks learn what the whole batch does.
    shared = quantizer(**collectives)
    shared.load_state_dict(state)
    for _ in range(3):
        shared.train()(z[half], mask[half])
    # 2. Fresh codebooks: k-means seeds and restarted codes come from rank 0 on every rank
    # (without Lloyd steps the seeds are the codebook).
    fresh = quantizer(dead_fraction=0.5, **collectives)
    seeded = quantizer(kmeans_iters=0, **collectives)
    for _ in range(3):
        fresh.train()(z[half], mask[half])
        seeded.train()(z[half], mask[half])
    states = {"shared": shared.state_dict(), "fresh": fresh.state_dict(), "seeded": seeded.state_dict()}
    torch.save(states, f"{out}.rank{rank}")
    dist.destroy_process_group()


def test_two_gloo_ranks_agree_and_learn_the_codebook_of_one_process(tmp_path):
    torch.manual_seed(0)
    single = initialized(quantizer())
    state = {k: v.clone() for k, v in single.state_dict().items()}
    z = torch.randn(8, 20, 4)
    mask = torch.rand(8, 20) > 0.2
    for _ in range(3):
        single.train()(z, mask)
    out = str(tmp_path / "state")
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), state, z, mask, out), nprocs=2, join=True)
    rank0, rank1 = torch.load(f"{out}.rank0"), torch.load(f"{out}.rank1")
    torch.testing.assert_close(rank0["shared"], single.state_dict(), rtol=1e-5, atol=1e-5)
    for run in ("fresh", "seeded"):
        for name, value in rank0[run].items():
            assert torch.equal(value, rank1[run][name]), f"{run} {name}"
    assert rank0["fresh"]["codebooks.0.initialized"]


def test_vq_trains_down_and_encode_does_not_learn():
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
    assert set(stats) == {f"{name}_l{level}" for name in ("perplexity", "dead_codes") for level in (0, 1)}
    assert 1.0 <= float(stats["perplexity_l0"]) <= 16.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    codes = model.train().encode(x)  # even in training mode, encoding learns nothing
    torch.testing.assert_close(model.state_dict(), before, rtol=0, atol=0)
    assert codes.shape == (4, 20, 2) and codes.dtype == torch.long
    assert model.decode_codes(codes).shape == x.shape


def test_padded_keyframes_change_nothing_and_the_encoder_is_causal():
    torch.manual_seed(0)
    config = vq_preset("debug")
    config.velocity_weight = 1.0
    model = build_vq(config).eval()
    x = torch.randn(2, 12, 104)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 9:] = False
    changed = x.clone()
    changed[:, 9:] = 100.0
    _, a, _ = model(x, mask)
    _, b, _ = model(changed, mask)
    for name in ("loss", "recon", "commit", "velocity"):
        torch.testing.assert_close(a[name], b[name])
    assert torch.equal(model.encode(x)[:, :9], model.encode(changed)[:, :9])


def test_paper_preset_is_the_reference_size_and_configs_round_trip():
    model = build_vq(vq_preset("paper"))
    # the reference's TemporalVertexCodec(104, 64, 1024, 4) without its unused project_mean_shape
    assert sum(p.numel() for p in model.parameters()) == 79_528
    assert [tuple(b.embed.shape) for b in model.quantizer.codebooks] == [(1024, 64)] * 4
    assert model.encoder.receptive_field == 8
    for size in ("paper", "a2p", "debug"):
        assert from_dict(VQConfig, to_dict(vq_preset(size))) == vq_preset(size)


def test_presets_choose_their_codebook_rules():
    rules = ("dead_fraction", "dead_threshold", "kmeans_count_floor", "kmeans_sum")
    assert [getattr(vq_preset("paper"), name) for name in rules] == [0.0, 0.0, 0.0, "centroid"]
    assert [getattr(vq_preset("a2p"), name) for name in rules] == [0.05, 0.0, 1.0, "count_weighted"]
    assert [getattr(VQConfig(), name) for name in rules] == [
        getattr(vq_preset("a2p"), name) for name in rules
    ]


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="vq.codes must be positive"):
        VQConfig(codes=0)
    with pytest.raises(ConfigError, match="recon_loss.*not one of"):
        from_dict(VQConfig, {"recon_loss": "l3"})
    with pytest.raises(ConfigError, match="unknown VQ size"):
        vq_preset("huge")
    with pytest.raises(ConfigError, match="kmeans_sum.*not one of"):
        from_dict(VQConfig, {"kmeans_sum": "mean"})


@pytest.mark.parametrize("name", ["dead_fraction", "dead_threshold", "kmeans_count_floor"])
@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf])
def test_bad_codebook_rules_are_refused(name, value):
    with pytest.raises(ConfigError, match=f"vq.{name} must be a finite number >= 0, got {value}"):
        VQConfig(**{name: value})
    # through a config file: the shared guard refuses NaN and Inf first, the VQ's own check the rest
    with pytest.raises(ConfigError, match=f"{name}.*finite"):
        from_dict(VQConfig, {name: value})
