"""a2p's `paper` VQ computes the reference's `TemporalVertexCodec`, on its own weights.

Fixtures: `tests/fixtures/reference/make_vq.py` ran the reference's own classes
(facebookresearch/audio2photoreal at 449761e, model/vqvae.py) once, built with the released
configuration (104 -> 64 convs, 4 residual levels x 1024 codes of width 64), on weights drawn by
`reference_weights.seeded_state_dict` from the committed key/shape list (every codebook marked
initialized, positive counts), in float64 and eval mode, on the keyframes (every 30th frame) of
a seeded 600-frame crop of two rows, and saved: the encoder's latents, the codes per level, the
quantized latents, `decode` of those codes and of seeded random codes, and `forward`'s
reconstruction. Here the same weights are rebuilt, converted by a2p's key map, loaded strictly,
and run through a2p's `BodyVQ`: codes exactly equal, floats within `assert_close_to_golden`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from reference_weights import (
    assert_close_to_golden,
    read_golden,
    read_keys,
    seeded_array,
    seeded_state_dict,
    vq_overrides,
)

from a2p.config.vq import vq_preset
from a2p.errors import DataError
from a2p.models.keymap.vq import convert_vq, read_vq_checkpoint
from a2p.models.vq import BodyVQ

LEVELS, CODES = 4, 1024
SEEDS = {"weights": 0, "crop": 1, "codes": 2}


def reference_weights() -> dict[str, torch.Tensor]:
    return seeded_state_dict(read_keys("vq"), SEEDS["weights"], vq_overrides(LEVELS))


def reference_model(dtype: torch.dtype = torch.float64) -> BodyVQ:
    model = BodyVQ(vq_preset("paper")).to(dtype)  # before loading: float64 weights stay float64
    model.load_state_dict(convert_vq(reference_weights(), "seeded vq"), strict=True)
    return model.eval()


def keyframes(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    crop = seeded_array((2, 600, 104), SEEDS["crop"])  # (B, 600, 104), the reference's VQ crop
    return crop[:, ::30].to(dtype)  # (B, 20, 104): its keyframe step


def random_codes() -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEEDS["codes"])
    return torch.randint(0, CODES, (2, 20, LEVELS), generator=generator)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_encode_and_decode_match_reference(dtype):
    golden = read_golden("vq")
    model = reference_model(dtype)
    x = keyframes(dtype)
    with torch.no_grad():
        latent = model.encode_latent(x)
        codes = model.encode(x)
        assert_close_to_golden(latent, golden["latent"], f"latent {dtype}")
        assert codes.dtype == torch.long
        assert torch.equal(codes, torch.from_numpy(golden["codes"])), f"codes differ in {dtype}"
        assert_close_to_golden(model.quantizer.decode_codes(codes), golden["quantized"], f"quantized {dtype}")
        assert_close_to_golden(model.decode_codes(codes), golden["decoded"], f"decoded {dtype}")
        assert_close_to_golden(
            model.decode_codes(random_codes()), golden["decoded_random"], f"random {dtype}"
        )
        x_hat, _, _ = model(x)
        assert_close_to_golden(x_hat, golden["forward"], f"forward {dtype}")


def test_the_check_has_teeth():
    """Decoder convs swapped (an off-by-one in the map) miss the reference by far."""
    golden = read_golden("vq")["decoded"]
    state = convert_vq(reference_weights(), "seeded vq")
    for kind in ("weight", "bias"):
        a, b = f"decoder.convs.1.{kind}", f"decoder.convs.2.{kind}"
        state[a], state[b] = state[b], state[a]
    model = BodyVQ(vq_preset("paper"))
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model.double().eval().decode_codes(torch.from_numpy(read_golden("vq")["codes"]))
    assert float((out - torch.from_numpy(golden)).abs().max()) > 1e-3


def test_initialized_flags_become_bools_and_the_mean_shape_is_dropped():
    state = convert_vq(reference_weights(), "seeded vq")
    flags = [state[f"quantizer.codebooks.{level}.initialized"] for level in range(LEVELS)]
    assert all(flag.dtype == torch.bool and flag.shape == () and bool(flag) for flag in flags)
    assert not any("project_mean_shape" in key for key in state)
    weights = reference_weights()
    weights["quantizer.layers.2._codebook.inited"] = torch.zeros(1, dtype=torch.float64)
    assert not bool(convert_vq(weights, "seeded vq")["quantizer.codebooks.2.initialized"])


def save_release_container(path, weights: dict[str, torch.Tensor]) -> None:
    """A file as train_vq.py saves one: {'net', 'optimizer': state dict, 'scheduler': the object}."""
    net = {key: tensor.float() for key, tensor in weights.items()}
    params = [torch.nn.Parameter(t.clone()) for k, t in net.items() if "_codebook" not in k]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[300_000], gamma=0.05)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # the optimizer then holds state, in a defaultdict, as a trained one does
    scheduler.step()
    torch.save({"net": net, "optimizer": optimizer.state_dict(), "scheduler": scheduler}, path)


def test_release_container_is_read_without_its_optimizer(tmp_path):
    path = tmp_path / "net_iter300000.pth"
    weights = reference_weights()
    save_release_container(path, weights)
    state = read_vq_checkpoint(path)
    model = BodyVQ(vq_preset("paper"))
    model.load_state_dict(state, strict=True)
    expected = convert_vq(weights, "seeded vq")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[key].to(tensor.dtype)), key
    with torch.no_grad():
        codes = model.eval().encode(keyframes(torch.float32))
    assert torch.equal(codes, torch.from_numpy(read_golden("vq")["codes"]))


def test_other_released_files_are_refused_naming_the_file(tmp_path):
    weights = reference_weights()
    guide = {"iteration": 100000, "model_state_dict": {"token_embedding.weight": torch.zeros(3)}}
    with pytest.raises(DataError, match=r"iter-0100000\.pt: not the reference's VQ .* a guide checkpoint"):
        convert_vq({**guide, "optimizer_state_dict": {}}, "iter-0100000.pt")
    diffusion = {
        "seqTransDecoder.stack.0.norm1.weight": torch.zeros(3),
        "input_projection.bias": torch.zeros(3),
    }
    with pytest.raises(DataError, match=r"model000340000\.pt: .* bare state dict of a diffusion model"):
        convert_vq(diffusion, "model000340000.pt")
    with pytest.raises(DataError, match=r"lip\.pt: .* lip regressor"):
        convert_vq({"model_state_dict": {}}, "lip.pt")
    with pytest.raises(DataError, match=r"x\.pth: its 'net' is not a TemporalVertexCodec state dict"):
        convert_vq({"net": diffusion, "optimizer": {}}, "x.pth")
    path = tmp_path / "guide.pt"
    torch.save(guide, path)
    with pytest.raises(DataError, match=rf"{path}: not the reference's VQ .*'iteration', 'model_state_dict'"):
        read_vq_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"junk\.pth: not the reference's VQ checkpoint"):
        read_vq_checkpoint(tmp_path / "junk.pth")
    assert weights  # untouched by the failures above


def test_wrong_keys_and_shapes_are_refused_naming_the_file():
    weights = reference_weights()
    extra = {**weights, "quantizer.layers.0._codebook.embed_ema": torch.zeros(3)}
    with pytest.raises(
        DataError, match=r"vq\.pth: 1 tensor\(s\) no rule maps: quantizer\.layers\.0\._codebook\.embed_ema"
    ):
        convert_vq({"net": extra}, "vq.pth")
    missing = {k: v for k, v in weights.items() if not k.startswith("quantizer.layers.3.")}
    with pytest.raises(
        DataError, match=r"vq\.pth: does not hold this model's weights \(missing 4: quantizer\.codebooks\.3\."
    ):
        convert_vq(missing, "vq.pth")
    face = dict(weights, **{"encoder.enc.0.weight": torch.zeros(64, 256, 1)})
    with pytest.raises(
        DataError, match=r"face_vq\.pth: not the shapes of this VQ: encoder\.convs\.0\.weight \(64, 256, 1\)"
    ):
        convert_vq(face, "face_vq.pth")
    small = dataclasses.replace(vq_preset("paper"), codes=512)
    with pytest.raises(
        DataError, match=r"quantizer\.codebooks\.0\.embed \(1024, 64\) \(expected \(512, 64\)\)"
    ):
        convert_vq(weights, "vq.pth", small)


def test_the_golden_codes_use_many_codes():
    """The fixture is not degenerate: every level picks among many codes."""
    codes = read_golden("vq")["codes"]
    assert min(len(np.unique(codes[..., level])) for level in range(LEVELS)) >= 10
