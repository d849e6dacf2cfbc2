"""a2p's guide in the reference's configuration computes the reference's `GuideTransformer`.

Fixture: `tests/fixtures/reference/make_guide.py` ran the reference's own class
(facebookresearch/audio2photoreal at 9a5ed3a, model/guide.py) once on weights drawn by
`reference_weights.seeded_state_dict` from the committed key/shape list, in float64, and saved
its next-token logits under teacher forcing with the audio kept and dropped. The same weights are
rebuilt here, converted by a2p's key map, loaded strictly and run through a2p.
"""

from __future__ import annotations

import pytest
import torch
from reference_weights import assert_close_to_golden, read_golden, read_keys, seeded_array, seeded_state_dict

from a2p.config.guide import guide_preset
from a2p.models.guide import GuideTransformer
from a2p.models.keymap.guide import convert_guide

AUDIO_FRAMES, KEYFRAMES, LEVELS = 147, 3, 4


def reference_config():
    """The released guide: the paper preset."""
    config = guide_preset("paper")
    expected = (1024, "reference", "valid", False, False, 1998)
    assert (config.audio_dim, config.positions, config.audio_padding, config.level_embedding,
            config.out_norm, config.null_audio_tokens) == expected  # fmt: skip
    return config


def reference_guide(dtype: torch.dtype = torch.float64) -> GuideTransformer:
    config = reference_config()
    guide = GuideTransformer(config)
    weights = seeded_state_dict(read_keys("guide"), 0)
    guide.load_state_dict(convert_guide(weights, len(config.audio_dilations), "seeded guide"), strict=True)
    return guide.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_teacher_forced_logits_match_reference(dtype):
    golden = read_golden("guide")
    guide = reference_guide(dtype)
    codes = torch.from_numpy(golden["codes"]).view(1, KEYFRAMES, LEVELS)
    audio = seeded_array((1, AUDIO_FRAMES, 1024), 2).to(dtype)
    with torch.no_grad():
        for label in ("kept", "dropped"):
            logits = guide.logits(codes, audio, keep_mask=torch.tensor([label == "kept"]))
            assert_close_to_golden(logits, golden[f"logits_{label}"], f"guide logits, audio {label}, {dtype}")


def test_reference_guide_generates_from_the_same_logits():
    """Cached generation reads the same logits as teacher forcing on the tokens it chose."""
    guide = reference_guide()
    audio = seeded_array((1, AUDIO_FRAMES, 1024), 2)
    codes, logits = guide.generate(audio, 2, temperature=0.0, return_logits=True)
    with torch.no_grad():
        forced = guide.logits(codes, audio)
    assert float((forced.float() - logits).abs().max()) < 1e-5


def test_valid_convs_shorten_the_audio():
    guide = reference_guide()
    assert guide.audio_convs(torch.zeros(1, 147, 1024, dtype=torch.float64)).shape[1] == 147 - 48
