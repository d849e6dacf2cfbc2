"""`a2p bench sample` runs end to end, both paths give the same first-step x0, and its extrapolation adds up."""

import re

import pytest

from a2p.bench.sample import main, timed_setting
from a2p.bench.sample_report import extrapolate
from a2p.errors import ConfigError

NUMBER = r"([\d.]+)"
DEBUG = "--preset debug --seconds 2 --reps 2 --device cpu --threads 1".split()


def summary_row(out: str, setting: str, figures: str) -> tuple[float, float, float]:
    """(a2p s/clip, reference s/clip, ratio) of `setting`'s row in the seconds-per-clip table."""
    row = re.search(rf"^{setting}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+{figures}$", out, re.M)
    assert row, out
    return tuple(float(g) for g in row.groups())


def x0_errors(out: str) -> dict[str, float]:
    """The printed first-step max |x0 a2p - x0 reference| / std per denoiser."""
    line = re.search(
        r"max \|x0 a2p - x0 reference\| / std\(x0 reference\): body (\S+), face (\S+)$", out, re.M
    )
    assert line, out
    return {"body": float(line.group(1)), "face": float(line.group(2))}


def test_extrapolation_keeps_the_once_part_and_scales_the_steps():
    assert extrapolate(2.0, 0.5, 5, 500) == pytest.approx(52.0)
    assert extrapolate(2.0, 0.5, 5, 5) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        extrapolate(1.0, 1.0, 0, 10)
    assert timed_setting("ddim500", 5) == ("ddim5", 5, 500)
    assert timed_setting("dpmpp25", 5) == ("dpmpp5", 5, 25)
    assert timed_setting("dpmpp25", 0) == ("dpmpp25", 25, 25)
    assert timed_setting("dpmpp4", 10) == ("dpmpp4", 4, 4)
    assert timed_setting("paraddim50", 0) == ("paraddim50", 50, 50)
    with pytest.raises(ConfigError):  # its iterations to convergence cannot be extrapolated
        timed_setting("paraddim50", 5)


def test_bench_sample_debug_prints_a_row_per_setting_with_its_ratio(capsys):
    assert main([*DEBUG, "--settings", "ddim10", "dpmpp4", "--measure-steps", "2"]) == 0
    out = capsys.readouterr().out
    for setting, steps in (("ddim10", 10), ("dpmpp4", 4)):
        a2p, reference, ratio = summary_row(out, setting, f"extrapolated from 2 of {steps} steps")
        assert min(a2p, reference, ratio) > 0
        # seconds are printed to 3 significant digits, the ratio to 0.01
        assert ratio == pytest.approx(reference / a2p, rel=0.012, abs=0.006)
        # breakdown: guide+VQ, body, face, other, body and face ms/step, for both paths
        for path in (rf"^{setting}\s+a2p", r"^\s+reference"):
            rows = re.findall(path + rf"\s+{NUMBER}" * 6 + "$", out, re.M)
            assert rows and all(float(x) > 0 for row in rows for x in row), out
    # float32 on both paths: the same x0 up to rounding (1e-4 of its std, the equivalence bound)
    assert max(x0_errors(out).values()) < 1e-4


def test_the_paper_preset_runs_the_reference_front_end_on_both_paths(capsys):
    """The released architecture with vq-wav2vec and the lip regressor: the same first-step x0."""
    args = "--preset paper --seconds 1 --reps 1 --device cpu --settings ddim2 --measure-steps 1".split()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Audio front end (the reference's, random weights): vq-wav2vec's extractor" in out
    assert summary_row(out, "ddim2", "extrapolated from 1 of 2 steps")[2] > 1
    assert max(x0_errors(out).values()) < 1e-4


def test_a_full_run_agrees_with_the_extrapolation_from_fewer_steps(capsys):
    best_of_3 = [*DEBUG, "--settings", "ddim4", "--repeats", "3"]  # timings on a shared CPU are noisy
    assert main([*best_of_3, "--measure-steps", "0"]) == 0
    full = summary_row(capsys.readouterr().out, "ddim4", "measured, all 4 steps")
    assert main([*best_of_3, "--measure-steps", "2"]) == 0
    extrapolated = summary_row(capsys.readouterr().out, "ddim4", "extrapolated from 2 of 4 steps")
    for measured, predicted in zip(full[:2], extrapolated[:2]):  # a2p and reference s/clip
        assert measured / 3 < predicted < measured * 3  # the same order
