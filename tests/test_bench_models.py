"""`a2p bench models` runs end to end on the debug sizes, and its FLOP counter counts exactly."""

import re

import torch

from a2p.bench.flops import count_flops
from a2p.bench.models import main


def test_bench_models_debug_prints_a_row_per_model_and_counts_flops_exactly(capsys):
    m, k, n = 5, 48, 16
    layer = torch.nn.Linear(k, n)
    x = torch.randn(m, k)
    assert count_flops(lambda: layer(x)) == 2 * m * n * k  # bias adds are not counted

    argv = "--preset debug --steps 1 --reps 2 --frames 60 --threads 1 --device cpu".split()
    assert main(argv) == 0
    out = capsys.readouterr().out

    number = r"([\d.]+)[kMGT]?"
    for model in ("face", "body", "vq", "guide"):  # size table: params and the first counted FLOPs
        row = re.search(rf"^{model}\s+{number}\s+{number}\s+\S", out, re.M)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0, out
    for model in ("face", "body"):  # step table: once, a2p, ref, ratio, FLOPs of both paths
        row = re.search(
            rf"^{model}" + rf"\s+{number}" * 3 + r"\s+([\d.]+)x" + rf"\s+{number}" * 2 + "$", out, re.M
        )
        assert row, out
        once, a2p_ms, ref_ms, ratio, a2p_flops, ref_flops = (float(g) for g in row.groups())
        assert min(once, a2p_ms, ref_ms, a2p_flops, ref_flops) > 0
        half = 0.05  # ms are printed to 0.1
        assert (ref_ms - half) / (a2p_ms + half) - 0.01 <= ratio <= (ref_ms + half) / (a2p_ms - half) + 0.01
    # guide: tokens, batch, audio ms, KV cache ms/token, full ms/token, ratio
    row = re.search(r"^guide" + r"\s+([\d.]+)" * 6 + "x$", out, re.M)
    assert row and min(float(g) for g in row.groups()) > 0, out
