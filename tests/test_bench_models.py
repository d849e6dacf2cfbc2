"""`a2p bench models` runs on the debug sizes and its FLOP counter counts what it should."""

import re

import torch

from a2p.bench.models import count_flops, main


def test_flop_counter_counts_a_matmul_exactly():
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 16, bias=False)
    x = torch.randn(5, 48)
    assert count_flops(lambda: layer(x)) == 2 * 5 * 48 * 16


def test_bench_models_debug_reports_both_paths(capsys):
    torch.set_num_threads(1)
    assert (
        main(
            ["--preset", "debug", "--models", "face", "body", "--steps", "1", "--reps", "2", "--frames", "90"]
        )
        == 0
    )
    out = capsys.readouterr().out
    for model in ("face", "body"):
        row = re.search(rf"^{model}\s+(\S+)\s+(\S+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, re.M)
        assert row, out
        a2p_ms, ref_ms, ratio = (float(row.group(i)) for i in (4, 5, 6))
        assert a2p_ms > 0 and ref_ms > 0
        assert abs(ratio - ref_ms / a2p_ms) <= 0.05 * ratio + 0.01
        assert not row.group(2).startswith("-") and not row.group(3).startswith("-")
