"""`irtool restore` and `irtool eval` on many processes: under torchrun, or the workers `--gpu 0,1,...` starts.

One run, many ranks:

- **Start.** Every rank plans the same job list itself. Rank 0 makes the output folder, leaves a random marker file
  in it, reads the images' headers and assigns the runnable jobs to ranks by pixel count (`irtool.shard.balance`).
  Every other rank then checks that it sees each input rank 0 sees, the marker (the very same output folder, not a
  local one of the same name) and the same plan; a rank that does not fails the whole run at start, rank 0 printing
  one line that names the rank and the path.
- **Running.** Each rank restores its share on its own device (`LOCAL_RANK`) with the ordinary engine, which writes
  every output atomically. Ranks report each finished image to rank 0 over the launcher's TCP store (the key-value
  store the process group rendezvous on; small JSON objects, no collectives, so no rank ever blocks on another).
  Rank 0 runs its own share in a thread and, in the main thread, shows one progress bar for the whole run and hands
  the reports on in input order.
- **Failures.** Every rank beats a heartbeat counter in the store. A rank whose heartbeat stops for
  `IRTOOL_RANK_TIMEOUT` seconds (default 60), or that reports a fatal error, is given up: its unfinished files are
  reported as failed, naming the rank, and the run ends with status 1 instead of waiting forever. When the launcher
  stops the run (torchrun stops every worker as soon as one dies), rank 0 and the others finish the writes in
  flight, rank 0 reports what is missing, and `--skip-existing` finishes only that on a rerun. Temp files a killed
  rank left behind are removed at the start of the next multi-process run into that folder.

Imports torch (torch.distributed) and irtool's restoration (engine, planning), shard and devices.processes modules.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from . import shard
from .devices.processes import Dist, setup, teardown
from .errors import IrtoolError, first_line
from .restoration.planning import Job, RestoreOptions, RestoreReport, plan, report_unrunnable

#: how often each rank bumps its heartbeat counter
HEARTBEAT_SECONDS = 1.0
#: how often rank 0 looks for news from the other ranks
POLL_SECONDS = 0.05
#: how long a stopping run waits for the other ranks' last reports
GRACE_SECONDS = 10.0
#: while stopping, a rank silent this long is taken for dead (a live one beats every HEARTBEAT_SECONDS)
DEAD_SECONDS = 3 * HEARTBEAT_SECONDS


def rank_timeout() -> float:
    """Seconds without a heartbeat after which rank 0 gives a rank up (`IRTOOL_RANK_TIMEOUT`, default 60)."""
    try:
        return max(1.0, float(os.environ.get("IRTOOL_RANK_TIMEOUT", "60")))
    except ValueError:
        return 60.0


class LostContact(IrtoolError):
    """The store (hosted by the launcher or rank 0) no longer answers: the run is over."""


# --------------------------------------------------------------------------------------------------------------------
# The channel: small JSON objects through the launcher's TCP store


class Channel:
    """Keys and counters shared by the ranks of one run (a prefix of the launcher's store, so reruns under one
    torchrun restart count never see an earlier attempt's keys)."""

    def __init__(self, timeout: float = 1800.0) -> None:
        run = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.prefix = f"irtool/{run}/"
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        base: dist.Store
        if host and port:
            base = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout))
        else:  # a process group made some other way: its own store
            base = dist.distributed_c10d._get_default_store()
        self._store = dist.PrefixStore(self.prefix, base)

    def put(self, key: str, obj: Any) -> None:
        self._call(self._store.set, key, json.dumps(obj))

    def get(self, key: str) -> Any:
        """The object under `key`, waiting for it (up to the store's timeout)."""
        return json.loads(self._call(self._store.get, key))

    def has(self, key: str) -> bool:
        return bool(self._call(self._store.check, [key]))

    def count(self, key: str, add: int = 0) -> int:
        return int(self._call(self._store.add, key, add))

    @staticmethod
    def _call(fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except (RuntimeError, dist.DistError) as exc:  # DistStoreError, connection reset
            raise LostContact(f"{shard.where()}: lost contact with the run's store ({first_line(exc, 120)})") from None


class Heartbeat:
    """A daemon thread bumping `beat/<rank>` while this rank lives (its own connection: store clients are not
    shared between threads)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._stop = threading.Event()
        self._channel = Channel()
        self._thread = threading.Thread(target=self._beat, name="irtool-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._channel.count(f"beat/{self.rank}", 1)
            except LostContact:
                return
            self._stop.wait(HEARTBEAT_SECONDS)

    def stop(self) -> None:
        self._stop.set()


class Liveness:
    """Rank 0's view of the others' heartbeats, on its own clock (no clock sync between nodes needed)."""

    def __init__(self, channel: Channel, ranks: Sequence[int], timeout: float) -> None:
        self.channel, self.timeout = channel, timeout
        now = time.monotonic()
        self._last = {r: (-1, now) for r in ranks}

    def silent_for(self, r: int) -> float:
        beats = self.channel.count(f"beat/{r}")
        value, since = self._last[r]
        now = time.monotonic()
        if beats != value:
            self._last[r] = (beats, now)
            return 0.0
        return now - since

    def lost(self, r: int) -> bool:
        return self.silent_for(r) > self.timeout


class StopSignals:
    """SIGINT and SIGTERM (torchrun's way of stopping workers) set `signal` instead of killing the process, so the
    writes in flight finish and rank 0 can say what is missing.

    Re-entrant: a rank holds them from its start to its close (`RankedRestore.start`), so a signal that comes while
    the model loads is caught too, and the loops inside enter them again."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._before: dict[int, Any] = {}
        self._depth = 0

    def __enter__(self) -> StopSignals:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._before[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            for sig, handler in self._before.items():
                signal.signal(sig, handler)
            self._before.clear()

    @property
    def name(self) -> str | None:
        return None if self.signal is None else signal.Signals(self.signal).name

    @property
    def exit_code(self) -> int | None:
        return None if self.signal is None else 128 + self.signal


# --------------------------------------------------------------------------------------------------------------------
# Starting: same plan, same folders, one shard each


def _visible(raw: str) -> bool:
    path = Path(raw).expanduser()
    if path.exists():
        return True
    return any(ch in raw for ch in "*?[") and bool(glob.glob(os.path.expanduser(raw), recursive=True))


def _digest(jobs: Sequence[Job]) -> str:
    lines = (f"{j.source}\t{j.src}\t{j.dst}\t{'error' if j.error else 'skip' if j.skip else 'run'}" for j in jobs)
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _sweep_temps(outputs: Sequence[Path]) -> int:
    """Remove the temp files (`.<name>.XXXX.irtool-tmp`) a killed process left beside outputs about to be written.
    Safe: nothing writes these outputs before the run has started."""
    by_folder: dict[Path, set[str]] = {}
    for dst in outputs:
        by_folder.setdefault(dst.parent, set()).add(dst.name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(".") and entry.endswith(".irtool-tmp") and entry[1:].rsplit(".", 2)[0] in names:
                try:
                    (folder / entry).unlink()
                    removed += 1
                except OSError:
                    pass
    return removed


def _await(channel: Channel, key: str, waiting_for: int, liveness: Liveness | None, what: str) -> Any:
    """`key`'s object once rank `waiting_for` posts it; a rank that dies meanwhile is an error, not a hang."""
    while not channel.has(key):
        if liveness is not None and liveness.lost(waiting_for):
            raise IrtoolError(f"rank {waiting_for} stopped before {what} (no heartbeat for {liveness.timeout:.0f}s)")
        time.sleep(POLL_SECONDS)
    return channel.get(key)


@dataclass
class _RankState:
    seen: int = 0
    done: bool = False
    lost: str | None = None  #: why this rank was given up


def _tell_fatal(channel: Channel, rank: int, exc: BaseException) -> int:
    """Tell rank 0 why this rank stopped (it reports the rank's unfinished items with the reason, and exits 1).
    Returns this process's exit status: 0 once told, so that the launcher does not stop the healthy ranks too."""
    text = str(exc) if isinstance(exc, IrtoolError) else first_line(exc, with_type=True)
    try:
        channel.put(f"fatal/{rank}", {"error": text if text.startswith("rank ") else f"{shard.where()}: {text}"})
    except LostContact:
        return 1
    return 0


def _post(channel: Channel, rank: int, posted: int, message: Any) -> int:
    """Post one finished item for rank 0: the message first, then the counter rank 0 polls."""
    channel.put(f"item/{rank}/{posted}", message)
    return channel.count(f"n/{rank}", 1)


class _Gather:
    """Rank 0's loop: its own share in a thread, the other ranks' items from the store, heartbeats, signals.

    `run(own, land)` calls `land(message)` in the calling thread for every item from any rank, and yields after each
    round so the caller can pass on what is complete; it ends when every rank is done or given up (`why(rank)`)."""

    def __init__(self, channel: Channel, ctx: Dist, signals: StopSignals, working: set[int]) -> None:
        self.channel, self.ctx, self.signals = channel, ctx, signals
        self.states = {r: _RankState(done=r not in working) for r in range(1, ctx.world_size)}
        self.own_error: str | None = None

    def why(self, rank: int) -> str:
        if rank == 0:
            return self.own_error or (
                f"was stopped by {self.signals.name}" if self.signals.signal is not None else "stopped"
            )
        return self.states[rank].lost or f"was stopped by {self.signals.name}"

    def run(
        self, own: Callable[[Callable[[Any], None], threading.Event], None] | None, land: Callable[[Any], None]
    ) -> Iterator[None]:
        local: queue.Queue = queue.Queue()
        stop_own = threading.Event()

        def work() -> None:
            try:
                own(local.put, stop_own)  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - reported as rank 0's unfinished items
                self.own_error = f"rank 0 failed: {first_line(exc, with_type=True)}"
            finally:
                local.put(None)

        thread = threading.Thread(target=work, name="irtool-rank0", daemon=True)
        busy = [r for r, s in self.states.items() if not s.done]
        liveness = Liveness(self.channel, busy, rank_timeout())
        own_done = own is None
        stopping_since: float | None = None
        with self.signals:
            if own is not None:
                if self.signals.signal is not None:  # stopped while loading: report, restore nothing more
                    stop_own.set()
                thread.start()
            while True:
                while True:
                    try:
                        item = local.get(timeout=0 if own_done else POLL_SECONDS)
                    except queue.Empty:
                        break
                    if item is None:
                        own_done = True
                    else:
                        land(item)
                self._poll(liveness, land)
                yield None
                if self.signals.signal is not None and stopping_since is None:
                    stopping_since = time.monotonic()
                    stop_own.set()
                if own_done and all(s.done or s.lost for s in self.states.values()):
                    break
                if stopping_since is not None and own_done:
                    # Stopping: wait for the others' last reports, but not for ranks that are already dead.
                    silent = {r: liveness.silent_for(r) for r, s in self.states.items() if not (s.done or s.lost)}
                    if time.monotonic() - stopping_since > GRACE_SECONDS or all(
                        t > DEAD_SECONDS for t in silent.values()
                    ):
                        for r, t in silent.items():
                            if t > DEAD_SECONDS:
                                self.states[r].lost = f"rank {r} died: no heartbeat for {t:.0f}s"
                        break
                if own_done:
                    time.sleep(POLL_SECONDS)
            if own is not None:
                thread.join()

    def _poll(self, liveness: Liveness, land: Callable[[Any], None]) -> None:
        for r, state in self.states.items():
            if state.done or state.lost:
                continue
            done = self.channel.has(f"done/{r}")  # before the count: done is posted after the last item
            total = self.channel.count(f"n/{r}")
            while state.seen < total:
                land(self.channel.get(f"item/{r}/{state.seen}"))
                state.seen += 1
            if done:
                state.done = True
            elif self.channel.has(f"fatal/{r}"):
                state.lost = self.channel.get(f"fatal/{r}")["error"]
            elif liveness.lost(r):
                state.lost = f"rank {r} stopped responding: no heartbeat for {liveness.timeout:.0f}s"


@dataclass
class RankedRestore:
    """One rank's part of a multi-process `irtool restore` (see the module docstring)."""

    ctx: Dist
    channel: Channel
    heartbeat: Heartbeat
    jobs: list[Job]
    owner: list[int]  #: the rank of each job; -1 for jobs planning refused or skipped (rank 0 reports those)
    options: RestoreOptions  #: with this rank's device
    signals: StopSignals = field(default_factory=StopSignals)

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def mine(self) -> list[int]:
        return [i for i, r in enumerate(self.owner) if r == self.ctx.rank]

    @classmethod
    def start(cls, inputs: Sequence[str], out_dir: str | Path, options: RestoreOptions) -> RankedRestore:
        """Join the run, check this node sees what rank 0 sees, and take this rank's share. Raises IrtoolError (one
        line naming the rank and the path) when any rank cannot run; every rank then stops."""
        ctx = setup(options.device)
        try:
            channel = Channel()
            heartbeat = Heartbeat(ctx.rank)
        except BaseException:
            teardown(ctx)
            raise
        options = replace(options, device=str(ctx.device))
        try:
            if ctx.is_main:
                jobs, owner = cls._start_main(ctx, channel, [str(i) for i in inputs], Path(out_dir), options)
            else:
                jobs, owner = cls._start_other(ctx, channel, [str(i) for i in inputs], Path(out_dir), options)
        except BaseException:
            heartbeat.stop()
            teardown(ctx)
            raise
        ranked = cls(ctx, channel, heartbeat, jobs, owner, options)
        ranked.signals.__enter__()  # held until close(): a stop while the model loads is reported, not fatal
        return ranked

    @staticmethod
    def _start_main(
        ctx: Dist, channel: Channel, inputs: list[str], out_dir: Path, options: RestoreOptions
    ) -> tuple[list[Job], list[int]]:
        marker = None
        try:
            jobs = plan(inputs, out_dir, options)
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                marker = out_dir / f".irtool-run-{secrets.token_hex(8)}"
                marker.write_text(f"irtool restore with {ctx.world_size} ranks; removed once every rank has started\n")
            except OSError as exc:
                raise IrtoolError(f"{out_dir}: cannot write to the output folder ({exc.strerror or exc})") from None
            runnable = [i for i, j in enumerate(jobs) if not (j.error or j.skip)]
            _sweep_temps([jobs[i].dst for i in runnable])  # type: ignore[misc]
            ranks = shard.balance([shard.pixel_count(jobs[i].src) for i in runnable], ctx.world_size)
            owner = [-1] * len(jobs)
            for i, r in zip(runnable, ranks):
                owner[i] = r
            channel.put("start/0", {"marker": str(marker), "digest": _digest(jobs), "jobs": len(jobs), "owner": owner,
                                    "visible": [_visible(raw) for raw in inputs]})  # fmt: skip
        except BaseException as exc:
            channel.put("start/0", {"abort": str(exc)})
            if marker is not None:
                marker.unlink(missing_ok=True)
            raise
        others = range(1, ctx.world_size)
        liveness = Liveness(channel, others, rank_timeout())
        problems = []
        try:
            for r in others:
                try:
                    answer = _await(channel, f"ready/{r}", r, liveness, "starting")
                except IrtoolError as exc:
                    answer = {"error": str(exc)}
                if answer.get("error"):
                    problems.append(answer["error"])
            channel.put("go", {"problems": problems})
        finally:
            marker.unlink(missing_ok=True)
        if problems:
            raise IrtoolError(" | ".join(problems))
        return jobs, owner

    @staticmethod
    def _start_other(
        ctx: Dist, channel: Channel, inputs: list[str], out_dir: Path, options: RestoreOptions
    ) -> tuple[list[Job], list[int]]:
        error = None
        try:
            jobs = plan(inputs, out_dir, options)
        except IrtoolError as exc:
            jobs, error = [], f"{shard.where()}: {exc}"
        start = channel.get("start/0")
        if "abort" in start:
            raise SystemExit(1)  # rank 0 says why
        if error is None:
            for raw, seen in zip(inputs, start["visible"]):
                if seen and not _visible(raw):
                    error = f"{shard.where()}: cannot see the input {raw} (rank 0 can); every node needs the same paths"
                    break
        if error is None and not Path(start["marker"]).exists():
            error = (f"{shard.where()}: cannot see the output folder {out_dir} that rank 0 writes to ({start['marker']} "
                     "is missing here); every node needs the same folder, on a shared filesystem")  # fmt: skip
        if error is None and _digest(jobs) != start["digest"]:
            error = (f"{shard.where()}: plans {len(jobs)} jobs from these inputs where rank 0 plans {start['jobs']}; "
                     "every node must see the same files")  # fmt: skip
        channel.put(f"ready/{ctx.rank}", {"error": error})
        if channel.get("go")["problems"]:
            raise SystemExit(1)  # rank 0 prints every rank's problem
        return jobs, start["owner"]

    # -- running

    def load(self) -> Any:
        """This rank's Restorer, or None when it has nothing to restore. A rank that cannot load the model tells
        rank 0 (which reports its files as failed with the reason) before raising."""
        if not self.mine:
            return None
        from .restoration.engine import Restorer

        try:
            return Restorer.load(self.options)
        except Exception as exc:
            message = (
                str(exc) if isinstance(exc, IrtoolError) else f"cannot load the model ({type(exc).__name__}: {exc})"
            )
            key = "abort" if self.is_main else f"fatal/{self.ctx.rank}"
            if self.is_main:
                self.channel.put(key, {"error": f"{shard.where()}: {message}"})
            raise

    def work(self) -> int:
        """Ranks other than 0: load the model, restore this rank's share, posting each report. Returns the
        process's exit status; prints nothing (rank 0 reports every failure, this rank's included)."""
        from .restoration.engine import restore_files

        mine, rank = self.mine, self.ctx.rank
        posted = 0
        try:
            with self.signals:
                restorer = self.load()
                if mine and self.signals.signal is None:
                    stream = restore_files([self.jobs[i] for i in mine], restorer)
                    try:
                        for i, report in zip(mine, stream):
                            posted = _post(self.channel, rank, posted, {"index": i, "report": asdict(report)})
                            if self.signals.signal is not None or self.channel.has("abort"):
                                break
                    finally:
                        stream.close()  # cancels queued work; writes in flight finish atomically
                self.channel.put(f"done/{rank}", {"posted": posted, "signal": self.signals.name})
        except LostContact:
            return 1  # rank 0 is gone: nobody left to report to
        except Exception as exc:  # noqa: BLE001 - told to rank 0, which names this rank's unfinished files
            return _tell_fatal(self.channel, rank, exc)
        return self.signals.exit_code or 0

    def reports(self, restorer: Any, arrived: Callable[[RestoreReport], None] | None = None) -> Iterator[RestoreReport]:
        """Rank 0: every job's report, in input order, as soon as it and all before it are in. `arrived` is called
        (in this thread) for each report as it comes in from any rank, for the progress bar."""
        from .restoration.engine import restore_files

        jobs, owner = self.jobs, self.owner
        slots: list[RestoreReport | None] = [None] * len(jobs)
        note = arrived or (lambda report: None)

        def land(message: dict) -> None:
            i, report = message["index"], message["report"]
            if slots[i] is None:
                slots[i] = report if isinstance(report, RestoreReport) else RestoreReport(**report)
                note(slots[i])

        for i, job in enumerate(jobs):
            if owner[i] < 0:
                land({"index": i, "report": report_unrunnable(job)})

        def own(emit: Callable[[Any], None], stop: threading.Event) -> None:
            if stop.is_set():
                return
            mine = self.mine
            stream = restore_files([self.jobs[i] for i in mine], restorer)
            try:
                for i, report in zip(mine, stream):
                    emit({"index": i, "report": report})
                    if stop.is_set():
                        break
            finally:
                stream.close()

        next_out = 0
        gather = _Gather(self.channel, self.ctx, self.signals, set(owner) - {-1})
        for _ in gather.run(own if self.mine else None, land):
            while next_out < len(slots) and slots[next_out] is not None:
                yield slots[next_out]  # type: ignore[misc]
                next_out += 1
        for i in range(len(slots)):
            if slots[i] is None:
                land({"index": i, "report": self._unfinished(jobs[i], owner[i], gather.why(owner[i]))})
        while next_out < len(slots):
            yield slots[next_out]  # type: ignore[misc]
            next_out += 1

    @staticmethod
    def _unfinished(job: Job, rank: int, why: str) -> RestoreReport:
        """The report of a job its rank never reported: written anyway (the write was in flight when the rank
        stopped; outputs are atomic, so it is whole), or not restored."""
        if job.dst is not None and job.dst.exists():
            return RestoreReport(input=str(job.src), output=str(job.dst), status="ok",
                                 warnings=[f"written, but not reported: {why if why.startswith('rank ') else f'rank {rank} {why}'}"])  # fmt: skip
        reason = why if why.startswith("rank ") else f"rank {rank} {why}"
        return RestoreReport(input=str(job.src), output=str(job.dst) if job.dst else None, status="failed",
                             error=f"{job.src}: not restored ({reason}); rerun with --skip-existing to finish")  # fmt: skip

    def exit_code(self, failed: bool) -> int:
        return self.signals.exit_code or (1 if failed else 0)

    def close(self) -> None:
        self.heartbeat.stop()
        teardown(self.ctx)
        self.signals.__exit__(None, None, None)


# --------------------------------------------------------------------------------------------------------------------
# eval: each dataset's images shared out, per-image scores gathered, figures as in one process


def _eval_items(located: Any, limit: int | None) -> list[str]:
    """A dataset's items in evaluation order (names): its pairs (the first `limit`), then inputs without a ground
    truth (only without --limit), as `datasets.iter_samples` yields them."""
    pairs = located.pairs[:limit] if limit else located.pairs
    return [p.name for p in pairs] + ([] if limit else list(located.probe.unpaired_inputs))


def _eval_owners(targets: Sequence[Any], limit: int | None, world: int) -> list[list[int]]:
    """The rank of each item of each dataset: balanced by pixels over the whole run (a dataset's share continues
    from the loads the ones before it left), the same on every rank."""
    loads, counts = [0] * world, [0] * world
    owners = []
    for located in targets:
        pairs = located.pairs[:limit] if limit else located.pairs
        weights = [shard.pixel_count(p.gt) for p in pairs] + [0] * (len(_eval_items(located, limit)) - len(pairs))
        owners.append(shard.balance(weights, world, loads, counts))
    return owners


@dataclass
class RankedEval:
    """One rank's part of a multi-process `irtool eval`."""

    ctx: Dist
    channel: Channel
    heartbeat: Heartbeat
    targets: list[Any]
    owners: list[list[int]]  #: per dataset, the rank of each item
    limit: int | None
    signals: StopSignals = field(default_factory=StopSignals)

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def device(self) -> str:
        return str(self.ctx.device)

    @classmethod
    def start(
        cls, names: list[str], data_root: Any, clean_dir: Any, device: str, limit: int | None, routing_noise: bool
    ) -> RankedEval:
        """Join the run; every rank finds the datasets itself and must find the same images as rank 0 (one line
        naming the rank and what it could not see otherwise)."""
        from .evaluation import evaluate

        ctx = setup(device)
        channel = Channel()
        heartbeat = Heartbeat(ctx.rank)
        try:
            error = None
            targets: list[Any] = []
            if routing_noise:
                error = ("--routing-noise draws one noise stream through every image in order; it cannot be split "
                         "across processes: run it in one process")  # fmt: skip
            else:
                try:
                    targets = evaluate.resolve(names, data_root, clean_dir)
                except IrtoolError as exc:
                    error = f"{shard.where()}: {exc}" if not ctx.is_main else str(exc)
            digest = hashlib.sha256(
                json.dumps([[t.spec.name, _eval_items(t, limit)] for t in targets]).encode()
            ).hexdigest()
            if ctx.is_main:
                channel.put(
                    "start/0",
                    {"abort": error}
                    if error
                    else {"digest": digest, "items": sum(len(_eval_items(t, limit)) for t in targets)},
                )
                if error:
                    raise IrtoolError(error)
                liveness = Liveness(channel, range(1, ctx.world_size), rank_timeout())
                problems = []
                for r in range(1, ctx.world_size):
                    try:
                        answer = _await(channel, f"ready/{r}", r, liveness, "starting")
                    except IrtoolError as exc:
                        answer = {"error": str(exc)}
                    if answer.get("error"):
                        problems.append(answer["error"])
                channel.put("go", {"problems": problems})
                if problems:
                    raise IrtoolError(" | ".join(problems))
            else:
                start = channel.get("start/0")
                if "abort" in start:
                    raise SystemExit(1)  # rank 0 says why
                if error is None and digest != start["digest"]:
                    error = (f"{shard.where()}: finds other images in these datasets than rank 0 does; every node needs "
                             "the same dataset files (--data-root on a shared filesystem)")  # fmt: skip
                channel.put(f"ready/{ctx.rank}", {"error": error})
                if channel.get("go")["problems"]:
                    raise SystemExit(1)
        except BaseException:
            heartbeat.stop()
            teardown(ctx)
            raise
        ranked = cls(ctx, channel, heartbeat, targets, _eval_owners(targets, limit, ctx.world_size), limit)
        ranked.signals.__enter__()  # held until close(): a stop while the model loads is reported, not fatal
        return ranked

    def _keep(self) -> Callable[[str, int], bool]:
        index = {t.spec.name: d for d, t in enumerate(self.targets)}
        return lambda name, i: self.owners[index[name]][i] == self.ctx.rank

    def _own_items(
        self, model: Any, options: Any, report: Any, emit: Callable[[Any], None], stop: threading.Event | None
    ) -> None:
        """Evaluate this rank's items, emitting {"d", "i", "result"} for each (i: the item's place in its dataset)."""
        from .evaluation import evaluate

        index = {t.spec.name: d for d, t in enumerate(self.targets)}
        taken = [0] * len(self.targets)
        mine = [[i for i, r in enumerate(owner) if r == self.ctx.rank] for owner in self.owners]
        for dreport, result in evaluate.run(model, self.targets, options, report, keep=self._keep()):
            d = index[dreport.dataset]
            emit({"d": d, "i": mine[d][taken[d]], "result": result})
            taken[d] += 1
            if stop is not None and stop.is_set():
                return

    def work(self, load: Callable[[], Any], options: Any, new_report: Callable[[Any], Any]) -> int:
        """Ranks other than 0: load the model, evaluate this rank's items, posting each image's scores. Returns the
        exit status; prints nothing (rank 0 reports every failure, this rank's included)."""
        rank, posted = self.ctx.rank, 0

        def emit(message: dict) -> None:
            nonlocal posted
            posted = _post(self.channel, rank, posted, {**message, "result": asdict(message["result"])})
            if self.signals.signal is not None:
                raise KeyboardInterrupt  # stop after this image: torchrun is stopping the run

        try:
            with self.signals:
                model = load()
                report = new_report(model)
                try:
                    self._own_items(model, options, report, emit, None)
                except KeyboardInterrupt:
                    pass
                self.channel.put(
                    f"done/{rank}", {"seconds": [d.seconds for d in report.datasets], "signal": self.signals.name}
                )
        except LostContact:
            return 1
        except Exception as exc:  # noqa: BLE001 - told to rank 0, which names this rank's unscored images
            return _tell_fatal(self.channel, rank, exc)
        return self.signals.exit_code or 0

    def run(self, model: Any, options: Any, report: Any) -> Iterator[tuple[Any, Any]]:
        """Rank 0: evaluate everything with the other ranks, filling `report` as one process would; yields
        (dataset progress, result) for each image as it arrives from any rank (`.dataset`, `.psnr`: running mean)."""
        from .evaluation import evaluate

        merged: list[list[Any]] = [[None] * len(owner) for owner in self.owners]
        arrivals: list[tuple[int, Any]] = []

        def land(message: dict) -> None:
            result = message["result"]
            if isinstance(result, dict):
                result = evaluate.ImageResult(**result)
            if merged[message["d"]][message["i"]] is None:
                merged[message["d"]][message["i"]] = result
                arrivals.append((message["d"], result))

        working = {r for owner in self.owners for r in owner}
        gather = _Gather(self.channel, self.ctx, self.signals, working)
        own = (lambda emit, stop: self._own_items(model, options, report, emit, stop)) if 0 in working else None
        for _ in gather.run(own, land):
            for d, result in arrivals:
                yield _Progress(self.targets[d].spec.name, merged[d]), result
            arrivals.clear()
        if own is None:  # rank 0 had no image: its report still needs every dataset's header
            for _ in evaluate.run(model, self.targets, options, report, keep=lambda name, i: False):
                pass
        seconds = [list(dr.seconds for dr in report.datasets)]
        for r, state in gather.states.items():
            if state.done and self.channel.has(f"done/{r}"):
                seconds.append(self.channel.get(f"done/{r}")["seconds"])
        complete = True
        for d, dreport in enumerate(report.datasets):
            names = _eval_items(self.targets[d], self.limit)
            for i, result in enumerate(merged[d]):
                if result is None:
                    complete = False
                    rank = self.owners[d][i]
                    why = gather.why(rank)
                    reason = why if why.startswith("rank ") else f"rank {rank} {why}"
                    merged[d][i] = evaluate.ImageResult(names[i], error=f"{names[i]}: not scored ({reason})")
            dreport.images = merged[d]
            dreport.usage = evaluate.usage_of(model, dreport.images)
            dreport.seconds = max((s[d] for s in seconds if d < len(s)), default=dreport.seconds)
        report.complete = report.complete and complete and self.signals.signal is None

    def exit_code(self, failed: bool) -> int:
        return self.signals.exit_code or (1 if failed else 0)

    def close(self) -> None:
        self.heartbeat.stop()
        teardown(self.ctx)
        self.signals.__exit__(None, None, None)


@dataclass
class _Progress:
    """What eval's progress bar reads of a dataset while its images come in from several ranks."""

    dataset: str
    results: list[Any]

    @property
    def psnr(self) -> float | None:
        scores = [r.psnr for r in self.results if r is not None and r.error is None and r.psnr is not None]
        return sum(scores) / len(scores) if scores else None


# --------------------------------------------------------------------------------------------------------------------
# `--gpu 0,1,...`: start the workers ourselves, as torchrun would


def _without_gpu_flags(argv: Sequence[str], on_cpu: bool, device_flags: Sequence[str] = ("--device",)) -> list[str]:
    """The command line minus `--gpu/-g LIST` (and, for GPU workers, any --device: each worker takes its own)."""
    out: list[str] = []
    skip = False
    drop = ("--gpu", "-g") if on_cpu else ("--gpu", "-g", *device_flags)
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in drop:
            skip = True
            continue
        if any(arg.startswith(f"{flag}=") for flag in drop if flag.startswith("--")):
            continue
        if any(arg.startswith(flag) and len(arg) > 2 for flag in drop if not flag.startswith("--")):
            continue  # -g0,1 / -dcpu
        out.append(arg)
    return out if on_cpu else [*out, "--device", "cuda"]


def launch(
    command: str,
    gpus: Sequence[int],
    device: str,
    device_flags: Sequence[str] = ("--device",),
    argv: Sequence[str] | None = None,
) -> int:
    """Run this very command line once per GPU in `gpus` (one worker process each, under torch's elastic launcher,
    as `torchrun --standalone --nproc-per-node N` would), or with `device` "cpu" as that many CPU processes.
    Returns the exit status the command has in one process: the workers' rank 0 decides it."""
    import logging
    import sys

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    if command not in argv:
        raise IrtoolError(
            f"--gpu {','.join(map(str, gpus))}: starting workers needs the command line (`irtool {command} ...`)"
        )
    on_cpu = device == "cpu"
    if not on_cpu:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = [g for g in gpus if g >= count]
        if missing:
            raise IrtoolError(
                f"--gpu {','.join(map(str, gpus))}: this machine has {count} GPU(s); no cuda:{missing[0]} (or pass --device cpu for CPU workers)"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)  # worker k (LOCAL_RANK k) gets gpus[k]
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of every worker taking them all
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(gpus)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # rank 0 reports; no launcher noise
    args = parse_args(["--standalone", "--nproc-per-node", str(len(gpus)), "--max-restarts", "0", "-m", "irtool",
                       *_without_gpu_flags(argv, on_cpu, device_flags)])  # fmt: skip
    try:
        run(args)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        code = codes.get(0)
        return code if code and code > 0 else 1
    return 0
