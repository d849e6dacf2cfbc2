"""The `paper` training recipes against the reference's (facebookresearch/audio2photoreal).

The reference's learning rates come from torch's own AdamW and MultiStepLR, driven the way
train/train_vq.py and train/train_guide.py drive them (their warm-up loops written anew here from
reading them at commit 449761e754009afebd932caf66a00c682c603722); the dropout test counts the
(audio, guide) kept/dropped combinations the body's loss hands its model.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from a2p.config.audio import REFERENCE_FEATURIZERS
from a2p.config.denoiser import denoiser_preset
from a2p.config.guide import guide_preset
from a2p.config.train import PAPER_RECIPES, OptimizerConfig, ScheduleConfig, TrainConfig, paper_recipe
from a2p.config.vq import vq_preset
from a2p.constants import CROP_MAX_FRAMES
from a2p.errors import ConfigError
from a2p.models.denoiser import ConditionInputs
from a2p.training.optim import build_optimizer, build_scheduler, lr_factor
from a2p.training.tasks import TaskContext, load_run_config, task_class


def _torch_optimizer(lr: float, milestones: list[int], gamma: float, **adam: float):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=lr, **adam)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
    optimizer.step()  # no gradient: changes nothing, and keeps torch from warning about the order
    return optimizer, scheduler


def reference_vq_rates(lr: float, warm_up_iter: int, milestones: list[int], gamma: float, total_iter: int):
    """The rate of every optimizer step of train_vq: its warm-up loop, then its main loop."""
    optimizer, scheduler = _torch_optimizer(lr, milestones, gamma, betas=(0.9, 0.99))
    rates = []
    for nb_iter in range(1, warm_up_iter):  # run_warmup_steps: the scheduler is not stepped
        for group in optimizer.param_groups:
            group["lr"] = lr * (nb_iter + 1) / (warm_up_iter + 1)
        rates.append(optimizer.param_groups[0]["lr"])
    for _ in range(1, total_iter + 1):  # run_train_step, then scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return rates


def reference_guide_rates(lr: float, warm_up_iter: int, milestones: list[int], gamma: float, steps: int):
    """The rate of every optimizer step of train_guide: the warm-up sets it, the scheduler steps each time."""
    optimizer, scheduler = _torch_optimizer(lr, milestones, gamma, betas=(0.9, 0.99), weight_decay=0.1)
    rates = []
    for step in range(steps):
        if step < warm_up_iter:  # update_lr_warm_up
            for group in optimizer.param_groups:
                group["lr"] = lr * (step + 1) / (warm_up_iter + 1)
        rates.append(optimizer.param_groups[0]["lr"])  # _run_single_train_step: step, then scheduler
        scheduler.step()
    return rates


def a2p_rates(config: TrainConfig, steps: int) -> list[float]:
    """The rate a2p's own optimizer and scheduler set for each of the first `steps` optimizer steps."""
    optimizer = build_optimizer(torch.nn.Linear(1, 1), config, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, config)
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() without optimizer.step()
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return rates


def _step_config(lr: float, steps: int, **schedule) -> TrainConfig:
    return TrainConfig(
        max_steps=steps, optimizer=OptimizerConfig(lr=lr), schedule=ScheduleConfig(kind="step", **schedule)
    )


@pytest.mark.parametrize("warm_up_iter, milestone", [(10, 20), (7, 1), (2, 5)])
def test_reference_warm_up_and_step_decay_of_train_vq(warm_up_iter, milestone):
    total = 40
    expected = reference_vq_rates(1e-3, warm_up_iter, [milestone], 0.05, total)
    config = TrainConfig(
        max_steps=len(expected),
        optimizer=OptimizerConfig(lr=1e-3),
        schedule=ScheduleConfig(
            kind="step", warmup_steps=warm_up_iter, warmup="reference", warmup_first=1,
            milestones=(milestone + warm_up_iter - 1,), gamma=0.05,
        ),
    )  # fmt: skip
    assert a2p_rates(config, len(expected)) == pytest.approx(expected, rel=1e-12, abs=0)
    assert [1e-3 * lr_factor(s, config) for s in range(len(expected))] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("warm_up_iter, milestones", [(5, [8, 20]), (1, [3]), (4, [4, 5])])
def test_reference_warm_up_and_step_decay_of_train_guide(warm_up_iter, milestones):
    expected = reference_guide_rates(2e-4, warm_up_iter, milestones, 0.1, 30)
    config = TrainConfig(
        max_steps=30,
        optimizer=OptimizerConfig(lr=2e-4),
        schedule=ScheduleConfig(
            kind="step",
            warmup_steps=warm_up_iter,
            warmup="reference",
            milestones=tuple(milestones),
            gamma=0.1,
        ),
    )
    assert a2p_rates(config, 30) == pytest.approx(expected, rel=1e-12, abs=0)


def test_torch_multistep_semantics_without_warm_up():
    # MultiStepLR stepped after each step: milestone m first lowers step m (0-based)
    optimizer, scheduler = _torch_optimizer(0.1, [3, 6], 0.5)
    expected = []
    for _ in range(10):
        expected.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    config = _step_config(0.1, 10, milestones=(3, 6), gamma=0.5)
    assert a2p_rates(config, 10) == pytest.approx(expected, rel=1e-12)


def test_paper_vq_and_guide_schedules_over_their_whole_runs():
    """Every step of the released runs: train_vq (999 + 300,000 steps), train_guide (100,001 steps)."""
    vq, guide = paper_recipe("vq"), paper_recipe("guide")
    expected_vq = reference_vq_rates(1e-3, 1000, [300_000], 0.05, 300_000)
    assert len(expected_vq) == vq.max_steps == 300_999
    got_vq = [vq.optimizer.lr * lr_factor(s, vq) for s in range(vq.max_steps)]
    assert max(abs(a - b) / b for a, b in zip(got_vq, expected_vq)) < 1e-12
    # chosen steps, by the reference's formulas: lr 2/1001 first, then 1000/1001 lr to the end (the
    # MultiStepLR milestone comes after the last step, so its x0.05 never applies)
    assert got_vq[0] == pytest.approx(1e-3 * 2 / 1001, rel=1e-12)
    assert got_vq[998] == got_vq[-1] == pytest.approx(1e-3 * 1000 / 1001, rel=1e-12)
    assert vq.optimizer.lr * lr_factor(vq.max_steps, vq) == pytest.approx(0.05 * 1e-3 * 1000 / 1001)

    expected_guide = reference_guide_rates(2e-4, 5000, [50_000, 400_000], 0.1, guide.max_steps)
    got_guide = [guide.optimizer.lr * lr_factor(s, guide) for s in range(guide.max_steps)]
    assert max(abs(a - b) / b for a, b in zip(got_guide, expected_guide)) < 1e-12
    for step, rate in ((0, 1 / 5001), (4999, 5000 / 5001), (49_999, 5000 / 5001), (50_000, 500 / 5001)):
        assert got_guide[step] == pytest.approx(2e-4 * rate, rel=1e-12)
    assert guide.optimizer.lr * lr_factor(400_000, guide) == pytest.approx(2e-4 * 50 / 5001, rel=1e-12)


@pytest.mark.parametrize(
    "model, reference_adamw",
    [
        ("face", {"lr": 1e-4, "weight_decay": 0.0}),  # training_loop.py: torch's default betas
        ("body", {"lr": 1e-4, "weight_decay": 0.0}),
        ("vq", {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.0}),
        ("guide", {"lr": 2e-4, "betas": (0.9, 0.99), "weight_decay": 0.1}),
    ],
)
def test_paper_optimizers_are_the_references(model, reference_adamw):
    recipe = paper_recipe(model)
    ours = build_optimizer(torch.nn.Linear(2, 2), recipe, torch.device("cpu")).param_groups[0]
    theirs = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), **reference_adamw).param_groups[0]
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        assert ours[key] == theirs[key], key
    assert recipe.grad_clip == (1.0 if model == "guide" else 0.0)  # train_guide's --gn clips at 1
    assert recipe.precision == "fp32" and not recipe.tf32 and not recipe.ema.enabled
    assert recipe.batch_size == 4 and recipe.grad_accum == 1
    if model in ("face", "body"):
        assert recipe.schedule.kind == "constant" and recipe.schedule.warmup_steps == 0
        assert {lr_factor(s, recipe) for s in (0, 1, 10**5, recipe.max_steps)} == {1.0}


def test_presets_name_the_recipe_of_every_task():
    for name in ("face", "body", "vq", "guide"):
        cls = task_class(name)
        assert {"paper", "a2p", "debug"} <= set(cls.presets) and cls.default_preset == "paper"
        assert cls.train_presets["paper"] == PAPER_RECIPES[name]
        assert cls.train_presets["a2p"] == TrainConfig()  # a2p's additions: EMA, bf16, clip 1, cosine
        assert "debug" not in cls.train_presets  # debug keeps the trainer defaults, tiny and fast
    # the paper presets are the released architectures on the reference's front end
    for name in ("face", "body"):
        paper = task_class(name).presets["paper"]
        assert (
            paper.model == denoiser_preset(name, "paper") and paper.featurizer == REFERENCE_FEATURIZERS[name]
        )
        assert task_class(name).presets["a2p"].model == denoiser_preset(name, "a2p")
    guide = task_class("guide").presets["paper"]
    assert guide.model == guide_preset("paper") and guide.featurizer == "vq-wav2vec"
    assert task_class("vq").presets["paper"].model == vq_preset("paper")
    for name in PAPER_RECIPES:
        assert PAPER_RECIPES[name].units == "auto" and TrainConfig().units == "train"
    assert task_class("body").presets["paper"].cond_dropout == "independent"
    assert task_class("body").presets["a2p"].cond_dropout == "joint"
    for name in ("vq", "guide"):
        assert task_class(name).presets["paper"].crops == "fixed"
        assert task_class(name).presets["a2p"].crops == task_class(name).presets["debug"].crops == "random"
    paper_recipe("face").optimizer.lr = 1.0  # a copy: the table stays as it was
    assert PAPER_RECIPES["face"].optimizer.lr == 1e-4
    with pytest.raises(ConfigError, match="no reference training recipe for 'toy'"):
        paper_recipe("toy")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.schedule.milestones=[5]"], "milestones apply to kind='step' only"),
        (["train.schedule.kind=step", "train.schedule.milestones=[5, 5]"], "strictly increasing"),
        (
            ["train.schedule.kind=step", "train.schedule.warmup_steps=10", "train.schedule.milestones=[4]"],
            "not inside the warm-up",
        ),
        (["train.schedule.warmup_steps=4", "train.schedule.warmup_first=1"], "needs warmup='reference'"),
        (
            ["train.schedule.warmup=reference", "train.schedule.warmup_first=2"],
            "must lie in \\[0, warmup_steps\\)",
        ),
        (["train.schedule.gamma=0"], "gamma must be positive"),
        (["train.schedule.warmup=gentle"], "is not one of"),
    ],
)
def test_bad_schedules_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config("toy", overrides=overrides)


def _combinations(keep: torch.Tensor, guide_keep: torch.Tensor) -> list[float]:
    """Fractions of rows: both kept, audio only, guide only, none."""
    cells = [keep & guide_keep, keep & ~guide_keep, ~keep & guide_keep, ~keep & ~guide_keep]
    return [float(c.float().mean()) for c in cells]


@pytest.mark.parametrize(
    "mode, expected", [("independent", [0.64, 0.16, 0.16, 0.04]), ("joint", [0.8, 0.0, 0.0, 0.2])]
)
def test_body_condition_dropout(mode, expected):
    """The masks the body's loss gives its model: each combination within 5 binomial sigmas of its share."""
    from a2p.training.tasks import build_task

    config = load_run_config("body", "debug", overrides=[f"task.cond_dropout={mode}"]).task
    task = build_task("body", config)
    rows, frames, model_config = 40_000, 2, config.model
    seen: list[ConditionInputs] = []

    def model(x_t, t, cond):
        seen.append(cond)
        return torch.zeros_like(x_t, requires_grad=True)

    batch = {
        "body": torch.randn(rows, frames, model_config.motion_dim),
        "mask": torch.ones(rows, frames, dtype=torch.bool),
        "keyframes": torch.randn(rows, 1, model_config.guide_dim),
        "features": torch.randn(rows, 1, model_config.audio_dim),
        "length": torch.full((rows,), frames),
    }
    torch.manual_seed(0)
    task.loss(model, batch)
    keep, guide_keep = seen[0].keep_mask, seen[0].guide_keep_mask
    if mode == "joint":
        assert guide_keep is None  # the denoiser then drops the guide with the audio
        guide_keep = keep
    for share, target in zip(_combinations(keep, guide_keep), expected):
        bound = 5 * math.sqrt(target * (1 - target) / rows)  # 0 for the impossible combinations
        assert abs(share - target) <= bound, (mode, share, target)


def test_face_draws_no_guide_mask():
    from a2p.training.diffusion_tasks import condition_keep_masks

    keep, guide = condition_keep_masks(8, 0.2, "independent", with_guide=False, device=torch.device("cpu"))
    assert keep.shape == (8,) and guide is None
    # the audio's draw is the same in both modes, so joint runs keep their random stream
    torch.manual_seed(1)
    joint, _ = condition_keep_masks(64, 0.2, "joint", True, torch.device("cpu"))
    torch.manual_seed(1)
    independent, _ = condition_keep_masks(64, 0.2, "independent", True, torch.device("cpu"))
    assert torch.equal(joint, independent)


def _first_batch(task, shards, tmp_path):
    ctx = TaskContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        seed=0,
        batch_size=8,
        data=str(shards),
        run_dir=tmp_path,
    )
    return next(iter(task.build_data(ctx)))


@pytest.mark.parametrize("crops", ["fixed", "random"])
def test_vq_and_guide_crops(tiny_shards, tmp_path, monkeypatch, crops):
    """`fixed`: every crop is 600 frames and 20 keyframes, none masked (tiny scenes are 600 frames long)."""
    from a2p.models.registry import build_model
    from a2p.training.tasks import build_task

    vq_config = load_run_config("vq", "debug", overrides=[f"task.crops={crops}"]).task
    vq_batch = _first_batch(build_task("vq", vq_config), tiny_shards["plain"], tmp_path)
    # the guide loads its VQ first: hand it an untrained debug VQ
    vq_model = build_model("vq", vq_config)
    monkeypatch.setattr(
        "a2p.training.export.load_run_or_export", lambda path, expect_task: SimpleNamespace(model=vq_model)
    )
    guide_config = load_run_config("guide", "debug", overrides=[f"task.crops={crops}", "task.vq=stub"]).task
    guide_batch = _first_batch(build_task("guide", guide_config), tiny_shards["mel"], tmp_path)
    for batch in (vq_batch, guide_batch):
        if crops == "fixed":
            assert batch["length"].tolist() == [CROP_MAX_FRAMES] * 8
            assert bool(batch["keyframe_mask"].all()) and batch["keyframes"].shape[1] == 20
        else:
            assert int(batch["length"].max()) < CROP_MAX_FRAMES
    assert "features" in guide_batch


@pytest.mark.parametrize("task", ["face", "body", "vq", "guide"])
def test_the_paper_preset_trains_with_the_reference_recipe(task):
    from a2p.config.train import PAPER_RECIPES
    from a2p.training.tasks import load_run_config

    assert load_run_config(task, "paper").train == PAPER_RECIPES[task]
    assert load_run_config(task, "debug").train == TrainConfig()
