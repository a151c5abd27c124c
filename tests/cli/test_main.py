"""The command as a whole: help, the installed entry point's exit code, and the plot subcommand."""

import subprocess
import sys

import pytest

from mambakit.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["generate", "--help"]])
def test_help_exits_zero(capsys, argv):
    assert main(argv) == 0
    assert "usage" in capsys.readouterr().out


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mambakit", "train", "--data", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "run"), "--steps", "1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mambakit train: error: data:")


def test_plot_writes_the_figures(capsys, tmp_path):
    assert main(["plot", "--out", str(tmp_path / "figs"), "--quick"]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.rsplit("/", 1)[-1] for p in printed)
    assert "ssd_duality.png" in names and "modes_agree.png" in names
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == names
