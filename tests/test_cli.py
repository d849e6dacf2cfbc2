"""The `a2p` dispatcher: subcommands, help and unknown names."""

import subprocess
import sys

from a2p.cli.main import main


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: a2p SUBCOMMAND" in out
    assert "data" in out


def test_unknown_subcommand_fails(capsys):
    assert main(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_entry_point():
    done = subprocess.run([sys.executable, "-m", "a2p", "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    import a2p

    assert done.stdout.strip() == a2p.__version__
