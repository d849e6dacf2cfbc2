"""Long clips as overlapping windows: the plan, the crossfade, one shared state, keyframe continuation."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from a2p.config.denoiser import denoiser_preset
from a2p.config.guide import guide_preset
from a2p.errors import ConfigError
from a2p.models.denoiser import build_denoiser
from a2p.models.guide import build_guide
from a2p.sampling import encode_windows, sample_motion
from a2p.sampling.windows import WindowedDenoiser, WindowPlan, feature_frames, generate_keyframe_codes

AUDIO_DIM = denoiser_preset("body", "debug").audio_dim


@pytest.fixture(scope="module")
def body():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build_denoiser(denoiser_preset("body", "debug")).eval()


def inputs(frames: int, reps: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, feature_frames(frames), AUDIO_DIM, generator=gen)
    guide = torch.randn(reps, frames // 30, 104, generator=gen)
    return features, guide


def test_plan_covers_the_clip_with_keyframe_aligned_overlapping_windows():
    even = WindowPlan.build(600, window=150, overlap=60)
    assert even.starts == (0, 90, 180, 270, 360, 450)  # 450 / 90 gaps: exactly the nominal hop
    uneven = WindowPlan.build(630, window=150, overlap=60)  # 480 / 6 gaps = 80 frames, on the 30-grid
    assert uneven.starts == (0, 90, 150, 240, 330, 390, 480)
    for plan in (even, uneven):
        ends = [s + plan.window for s in plan.starts]
        assert plan.starts[0] == 0 and ends[-1] == plan.frames
        assert all(s % 30 == 0 for s in plan.starts)
        assert all(end - start >= 60 for start, end in zip(plan.starts[1:], ends))  # overlaps >= nominal
    assert WindowPlan.build(120, window=150, overlap=60).starts == (0,)
    for bad in (
        {"window": 150, "overlap": 90},
        {"window": 140, "overlap": 30},
        {"window": 150, "overlap": 0},
    ):
        with pytest.raises(ConfigError):
            WindowPlan.build(600, **bad)
    assert [list(uneven.block(r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6]]
    # ranks exchange only where their blocks meet: window 2 (150-300) / 3 (240-390), 5 (390-540) / 6 (480-630)
    shared = uneven.shared_frames(3).tolist()
    assert shared == list(range(240, 300)) + list(range(480, 540))
    owners = uneven.frame_owners(3)
    assert owners[:300].eq(0).all() and owners[300:540].eq(1).all() and owners[540:].eq(2).all()


def test_weights_crossfade_across_every_overlap():
    plan = WindowPlan.build(630, window=150, overlap=60)
    w = plan.weights()
    assert w.shape == (plan.count, 150) and (w > 0).all() and (w <= 1).all()
    assert torch.equal(w[0, :90], torch.ones(90))  # no ramp at the clip's start
    assert torch.equal(w[-1, -60:], torch.ones(60))  # nor at its end
    for i in range(1, plan.count):  # ramps up across the left overlap, down across the right
        shared = plan.starts[i - 1] + 150 - plan.starts[i]
        assert (w[i, :shared].diff() > 0).all() and (w[i - 1, -shared:].diff() < 0).all()
        if i + 1 == plan.count or plan.starts[i + 1] >= plan.starts[i - 1] + 150:  # only two windows meet
            torch.testing.assert_close(w[i, :shared] + w[i - 1, -shared:], torch.ones(shared))


def test_windowed_x0_is_the_crossfade_of_each_window_predicting_alone(body):
    frames, reps = 240, 2
    plan = WindowPlan.build(frames, window=120, overlap=60)
    features, guide = inputs(frames, reps)
    condition = encode_windows(body, features, guide, plan, reps, batch=2)
    windowed = WindowedDenoiser(body, condition, plan, reps, window_batch=2)
    x_t = torch.randn(reps, frames, 104, generator=torch.Generator().manual_seed(1))
    t = torch.full((reps,), 700)
    keep = torch.tensor([True, False])  # row 0 conditioned, row 1 the null condition
    x0 = windowed(x_t, t, keep)

    total, weight = torch.zeros_like(x_t), torch.zeros(frames)
    for i, start in enumerate(plan.starts):
        end = start + plan.window
        conditioned = body.encode_condition(
            features[:, feature_frames(start) : feature_frames(end)].expand(reps, -1, -1),
            guide[:, start // 30 : end // 30],
            keep,
        )
        alone = body(x_t[:, start:end], t, conditioned)
        total[:, start:end] += plan.weights()[i][:, None] * alone
        weight[start:end] += plan.weights()[i]
    torch.testing.assert_close(x0, total / weight[:, None], rtol=1e-4, atol=1e-5)
    # away from any overlap a frame is exactly the one window's own prediction
    only_first = body(
        x_t[:, :120],
        t,
        body.encode_condition(features[:, : feature_frames(120)].expand(reps, -1, -1), guide[:, :4], keep),
    )
    torch.testing.assert_close(x0[:, :60], only_first[:, :60], rtol=1e-4, atol=1e-5)


def test_a_clip_of_one_window_samples_as_without_windows(body):
    features, guide = inputs(120)
    plain = sample_motion(body, features, 120, guide=guide, reps=2, setting="ddim5", guidance=2.0, seed=3)
    plan = WindowPlan.build(120, window=600)
    planned = sample_motion(
        body, features, 120, guide=guide, reps=2, setting="ddim5", guidance=2.0, seed=3, plan=plan
    )
    assert torch.equal(plain, planned)


def test_keyframes_continue_across_windows():
    torch.manual_seed(0)
    guide = build_guide(guide_preset("debug")).eval()
    frames = 300
    plan = WindowPlan.build(frames, window=120, overlap=60)  # starts 0, 60, 120, 180
    features = torch.randn(2, feature_frames(frames), guide_preset("debug").audio_dim)
    codes = generate_keyframe_codes(
        guide, features, plan, top_p=0.9, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]
    )
    assert codes.shape == (2, frames // 30, guide.config.levels)
    # the first window's keyframes are what one call on its audio gives with the same generators
    first = guide.generate(
        features[:, : feature_frames(120)],
        4,
        top_p=0.9,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
    )
    assert torch.equal(codes[:, :4], first)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample_shared(rank: int, world_size: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        body = build_denoiser(denoiser_preset("body", "debug")).eval()
        features, guide = inputs(270)
        plan = WindowPlan.build(270, window=90, overlap=30)
        out = sample_motion(
            body, features, 270, guide=guide, reps=2, setting="ddim4", guidance=2.0, seed=7, plan=plan,
            rank=rank, world_size=world_size, all_reduce=dist.all_reduce,
        )  # fmt: skip
        queue.put((rank, out.numpy()))  # pickled: a shared tensor would die with this process
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 3])
def test_windows_split_over_ranks_give_the_single_process_result(body, world_size):
    features, guide = inputs(270)
    plan = WindowPlan.build(270, window=90, overlap=30)  # 4 windows
    single = sample_motion(
        body, features, 270, guide=guide, reps=2, setting="ddim4", guidance=2.0, seed=7, plan=plan
    )
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_sample_shared, args=(r, world_size, port, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in range(world_size):  # every rank holds the whole clip, and it is the 1-process clip
        torch.testing.assert_close(torch.from_numpy(results[rank]), single, rtol=1e-4, atol=1e-4)
    assert not torch.equal(single[0], single[1])
