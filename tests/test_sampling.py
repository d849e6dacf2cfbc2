"""Clip sampling: the fast paths (motion, guide tokens) equal the reference loops, and rows do not
depend on their batch."""

import pytest
import torch

from a2p.config.denoiser import denoiser_preset
from a2p.config.guide import guide_preset
from a2p.errors import ConfigError
from a2p.models.audio import build_featurizer
from a2p.models.denoiser import build_denoiser
from a2p.models.guide import build_guide
from a2p.sampling.clip import sample_motion
from a2p.sampling.reference import generate_guide_reference, sample_motion_reference
from a2p.sampling.settings import SamplerSetting


@pytest.fixture(scope="module")
def body():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build_denoiser(denoiser_preset("body", "debug")).eval()


def clip(frames: int = 60, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    audio = torch.rand(1, frames * 1600, 2, generator=gen) * 2 - 1
    guide = torch.randn(1, frames // 30, 104, generator=gen)
    return audio, guide


@pytest.mark.parametrize("setting", ["ddim10", "dpmpp8"])
def test_fast_path_equals_the_reference_loop(body, setting):
    featurizer = build_featurizer("mel")
    audio, guide = clip()
    features = featurizer(audio)
    fast = sample_motion(body, features, 60, guide=guide, reps=3, setting=setting, guidance=2.0, seed=5)
    slow = sample_motion_reference(
        body, featurizer, audio, 60, guide=guide, reps=3, setting=setting, guidance=2.0, seed=5
    )
    assert fast.shape == (3, 60, 104)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fast[0], fast[1])  # repetitions differ


def test_guide_tokens_with_the_cache_equal_the_reference_loop():
    torch.manual_seed(0)
    guide = build_guide(guide_preset("debug")).eval()
    featurizer = build_featurizer("mel")
    audio = clip(frames=90, seed=1)[0].expand(2, -1, -1)  # 3 keyframes, 2 levels: 6 tokens per row
    audio = audio + 0.1 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(2))
    featurized, encoded = [], []

    def featurize(x: torch.Tensor) -> torch.Tensor:
        featurized.append(x.shape)
        return featurizer(x)

    hook = guide.audio_convs.register_forward_hook(lambda module, args, out: encoded.append(1))
    try:
        slow = generate_guide_reference(guide, featurize, audio, 3, generator=generators(4, 5))
    finally:
        hook.remove()
    assert len(featurized) == len(encoded) == 6  # the audio featurized and encoded again per token
    fast = guide.generate(featurizer(audio), 3, generator=generators(4, 5))
    assert fast.shape == (2, 3, 2)
    assert torch.equal(slow, fast)
    assert len({tuple(token) for token in fast.reshape(-1, 2).tolist()}) > 1  # it does sample
    # one generator for the batch, another nucleus and temperature
    options = {"top_p": 0.8, "temperature": 0.7}
    slow = generate_guide_reference(guide, featurizer, audio, 3, generator=generators(6)[0], **options)
    assert torch.equal(slow, guide.generate(featurizer(audio), 3, generator=generators(6)[0], **options))


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_a_repetition_does_not_depend_on_its_batch(body):
    features = build_featurizer("mel")(clip()[0])
    guide = clip()[1]
    three = sample_motion(body, features, 60, guide=guide, reps=3, setting="ddim10", guidance=2.0, seed=9)
    one = sample_motion(body, features, 60, guide=guide, reps=1, setting="ddim10", guidance=2.0, seed=9)
    torch.testing.assert_close(three[:1], one, rtol=1e-5, atol=1e-5)


def test_sampler_settings():
    assert SamplerSetting.parse("ddim500") == SamplerSetting("ddim", 500, "ddim500")
    assert SamplerSetting.parse("dpmpp25") == SamplerSetting("dpmpp_2m", 25, "25")
    assert SamplerSetting.parse("ddim30").spacing == "30"  # no exact stride: even spacing
    with pytest.raises(ConfigError, match="unknown sampler setting 'euler10'"):
        SamplerSetting.parse("euler10")
