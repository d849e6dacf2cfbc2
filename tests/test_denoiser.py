"""Face/body denoisers: shapes, cached conditions, classifier-free guidance rows, causality, training, sizes."""

import pytest
import torch

from a2p.config import from_dict, to_dict
from a2p.config.denoiser import DENOISER_PRESETS, DenoiserConfig, denoiser_preset
from a2p.constants import KEYFRAME_INTERVAL, POSE_DIM
from a2p.errors import ConfigError
from a2p.models.denoiser import Condition, ConditionInputs, Denoiser, build_denoiser
from a2p.models.layers import CausalDilatedConvStack, RotaryEmbedding

torch.set_num_threads(1)

FRAMES = 60
AUDIO_TOKENS = 200  # 2 s of 100 Hz features for 60 frames at 30 fps


def make(model: str, seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    return build_denoiser(denoiser_preset(model, "debug")).eval()


def inputs(net: Denoiser, batch: int, seed: int = 0):
    """x_t, t, audio features, guide poses (None for the face) of a random batch."""
    g = torch.Generator().manual_seed(seed)
    cfg = net.config
    x_t = torch.randn(batch, FRAMES, cfg.motion_dim, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    audio = torch.randn(batch, AUDIO_TOKENS, cfg.audio_dim, generator=g)
    guide = torch.randn(batch, FRAMES // KEYFRAME_INTERVAL, POSE_DIM, generator=g) if cfg.guide_dim else None
    return x_t, t, audio, guide


@pytest.fixture(params=["face", "body"])
def model(request) -> str:
    return request.param


def test_output_shape_and_condition_layout(model):
    net = make(model)
    x_t, t, audio, guide = inputs(net, 3)
    cond = net.encode_condition(audio, guide)
    cfg = net.config
    assert net(x_t, t, cond).shape == x_t.shape
    assert len(cond.audio_kv) == cfg.layers and cond.pooled.shape == (3, cfg.width)
    assert cond.audio_kv[0][0].shape == (3, cfg.heads, AUDIO_TOKENS, cfg.width // cfg.heads)
    assert (cond.guide_kv is not None) == (model == "body")


def test_cached_condition_equals_reencoding_every_step(model):
    net = make(model)
    x, _, audio, guide = inputs(net, 2)
    keep = torch.tensor([True, False])
    cached = net.encode_condition(audio, guide, keep)
    x_cached, x_fresh = x.clone(), x.clone()
    with torch.no_grad():
        for step in (999, 600, 300, 0):
            t = torch.full((2,), step)
            x_cached = 0.5 * x_cached + 0.5 * net(x_cached, t, cached)
            x_fresh = 0.5 * x_fresh + 0.5 * net(x_fresh, t, net.encode_condition(audio, guide, keep))
    assert torch.equal(x_cached, x_fresh)


def test_forward_with_raw_inputs_encodes_inside(model):
    net = make(model)
    x_t, t, audio, guide = inputs(net, 2)
    keep = torch.tensor([False, True])
    expected = net(x_t, t, net.encode_condition(audio, guide, keep))
    assert torch.equal(net(x_t, t, ConditionInputs(audio, guide, keep)), expected)


def test_mixed_keep_mask_rows_equal_single_row_calls(model):
    net = make(model)
    x_t, t, audio, guide = inputs(net, 2)
    keep = torch.tensor([True, False])
    batched = net(x_t, t, net.encode_condition(audio, guide, keep))
    for row in range(2):
        part = slice(row, row + 1)
        single = net(
            x_t[part],
            t[part],
            net.encode_condition(audio[part], None if guide is None else guide[part], keep[part]),
        )
        torch.testing.assert_close(batched[part], single, rtol=0, atol=1e-5)


def test_expand_for_cfg_equals_explicit_null_rows(model):
    net = make(model)
    x_t, t, audio, guide = inputs(net, 2)
    cond = net.encode_condition(audio, guide)
    expanded = net.expand_for_cfg(cond)
    assert expanded.batch_size == 4
    twice = torch.cat([audio, audio])
    explicit = net.encode_condition(
        twice, guide if guide is None else torch.cat([guide, guide]), torch.tensor([True, True, False, False])
    )
    x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
    torch.testing.assert_close(net(x2, t2, expanded), net(x2, t2, explicit), rtol=0, atol=1e-5)
    # Conditional rows of the expanded batch are the plain conditional pass.
    torch.testing.assert_close(net(x2, t2, expanded)[:2], net(x_t, t, cond), rtol=0, atol=1e-5)


def test_condition_rows_repeat_and_concatenate(model):
    net = make(model)
    x_t, t, audio, guide = inputs(net, 2)
    cond = net.encode_condition(audio, guide)
    repeated = cond.map(lambda x: x.repeat_interleave(2, 0))
    out = net(x_t.repeat_interleave(2, 0), t.repeat_interleave(2, 0), repeated)
    torch.testing.assert_close(out[::2], net(x_t, t, cond), rtol=0, atol=1e-5)
    both = Condition.cat([cond, cond])
    assert both.batch_size == 4 and torch.equal(both.audio_kv[-1][1][2:], cond.audio_kv[-1][1])


def test_dropped_rows_ignore_audio_and_guide(model):
    net = make(model)
    x_t, t, audio, guide = inputs(net, 2)
    _, _, other_audio, other_guide = inputs(net, 2, seed=1)
    keep = torch.tensor([True, False])
    out = net(x_t, t, net.encode_condition(audio, guide, keep))
    changed = net(x_t, t, net.encode_condition(other_audio, other_guide, keep))
    assert torch.equal(out[1], changed[1])
    assert (out[0] - changed[0]).abs().max() > 1e-4


def test_body_guide_can_be_dropped_alone():
    net = make("body")
    x_t, t, audio, guide = inputs(net, 2)
    keep_audio, drop_guide = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    out = net(x_t, t, net.encode_condition(audio, guide, keep_audio, drop_guide))
    moved = net(x_t, t, net.encode_condition(audio, guide + 1.0, keep_audio, drop_guide))
    assert torch.equal(out, moved)
    assert (out - net(x_t, t, net.encode_condition(audio, guide, keep_audio))).abs().max() > 1e-4


def test_conv_head_is_causal_with_finite_receptive_field():
    torch.manual_seed(0)
    stack = CausalDilatedConvStack([8, 16, 8, 8], dilations=(1, 2, 3)).eval()
    assert stack.receptive_field == 13
    x = torch.randn(1, 8, 40)
    k = 17
    poked = x.clone()
    poked[..., k] += 1.0
    diff = (stack(poked) - stack(x)).abs().amax(dim=1)[0]  # (T,)
    assert torch.all(diff[:k] == 0)
    assert diff[k] > 0
    assert torch.all(diff[k + stack.receptive_field :] == 0)


def test_body_output_frames_do_not_see_later_conv_inputs():
    """Through the whole body net, causality holds in the conv head: perturb its input only."""
    net = make("body")
    x = torch.randn(1, POSE_DIM, 30)
    poked = x.clone()
    poked[..., 20] += 1.0
    a, b = net.conv_out(net.conv_head(x)), net.conv_out(net.conv_head(poked))
    assert torch.equal(a[..., :20], b[..., :20]) and not torch.equal(a[..., 20], b[..., 20])


def test_rotary_scores_depend_only_on_offsets():
    rotary = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(p_q: float, p_k: float) -> torch.Tensor:
        return (rotary(torch.tensor([p_q])).apply(q) * rotary(torch.tensor([p_k])).apply(k)).sum()

    torch.testing.assert_close(score(3.0, 1.3), score(10.0, 8.3))
    assert (score(3.0, 1.3) - score(3.0, 2.3)).abs() > 1e-4


def test_bf16_autocast_runs_close_to_float32(model):
    net = make(model)
    x_t, t, audio, guide = inputs(net, 2)
    reference = net(x_t, t, net.encode_condition(audio, guide))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond = net.expand_for_cfg(net.encode_condition(audio, guide))
        out = net(torch.cat([x_t, x_t]), torch.cat([t, t]), cond)
    assert torch.isfinite(out).all()
    assert (out[:2].float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_trains_down_on_a_tiny_batch(model):
    torch.manual_seed(0)
    net = make(model).train()
    x0, _, audio, guide = inputs(net, 4)
    x0 = x0.cumsum(dim=1) / FRAMES**0.5  # smooth-ish motion
    keep = torch.tensor([True, True, True, False])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        t = torch.randint(0, 1000, (4,))
        x_t = 0.5 * x0 + torch.randn_like(x0)
        loss = (net(x_t, t, ConditionInputs(audio, guide, keep)) - x0).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.4 * sum(losses[:5]) / 5, losses


A2P_PARAMETERS = {"face": 47_120_128, "body": 12_667_928}
"""The `a2p` preset: the paper's sizes with one shared null token and mel features."""
REFERENCE_PARAMETERS = {"face": 49_104_128, "body": 13_405_208}
"""Trainable parameters of the reference's FiLMTransformer (frozen wav2vec and lip model excluded)."""


def count(config: DenoiserConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_denoiser(config).parameters())


@pytest.mark.parametrize("name", ["face", "body"])
def test_parameter_counts_of_the_paper_and_a2p_presets(name):
    """`paper` has the reference's count exactly; `a2p` differs by its audio width (mel 160 against
    vq-wav2vec 1024, + 1014 lip for the face) and its one shared null token (against 1998 audio
    tokens and 20 keyframes)."""
    paper, a2p = denoiser_preset(name, "paper"), denoiser_preset(name, "a2p")
    assert count(paper) == REFERENCE_PARAMETERS[name]
    assert count(a2p) == A2P_PARAMETERS[name]
    extra_nulls = (1998 - 1) * paper.width + (20 - 1) * paper.width * (paper.guide_dim > 0)
    extra_audio = (paper.audio_dim - a2p.audio_dim) * paper.width
    assert count(a2p) + extra_nulls + extra_audio == count(paper)


def test_presets_round_trip_and_bad_values_fail():
    for sizes in DENOISER_PRESETS.values():
        for config in sizes.values():
            assert from_dict(DenoiserConfig, to_dict(config)) == config
    assert denoiser_preset("body", "paper") is not DENOISER_PRESETS["body"]["paper"]
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        denoiser_preset("face", "huge")
    with pytest.raises(ConfigError, match="unknown denoiser model 'hands'"):
        denoiser_preset("hands", "paper")
    with pytest.raises(ConfigError, match="heads of even width"):
        from_dict(DenoiserConfig, {"width": 96, "heads": 64})


def test_wrong_conditioning_is_refused():
    face, body = make("face"), make("body")
    _, _, audio, guide = inputs(body, 1)
    with pytest.raises(ValueError, match="guide poses are required"):
        body.encode_condition(audio)
    with pytest.raises(ValueError, match="guide poses are required"):
        face.encode_condition(audio, guide)
    with pytest.raises(ValueError, match="width 7"):
        face.encode_condition(torch.zeros(1, 10, 7))
