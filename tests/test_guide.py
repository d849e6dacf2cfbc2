"""The guide transformer: KV-cache generation equals recomputation, nucleus sampling, batching, training."""

import pytest
import torch

from a2p.config.core import from_dict, to_dict
from a2p.config.guide import GuideConfig, guide_preset
from a2p.errors import ConfigError
from a2p.models.guide import build_guide, sample_top_p, top_p_filter


@pytest.fixture(scope="module")
def guide():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build_guide(guide_preset("debug")).eval()


def features(batch: int = 2, frames: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        batch, frames, guide_preset("debug").audio_dim, generator=torch.Generator().manual_seed(seed)
    )


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_kv_cache_generation_equals_full_recomputation(guide):
    audio = features()
    cached, cached_logits = guide.generate(
        audio, 6, generator=torch.Generator().manual_seed(3), return_logits=True
    )
    full, full_logits = guide.generate(
        audio, 6, generator=torch.Generator().manual_seed(3), use_cache=False, return_logits=True
    )
    assert cached.shape == (2, 6, 2) and cached.dtype == torch.long
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, rtol=1e-5, atol=1e-5)
    # and both are the logits of teacher forcing on the sampled tokens
    forced = guide.logits(cached, audio)
    torch.testing.assert_close(cached_logits, forced, rtol=1e-5, atol=1e-5)
    assert len({tuple(row) for row in cached.reshape(-1, 2).tolist()}) > 1  # it does sample


def test_prefix_continues_a_sequence(guide):
    audio = features()
    whole = guide.generate(audio, 5, generator=seeded(1, 2))
    generators = seeded(1, 2)  # the same per-row streams, consumed in two calls
    first = guide.generate(audio, 3, generator=generators)
    rest = guide.generate(audio, 2, generator=generators, prefix=first)
    assert torch.equal(torch.cat([first, rest], dim=1), whole)
    recomputed = guide.generate(audio, 2, generator=seeded(5, 6), prefix=first, use_cache=False)
    assert torch.equal(guide.generate(audio, 2, generator=seeded(5, 6), prefix=first), recomputed)


def test_rows_do_not_depend_on_their_batch(guide):
    audio = features(batch=3)
    batch = guide.generate(audio, 4, generator=seeded(7, 8, 9))
    alone = guide.generate(audio[1:2], 4, generator=seeded(8))
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[2])
    # repetitions of one clip: the expanded features are encoded once, with the same result
    one = features(batch=1)
    expanded = guide.generate(one.expand(3, -1, -1), 4, generator=seeded(1, 2, 3))
    copied = guide.generate(one.repeat(3, 1, 1), 4, generator=seeded(1, 2, 3))
    assert torch.equal(expanded, copied)
    assert len({tuple(rep.flatten().tolist()) for rep in expanded}) > 1


def test_a_cached_step_computes_one_position_and_the_audio_once(guide):
    positions, audio_passes = [], []
    hooks = [
        guide.layers[0].self_attention.to_q.register_forward_hook(
            lambda module, args, out: positions.append(args[0].shape[1])
        ),
        guide.audio_convs.register_forward_hook(lambda module, args, out: audio_passes.append(1)),
    ]
    try:
        prefix = torch.zeros(2, 2, 2, dtype=torch.long)  # 2 keyframes x 2 levels
        guide.generate(features(), 4, generator=torch.Generator().manual_seed(0), prefix=prefix)
    finally:
        for hook in hooks:
            hook.remove()
    assert audio_passes == [1]
    # start token + 4 prefix tokens together, then one position per new token (8 tokens, 7 fed)
    assert positions == [5] + [1] * 7


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert torch.isfinite(top_p_filter(probs.log(), 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(probs.log(), 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(probs.log(), 0.3)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(probs.log(), 0.0)).tolist() == [[True, False, False, False]]
    shuffled = probs[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p_filter(shuffled.log(), 0.8)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(top_p_filter(probs.log(), 1.0)).all()


def test_nucleus_sampling_draws_the_renormalised_nucleus():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    grid = (torch.arange(1000) + 0.5) / 1000  # evenly spread uniforms: exact frequencies
    tokens = sample_top_p(probs.log().expand(1000, 4), 0.8, 1.0, grid)
    counts = torch.bincount(tokens, minlength=4)
    assert counts.tolist() == [0, 625, 0, 375]  # 0.5 / 0.8 and 0.3 / 0.8; tokens 0 and 2 never
    hot = sample_top_p(probs.log().expand(1000, 4), 1.0, 0.01, grid)  # near-zero temperature
    assert (hot == 1).all()
    assert (sample_top_p(probs.log()[None], 0.94, 0.0, grid[:1]) == 1).all()  # temperature 0: argmax


def test_guide_trains_down():
    torch.manual_seed(0)
    model = build_guide(guide_preset("debug"))
    audio = features(batch=4, frames=300)
    codes = torch.randint(0, 16, (4, 10, 2), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model.train()(codes, audio)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert 0.0 <= float(out["accuracy"]) <= 1.0


def test_masked_keyframes_do_not_count(guide):
    audio = features()
    codes = torch.randint(0, 16, (2, 5, 2))
    mask = torch.tensor([[True] * 3 + [False] * 2] * 2)
    changed = codes.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 16  # the last keyframe is masked and has no successor
    assert torch.equal(guide(codes, audio, mask)["loss"], guide(changed, audio, mask)["loss"])
    assert not torch.equal(guide(codes, audio)["loss"], guide(changed, audio)["loss"])


def test_dropped_audio_is_the_null_condition(guide):
    codes = torch.randint(0, 16, (2, 4, 2))
    keep = torch.tensor([True, False])
    a = guide.logits(codes, features(seed=1), keep)
    b = guide.logits(codes, features(seed=2), keep)
    assert torch.equal(a[1], b[1])  # the dropped row ignores its audio
    assert not torch.allclose(a[0], b[0])  # the kept row does not


def test_paper_preset_and_configs():
    config = guide_preset("paper")
    assert (config.width, config.layers, config.heads, config.ff_dim) == (64, 6, 4, 1024)
    assert (config.codes, config.levels) == (1024, 4)
    for size in ("paper", "debug"):
        assert from_dict(GuideConfig, to_dict(guide_preset(size))) == guide_preset(size)
    with pytest.raises(ConfigError, match="unknown guide size"):
        guide_preset("huge")
    with pytest.raises(ConfigError, match="heads of even width"):
        GuideConfig(width=30, heads=4)
    with pytest.raises(ConfigError, match="audio_kernel_size must be odd"):
        GuideConfig(audio_kernel_size=2)
