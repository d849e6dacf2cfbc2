"""`a2p bench parallel` prints rounds, steps and the distance to DDIM for every setting and window."""

import re

from a2p.bench.parallel import main


def test_bench_parallel_reports_fewer_rounds_than_steps(capsys):
    argv = "--seconds 1 --reps 2 --settings ddim20 --windows 1 8 --threads 1".split()
    assert main(argv) == 0
    rows = re.findall(
        r"^ddim20\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)x\s+(\d+)\s+([\d.]+)x\s+(\S+)$",
        capsys.readouterr().out,
        re.M,
    )
    assert len(rows) == 2
    one, eight = ([float(v) for v in row] for row in rows)
    assert one[1] == one[2] == 20 and float(rows[0][6]) < 1e-5  # a window of 1 is DDIM itself
    assert eight[1] < 20 and eight[4] >= 20 and float(rows[1][6]) < 1e-2
