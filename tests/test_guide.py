"""The guide transformer: KV-cache generation equals recomputation, nucleus sampling, training."""

import pytest
import torch

from a2p.config.guide import guide_preset
from a2p.errors import ConfigError
from a2p.models.guide import build_guide, top_p_filter


@pytest.fixture(scope="module")
def guide():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build_guide(guide_preset("debug")).eval()


def features(batch: int = 2, frames: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        batch, frames, guide_preset("debug").audio_dim, generator=torch.Generator().manual_seed(seed)
    )


def test_kv_cache_generation_equals_full_recomputation(guide):
    audio = features()
    cached, cached_logits = guide.generate(
        audio, 6, generator=torch.Generator().manual_seed(3), return_logits=True
    )
    full, full_logits = guide.generate(
        audio, 6, generator=torch.Generator().manual_seed(3), use_cache=False, return_logits=True
    )
    assert cached.shape == (2, 6, 2)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, rtol=1e-5, atol=1e-5)
    # and the cached logits are those of teacher forcing on the generated tokens
    forced = guide.logits(cached, audio).float()
    torch.testing.assert_close(cached_logits, forced, rtol=1e-5, atol=1e-5)


def test_prefix_continues_a_sequence(guide):
    audio = features()
    first = guide.generate(audio, 3, generator=torch.Generator().manual_seed(1))
    rest = guide.generate(audio, 2, generator=torch.Generator().manual_seed(2), prefix=first)
    rest_full = guide.generate(
        audio, 2, generator=torch.Generator().manual_seed(2), prefix=first, use_cache=False
    )
    assert torch.equal(rest, rest_full)


def test_per_row_generators_do_not_depend_on_the_batch(guide):
    audio = features(batch=3)
    batch = guide.generate(audio, 4, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    alone = guide.generate(audio[1:2], 4, generator=[torch.Generator().manual_seed(8)])
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[2])


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 >= 0.8
    kept = torch.isfinite(top_p_filter(probs.log(), 0.81))
    assert kept.tolist() == [[True, True, True, False]]
    shuffled = probs[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p_filter(shuffled.log(), 0.8)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(top_p_filter(probs.log(), 1.0)).all()


def test_guide_trains_down():
    torch.manual_seed(0)
    model = build_guide(guide_preset("debug"))
    audio = features(batch=4, frames=300)
    codes = torch.randint(0, 16, (4, 10, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.train()(codes, audio)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_masked_keyframes_do_not_count(guide):
    audio = features()
    codes = torch.randint(0, 16, (2, 5, 2))
    mask = torch.tensor([[True] * 3 + [False] * 2] * 2)
    changed = codes.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 16  # the last keyframe is masked and has no successor
    a, b = guide(codes, audio, mask)["loss"], guide(changed, audio, mask)["loss"]
    assert torch.equal(a, b)


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="unknown guide size"):
        guide_preset("huge")
