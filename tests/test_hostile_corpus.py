"""The whole hostile corpus (tests/hostile_corpus.py) restored in one `irtool restore` run, in a subprocess under a
memory ceiling and a timeout: no traceback, no hang, every file restored correctly or refused with one line naming
it, every output decodable, no partial file, every input untouched. A tiny random-weight MoCE-IR keeps it fast."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_corpus import MAX_MEGAPIXELS, OK, REFUSED, build
from restore_fixtures import tiny_checkpoint

from irtool.images import files as io

#: address-space ceiling of the restore process: torch reserves a few GB of address space it never touches, and a
#: file that slipped past the limits (a decompression bomb, /dev/zero) would go far beyond it
ADDRESS_SPACE = 12 << 30
#: peak resident memory the run may reach (its model is tiny; the largest corpus image is 200 px): about 370 MB
#: measured, torch's own libraries most of it
PEAK_RSS = 800 << 20
TIMEOUT_S = 150


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


#: runs irtool's CLI in this interpreter and writes its own peak RSS (KiB) to argv[1] on the way out. VmHWM, where
#: Linux has it: ru_maxrss survives exec, so a child forked (preexec_fn) from a pytest process that has grown over
#: hundreds of tests reports that process's RSS (1687 MB in one CI run, where the restore itself peaks near 400 MB)
_MEASURED = (
    "import atexit, re, resource, sys\n"
    "report = sys.argv[1]\n"
    "def peak():\n"
    "    try:\n"
    "        return re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
    "    except (OSError, AttributeError):\n"
    "        return str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "atexit.register(lambda: open(report, 'w').write(peak()))\n"
    "sys.argv = ['irtool'] + sys.argv[2:]\n"
    "from irtool.cli import main\n"
    "main()\n"
)


def _run_measured(
    args: list[str], rss_file: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, int, float]:
    """Run `irtool ARGS` in a subprocess under the ceiling and the timeout; (result, its peak RSS in bytes, seconds)."""
    cmd = [sys.executable, "-c", _MEASURED, str(rss_file), *args]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=_limit_memory)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(
            f"irtool restore hung on the corpus (killed after {TIMEOUT_S} s); stderr tail: {err.decode()[-2000:]}"
        )
    done = subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())
    peak = int(rss_file.read_text()) * 1024 if rss_file.exists() else 0
    return done, peak, time.monotonic() - started


def test_the_hostile_corpus_restores_or_refuses_every_file_in_one_run(tmp_path):
    corpus = tmp_path / "corpus"
    expect = build(corpus)
    assert len(expect) >= 250
    regular = {p: _hash(p) for p, e in expect.items() if not e.special and p.is_file()}
    checkpoint = tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread is fastest, also on a busy machine
    args = [
        "restore",
        str(corpus),
        str(out),
        "-w",
        str(checkpoint),
        "--json",
        "--max-megapixels",
        str(MAX_MEGAPIXELS),
        "--workers",
        "2",
    ]
    run, peak, seconds = _run_measured(args, tmp_path / "rss", env)
    assert peak > 0, run.stderr[-2000:]

    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr[-3000:]
    assert run.returncode == 1, run.stderr[-2000:]  # some files are refused: exit status 1, never a crash
    assert peak < PEAK_RSS, f"peak RSS {peak / 2**20:.0f} MB"
    reports = [json.loads(line) for line in run.stdout.splitlines()]
    by_input = {Path(r["input"]): r for r in reports}

    # every error line on stderr is one line that names its file
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == sum(r["status"] == "failed" for r in reports)
    for r in reports:
        if r["status"] == "failed":
            assert "\n" not in r["error"] and r["input"] in r["error"], r

    unexplained = []
    for path, e in expect.items():
        r = by_input.get(path)
        if r is None:
            unexplained.append(f"{path}: no report")
            continue
        if e.outcome == OK and r["status"] != "ok":
            unexplained.append(f"{path}: expected restored, got {r['error']}")
        elif e.outcome == REFUSED and r["status"] != "failed":
            unexplained.append(f"{path}: expected refused, got {r['status']}")
        elif e.reason and r["status"] == "failed" and e.reason not in r["error"].lower():
            unexplained.append(f"{path}: refusal {r['error']!r} does not say {e.reason!r}")
        if r["status"] == "ok":
            restored = io.read_image(r["output"])  # decodable, at the size the input shows
            if e.size is not None and e.outcome == OK:
                assert (restored.width, restored.height) == e.size, path
            assert r["size"] == [restored.width, restored.height]
    assert not unexplained, "\n".join(unexplained)
    # the folder loop was not followed, and nothing beyond the corpus was reported
    assert set(by_input) <= set(expect), sorted(set(map(str, by_input)) - set(map(str, expect)))[:5]

    assert {p: _hash(p) for p in regular} == regular  # inputs untouched
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".irtool-tmp")]
    print(
        f"corpus: {len(expect)} files, {sum(r['status'] == 'ok' for r in reports)} restored, "
        f"{sum(r['status'] == 'failed' for r in reports)} refused, {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MB"
    )
