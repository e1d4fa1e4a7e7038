"""The command line: instant start without torch, version, inspect, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from helpers import random_moce
from typer.testing import CliRunner

from irtool import __version__
from irtool.archs.moce_ir import VARIANTS
from irtool.cli import app

runner = CliRunner()


def test_help_and_version_do_not_import_torch():
    probe = "import sys; from irtool.cli import app; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
    for flag in ("--help", "--version"):
        done = subprocess.run([sys.executable, "-m", "irtool", flag], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"irtool {__version__}"


def test_inspect_describes_a_checkpoint_as_json(tmp_path):
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in random_moce(VARIANTS["tiny"]).state_dict().items()}},
        tmp_path / "m.ckpt",
    )
    result = runner.invoke(app, ["inspect", str(tmp_path / "m.ckpt"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["arch"] == "moce_ir" and info["config"]["dim"] == 16 and info["parameters"] == 1_283_176
    assert len(info["moce_layers"]) == 5
    table = runner.invoke(app, ["inspect", str(tmp_path / "m.ckpt")])
    assert table.exit_code == 0 and "1,283,176" in table.stdout


def test_a_bad_checkpoint_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not weights")
    done = subprocess.run([sys.executable, "-m", "irtool", "inspect", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in done.stderr


def test_usage_errors_exit_2():
    assert runner.invoke(app, ["inspect"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
