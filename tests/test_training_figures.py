"""The TensorBoard eval figure: real vs. generated motion, labelled, on a time axis in seconds."""

import pytest
import torch

from a2p.training.figures import motion_figure


def test_motion_figure_labels_real_and_generated_per_channel():
    real, generated = torch.randn(90, 104), torch.randn(90, 104)
    figure = motion_figure(real, generated, channels=3, title="body: val window 0")
    axes = figure.get_axes()
    assert figure.get_suptitle() == "body: val window 0"
    assert [ax.get_ylabel() for ax in axes] == ["channel 0", "channel 1", "channel 2"]
    assert axes[-1].get_xlabel() == "time (s)"
    assert axes[-1].get_xlim() == pytest.approx((0.0, 3.0))  # 90 frames at 30 fps
    assert [text.get_text() for text in axes[0].get_legend().get_texts()] == ["real", "generated"]
    for channel, ax in enumerate(axes):
        assert ax.get_shared_x_axes().joined(ax, axes[-1])
        drawn_real, drawn_generated = (line.get_ydata() for line in ax.get_lines())
        assert torch.equal(torch.as_tensor(drawn_real), real[:, channel])
        assert torch.equal(torch.as_tensor(drawn_generated), generated[:, channel])


def test_motion_figure_draws_no_more_channels_than_there_are():
    assert len(motion_figure(torch.zeros(10, 2), torch.zeros(10, 2), channels=4).get_axes()) == 2
