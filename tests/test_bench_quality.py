"""`a2p bench quality` samples and scores each setting and judges it against the reference's spread."""

import re

from a2p.bench.quality import Outcome, main, verdict


def report(mean: float, spread: float) -> dict:
    metric = {"mean": mean, "spread": spread, "values": []}
    return {part: {name: metric for name in ("fd_g", "fd_k", "div_g", "div_k")} for part in ("body", "face")}


def test_a_setting_passes_within_the_reference_spread_and_fails_outside():
    reference = Outcome("ddim500", 1.0, 4, report(10.0, 1.0))
    assert verdict(Outcome("dpmpp25", 0.1, 4, report(11.9, 0.1)), reference, 2.0) == []
    failed = verdict(Outcome("dpmpp20", 0.1, 4, report(12.5, 0.1)), reference, 2.0)
    assert "body.fd_g" in failed and "face.div_k" in failed and len(failed) == 8


def test_bench_quality_prints_a_row_per_setting(tiny_shards, model_args, capsys):
    argv = [*model_args, "--data", str(tiny_shards["plain"]), "--settings", "ddim4", "dpmpp2", "--reps", "2"]
    assert main([*argv, "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ddim4\s+[\d.]+\s+.*reference$", out, re.M), out
    row = re.search(r"^dpmpp2\s+([\d.]+)\s+.*(pass|FAIL: .*)$", out, re.M)
    assert row and float(row.group(1)) > 0, out
    assert "fastest passing setting" in out or "no setting both passed and ran faster" in out
