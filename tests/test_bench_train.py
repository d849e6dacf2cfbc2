"""`a2p bench train` runs on the debug sizes and prints a row per model with consistent ratios."""

import re

import torch

from a2p.bench.train import main


def test_bench_train_debug_rows(capsys):
    torch.set_num_threads(1)
    assert (
        main(["--preset", "debug", "--models", "body", "vq", "guide", "--steps", "1", "--batch-size", "1"])
        == 0
    )
    out = capsys.readouterr().out
    for model in ("body", "guide"):
        row = re.search(rf"^{model}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, re.M)
        assert row, out
        fast, slow, ratio = (float(row.group(i)) for i in (1, 2, 3))
        assert fast > 0 and slow > 0
        assert abs(ratio - fast / slow) <= 0.01 * ratio + 0.01
    assert re.search(r"^vq\s+[\d.]+\s+\(same step\)", out, re.M), out
