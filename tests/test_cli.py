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


# --------------------------------------------------------------------------------------------------------------------
# One CLI that behaves the same everywhere

#: every flag each command had before irtool/cli.py became a package: they all keep working
# train's and bench's network config is --variant NAME (--config is FIELD=VALUE everywhere: see below)
FLAGS_BEFORE = {
    "bench": "--batch --breakdown --compile --cuda-graphs --device --experts --gpu --json --model "
    "--no-tune-allocator --path --precision --profile --runs --sizes --threads --trust-checkpoint --tune-allocator "
    "--warmup --weights -m",
    "calibrate": "--batch-size --classes --clean-dir --config --crops --device --gpu --json --levels --min-accuracy "
    "--model --output --precision --seed --size --trust-checkpoint --weights -b -d -g -m -o -w",
    "datasets check": "--data-root --json",
    "datasets list": "--data-root --json",
    "degrade": "--kind --level --overwrite --seed -k -l",
    "eval": "--clean-dir --config --crop-border --csv --data-root --dataset --device --figure --gpu --json --limit "
    "--model --noise-stream --plot --precision --protocol --quiet --report --reported --router --router-config "
    "--routing-noise --save-format --save-images --save-inputs --setting --tile --trust-checkpoint --weights -d -g -m "
    "-q -w",
    "inspect": "--config --json --router-config --trust-checkpoint",
    "report": "--figure --output -o",
    "restore": "--batch-size --calibration --config --crf --cut-threshold --device --dry-run --end --format --gpu "
    "--json --keep-partial --lossless --max-megapixels --model --overwrite --precision --quality --quiet --report "
    "--route-per-frame --route-per-tile --route-size --router --router-config --skip-existing --start --suffix --tile "
    "--tile-overlap --trust-checkpoint --video-codec --weights --workers -b -d -f -g -m -q -t -w",
    "train": "--arch --art-ema --art-tau --augment --balance-weight --batch-size --blocks --channels-last --ckpt-every "
    "--clean-dir --compile --complexity --config-file --data-root --dec-blocks --device --dim --epochs "
    "--experts --fft-weight --grad-clip --heads --init --json --log-every --loss --lr --lr-min --no-channels-last "
    "--no-complexity --num-workers --out --patch-size --precision --preset --print-config --refinement-blocks "
    "--resume --reweight --route-task-weight --router --schedule-length --schedule-unit --seed --stage --steps --tasks "
    "--threads --top-k --train-all --val-count --val-dir --val-every --val-size --warmup --weight-decay -o -p",
    "weights convert": "--config --dtype --force --json --trust-checkpoint",
    "weights fetch": "--force --json --retries --timeout --trust-checkpoint --url",
    "weights import": "--config --force --json --name --role --trust-checkpoint",
    "weights list": "--json",
    "weights remove": "--json",
    "weights show": "--json",
    "weights verify": "--json --trust-checkpoint",
}


def commands():
    """(command path, click command) of every leaf command."""
    import typer.main

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in sorted(command.commands.items()):
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    return dict(walk(typer.main.get_command(app), []))


def option_names(command) -> set[str]:
    return {name for p in command.params for name in (*p.opts, *getattr(p, "secondary_opts", ())) if name[0] == "-"}


def test_every_flag_of_before_still_works():
    found = commands()
    assert set(found) == set(FLAGS_BEFORE)
    for path, flags in FLAGS_BEFORE.items():
        assert set(flags.split()) <= option_names(found[path]), path


def test_config_means_field_equals_value_wherever_it_is_and_no_old_spelling_is_read(tmp_path):
    for path, command in commands().items():
        for p in command.params:
            if "--config" in p.opts:
                assert p.multiple and "FIELD=VALUE" in (p.help or ""), path
    # not yet released: the network-config spellings from before --variant are refused, not rewritten
    for old in (["--config", "tiny"], ["--config=tiny"], ["-c", "tiny"]):
        result = runner.invoke(app, ["train", "--clean-dir", str(tmp_path), *old, "--print-config"])
        assert result.exit_code == 2, result.output
        assert "deprecated" not in result.output
    bench_old = runner.invoke(app, ["bench", "--config", "tiny", "--device", "cpu"])
    assert bench_old.exit_code == 2 and "deprecated" not in bench_old.output
    plain = runner.invoke(app, ["train", "--clean-dir", str(tmp_path), "--variant", "tiny", "--print-config"])
    assert plain.exit_code == 0 and '"variant": "tiny"' in plain.stdout


def test_d_is_device_in_every_command_that_has_a_device():
    for path, command in commands().items():
        for p in command.params:
            if "-d" in p.opts:
                assert p.opts[0] == "--device", path
            if "--device" in p.opts:
                assert "-d" in p.opts, path


def test_json_is_a_flag_in_every_command():
    for path, command in commands().items():
        (json_option,) = [p for p in command.params if "--json" in p.opts]
        assert json_option.is_flag, path


def test_no_short_flag_has_two_meanings():
    meanings: dict[str, list[set[str]]] = {}
    for command in commands().values():
        for p in command.params:
            longs = {n for n in (*p.opts, *getattr(p, "secondary_opts", ())) if n.startswith("--")}
            for short in (n for n in p.opts if n[0] == "-" and n[1] != "-"):
                meanings.setdefault(short, []).append(longs)
    for short, options in meanings.items():
        assert set.intersection(*options), (short, options)  # one long name they all share


def test_flags_show_as_flags_and_help_texts_literally():
    for path in ["", *commands()]:
        shown = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "<bool>" not in shown.stdout, path
    restore_help = runner.invoke(app, ["restore", "--help"], env={"COLUMNS": "200"}).stdout
    assert "[hh:]mm:ss" in restore_help  # rich would read "[hh:]" as markup and drop it
    train_help = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--compile" in train_help and "--no-compile" in train_help


def test_usage_lines_have_one_ellipsis_per_argument():
    usages = {}
    for path in commands():
        shown = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"}).stdout
        (usages[path],) = [line.strip() for line in shown.splitlines() if "Usage:" in line]
        assert "...}..." not in usages[path] and "... ..." not in usages[path], usages[path]
    assert usages["restore"].endswith("{INPUT... OUTPUT_DIR}")
    assert usages["report"].endswith("{REPORT.json...}")
    assert usages["weights fetch"].endswith("{names}...")  # an argument without its own ellipsis keeps Typer's


def test_a_flag_followed_by_a_boolean_word_is_refused_not_read_as_a_path(tmp_path):
    cases = [
        ["restore", str(tmp_path / "a.png"), str(tmp_path / "out"), "--skip-existing", "true"],
        ["restore", "--overwrite", "yes", str(tmp_path / "a.png"), str(tmp_path / "out")],
        ["degrade", str(tmp_path / "a.png"), str(tmp_path / "out"), "--overwrite", "1"],
        ["weights", "fetch", "moce_ir.aio3", "--force", "false"],
        ["train", "--compile", "on", "--print-config"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        flag, word = next(
            (a, b) for a, b in zip(args, args[1:]) if a.startswith("--") and b.lower() in "true yes 1 false on"
        )
        assert result.exit_code == 2, args
        assert f"{flag} {word}: flags take no value; leave out '{word}'" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert "--no-compile off" in runner.invoke(app, ["train", "--compile", "on"]).stderr
    assert not (tmp_path / "out").exists()


def test_error_lines_are_printed_literally(tmp_path):
    odd = tmp_path / "in" / "[bold red]bad :smile:.png"
    odd.parent.mkdir()
    odd.write_bytes(b"not a png")
    result = runner.invoke(app, ["degrade", str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "[bold red]bad :smile:.png" in line


def test_no_command_function_is_over_80_lines():
    import ast
    from pathlib import Path

    import irtool.cli

    for path in Path(irtool.cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.end_lineno - node.body[0].lineno + 1  # the body: a signature of options does not count
                assert body <= 80, f"{path.name}: {node.name} is {body} lines"


def test_help_is_instant():
    """`irtool --help` under 0.5 s: counted in the CPU time the process uses (the wall time on a busy machine also
    counts other processes), and with none of the heavy modules imported."""
    import resource

    probe = (
        "import sys\nfrom irtool.cli import main\nsys.argv = ['irtool', 'restore', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'numpy', 'cv2', 'PIL', 'rich.progress') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    best = float("inf")
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-m", "irtool", "--help"], capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        assert done.returncode == 0
    assert best < 0.5, f"irtool --help took {best:.2f} s of CPU time"


def test_ctrl_c_in_any_command_is_one_line_naming_it_and_exit_130(monkeypatch):
    from irtool.evaluation import datasets as ds

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ds, "data_root", interrupt)
    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted: irtool datasets list stopped before it finished"


def test_top_level_help_ends_with_a_getting_started_example_that_runs(tmp_path, monkeypatch):
    import re

    from PIL import Image

    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "Getting started:" in shown and "irtool weights fetch moce_ir.aio5" in shown
    example = re.search(r"Getting started: irtool (restore \S+ \S+)", shown).group(1).split()
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 32), (120, 90, 60)).save(example[1])
    done = runner.invoke(app, example)
    assert done.exit_code == 0, done.output
    assert Image.open(tmp_path / example[2] / example[1]).size == (40, 32)
