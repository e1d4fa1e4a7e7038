"""The training loop: one process or many (DDP), checkpoints and bit-exact resume, validation, logs.

`train(config, out)` runs a whole recipe; `Trainer` is one optimisation step (forward, losses, backward, update) and
is what the tests drive directly.

How a step is computed, with N processes of batch b (one process: N = 1):
- each sample i gets a pixel loss l_i (L1, or LoRA-IR's PSNR loss) and, when enabled, an FFT-L1 f_i;
- the per-task sums and counts of l_i are summed over all processes, so every process knows the global per-task
  means L_k (what Art scores and what the logs show) and the same Art weights w_k;
- the pixel objective is sum_k w_k L_k with Art, the global mean of l_i without; each process back-propagates
  N · sum_{i local} c_i l_i, with c_i = w_k / count_k (Art) or 1 / (N·b), so DDP's gradient average is exactly the
  gradient of the objective over the global batch;
- MoCE-IR's routing balance loss is a statistic of the batch a process sees (as in the official DDP training, where
  each GPU's batch of 8 has its own), and its gradients are averaged over processes like everything else.

Sparse experts under DDP: a MoCE-IR expert chosen by no image of a process gets no gradient there, which plain DDP
treats as an error unless `find_unused_parameters=True` (the official strategy: a traversal of the autograd graph
after every forward). Instead each process adds 0 · sum(expert parameters) to its loss (as LoRA-IR's code does), so
every parameter gets a gradient (zero where unused) and DDP runs as for a dense network; afterwards the gradients of
experts that no image of any process chose are set back to None, so AdamW skips them exactly as it does on one
process (a zero gradient would still decay the weights and move them along their momentum). On a CPU with gloo the
two strategies cost the same (benchmarks/train_ddp_sparse.py); the traversal they save matters more next to fast
GPU steps. LoRA-IR keeps all experts of a conv in one tensor, so none of its parameters goes unused.

Imports torch; data through `irtool.train.data`, images and degradations through `irtool.images.files`/`irtool.degrade`,
PSNR through `irtool.evaluation.metrics`.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..devices.policy import autocast, resolve_precision
from ..devices.processes import Dist, all_reduce_sum, barrier, broadcast_object, gather_objects, setup, teardown
from ..errors import CheckpointError, IrtoolError
from ..restoration.tiling import run_padded
from . import checkpoint, losses
from .models import MoCEForward, build_network, forward_module, load_router, restorer, router_views_spec
from .presets import TrainConfig, absolute_paths, recipe_changes, saved_config
from .reweight import ArtReweighter

if TYPE_CHECKING:
    from ..archs.clip_router import CLIPRouter

#: callback for progress events: (kind, info) with kind in start, step, val, checkpoint, end
EventSink = Callable[[str, dict[str, Any]], None]


class TrainError(IrtoolError):
    """A training run cannot start or continue (bad data, a resume that does not fit, ...)."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run after a whole step, and the run was saved at that step (the checkpoint a normal save
    writes), so `train(..., resume=True)` continues from it."""

    def __init__(self, step: int, out: Path) -> None:
        super().__init__(f"interrupted at step {step}; saved to {out}")
        self.step, self.out = step, out


# --------------------------------------------------------------------------------------------------------------------
# Learning rate


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Linear warm-up then cosine to `lr_min`, in epochs (constant within an epoch) or steps.

    Warm-up unit u (0-based) gets lr·(u+1)/warmup, so the last warm-up unit reaches lr. The official schedule
    (pl_bolts' LinearWarmupCosineAnnealingLR stepped per epoch, warmup_start_lr 0) starts at lr·u/(warmup-1), i.e. it
    trains the whole first epoch at lr 0; the rest, from the end of the warm-up on, is the same curve.

    The rate is a function of the step and the run's length only, never of the past: a run resumed with more (or
    fewer) steps or epochs follows, from its resume step on, the curve of a run started with the new length (so
    after a finished cosine the rate rises back to where the longer curve is at that step); with `schedule_length`
    set the curve does not depend on the length at all and a longer run stays at `lr_min` past its end.
    """
    if config.schedule_unit == "epoch":
        unit, length = step // steps_per_epoch, config.schedule_length or config.epochs or 1
    else:
        unit, length = step, config.schedule_length or total_steps
    if unit < config.warmup:
        return config.lr * (unit + 1) / config.warmup
    progress = min(1.0, (unit - config.warmup) / max(1, length - config.warmup))
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------------------------------
# One step


@dataclass
class StepStats:
    """Global (all processes) numbers of one step, for logs and progress."""

    loss: float
    pixel: float
    fft: float
    balance: float
    route: float  # routing cross-entropy (0 without routing supervision)
    identity: float  # the identity hinge, mean per sample (0 when off)
    task_loss: list[float]  # per task, nan when absent from the global batch
    task_count: list[int]
    weights: list[float] | None  # Art's weights, None without Art
    grad_norm: float | None = None


@dataclass
class _Terms:
    """The loss terms of one process's batch: per-sample pixel loss (B,) with the task ids, per-sample FFT-L1,
    MoCE-IR's balance loss, per-sample routing cross-entropy, DDP's zero term (each None when not computed)."""

    pixel: Tensor
    task: Tensor
    fft: Tensor | None
    aux: Tensor | None
    route: Tensor | None
    zero: Tensor | None
    identity: Tensor | None = None


@dataclass
class _GlobalSums:
    """`_Terms` summed over all processes: per-task pixel-loss sums and sample counts, FFT, balance and routing
    sums, and how many images chose each (layer, expert) group."""

    task_sums: Tensor
    counts: Tensor
    fft: Tensor
    aux: Tensor
    route: Tensor
    identity: Tensor
    usage: Tensor


class Trainer:
    """Network, optimiser, Art state and noise generator of one process; `step(batch, lr)` trains on one batch.

    router: LoRA-IR's frozen router for the network stages (it rides along on the device, outside the optimiser)."""

    def __init__(
        self, config: TrainConfig, net: nn.Module, ctx: Dist, tasks: Sequence[str], router: CLIPRouter | None = None
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.tasks = list(tasks)
        self.device = ctx.device
        self.net = net.to(self.device).train()
        self.router = router.to(self.device).eval() if router is not None else None
        self.channels_last = config.channels_last if config.channels_last is not None else self.device.type == "cuda"
        if self.channels_last:
            # Module.to takes memory_format at run time; torch's overloads for it omit the keyword
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # irtool.devices.policy's rules, as for every command: auto is bf16 on a CUDA GPU that has it, else fp32
        self.autocast_dtype, self.precision_notes = resolve_precision(config.precision, self.device)

        self.forward_module = forward_module(self.net, self.router, config, distributed=ctx.enabled)
        moce = self.forward_module if isinstance(self.forward_module, MoCEForward) else None
        self.groups = moce.groups if moce is not None else []  # MoCE-IR's (layer, expert) parameter groups
        self.num_experts = moce.num_experts if moce is not None else 0
        self.module = self._wrap(self.forward_module)

        params = [p for p in self.net.parameters() if p.requires_grad]
        self.readout = moce.readout if moce is not None else None
        if self.readout is not None:
            self.readout.to(self.device)
            params += list(self.readout.parameters())
        self.optimizer = torch.optim.AdamW(
            params,
            lr=config.lr,
            betas=(config.betas[0], config.betas[1]),
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda" or None,
        )
        self.art = (
            ArtReweighter(self.tasks, tau=config.art_tau, ema=config.art_ema, init=config.art_init)
            if config.reweight == "art"
            else None
        )
        # Routing noise (the official N(0, 1/E^2) on the router logits in training) from a generator of our own, so
        # that its state can be saved and restored; one stream per process.
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed * 7919 + 1 + ctx.rank)

    def _wrap(self, module: nn.Module) -> Callable[..., Any]:
        """The forward module under DDP (several processes) and torch.compile (when asked for)."""
        wrapped: Callable[..., Any] = module
        if self.ctx.enabled:
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # The only buffers are the constant expert complexities: no need to re-send them every forward.
            # (torch >= 2.13 renamed the option.)
            no_sync = (
                "forward_sync_buffers"
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers"
            )
            options: dict[str, Any] = {no_sync: False}
            wrapped = DistributedDataParallel(
                module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,
                **options,
            )
        if self.config.compile:
            wrapped = torch.compile(wrapped, dynamic=False)
        return wrapped

    # -- the step

    def _autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device, self.autocast_dtype)

    def forward_backward(self, batch: dict[str, Tensor]) -> StepStats:
        """Losses and gradients for one batch (this process's share of the global batch); no parameter update."""
        cfg = self.config
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        batch["lq"] = batch["lq"].contiguous(memory_format=memory)
        gt, task = batch["gt"], batch["task"]

        with self._autocast():
            out, aux, experts, zero, route = self.module(batch, self.noise)
        if cfg.pixel_loss == "ce":
            pixel = torch.nn.functional.cross_entropy(out.float(), task, reduction="none")
        else:
            pixel = losses.PIXEL_LOSSES[cfg.pixel_loss](out, gt)
        terms = _Terms(pixel, task, losses.fft_l1(out, gt) if cfg.fft_weight else None, aux, route, zero)
        if cfg.identity_weight:
            terms.identity = losses.identity_hinge(out, batch["lq"], gt)
        sums = self._global_sums(terms, experts)
        loss, stats = self._objective(terms, sums)
        loss.backward()

        if self.ctx.enabled:
            # Experts no image of any process chose: back to "no gradient", as on one process (see module docstring).
            for g in (sums.usage == 0).nonzero().flatten().tolist():
                for p in self.groups[g]:
                    p.grad = None
        return stats

    def _global_sums(self, terms: _Terms, experts: Tensor | None) -> _GlobalSums:
        """One all-reduce for everything global: per-task sums and counts, FFT sum, balance loss, expert usage."""
        K, device = len(self.tasks), self.device
        sums, counts = losses.task_sums(terms.pixel, terms.task, K)
        usage = torch.zeros(len(self.groups), dtype=torch.float64, device=device)
        if experts is not None and self.groups:
            flat = experts.reshape(experts.shape[0], experts.shape[1], -1)
            layer = torch.arange(flat.shape[1], device=flat.device).view(1, -1, 1)
            usage.index_add_(
                0,
                (layer * self.num_experts + flat).flatten(),
                torch.ones(flat.numel(), dtype=torch.float64, device=device),
            )
        nothing = torch.zeros((), dtype=torch.float64, device=device)
        extras = torch.stack(
            [
                terms.fft.detach().double().sum() if terms.fft is not None else nothing,
                terms.aux.detach().double() if terms.aux is not None else nothing,
                terms.route.detach().double().sum() if terms.route is not None else nothing,
                terms.identity.detach().double().sum() if terms.identity is not None else nothing,
            ]
        )
        packed = all_reduce_sum(self.ctx, torch.cat([sums, counts.to(device), extras, usage]))
        return _GlobalSums(
            task_sums=packed[:K],
            counts=packed[K : 2 * K],
            fft=packed[2 * K],
            aux=packed[2 * K + 1],
            route=packed[2 * K + 2],
            identity=packed[2 * K + 3],
            usage=packed[2 * K + 4 :],
        )

    def _objective(self, terms: _Terms, g: _GlobalSums) -> tuple[Tensor, StepStats]:
        """This process's share of the loss to back-propagate (see the module docstring), and the step's numbers."""
        cfg, world = self.config, self.ctx.world_size
        n_total = g.counts.sum()
        present = g.counts > 0
        task_mean = g.task_sums / g.counts.clamp_min(1)
        if self.art is not None:
            w = self.art.step(task_mean.cpu(), present.cpu()).to(self.device)
            coeff = (w / g.counts.clamp_min(1))[terms.task]
            pixel_value = float((w * task_mean).sum())
        else:
            w = None
            coeff = torch.full_like(terms.pixel, 1.0, dtype=torch.float64) / n_total
            pixel_value = float(g.task_sums.sum() / n_total)
        loss = (coeff.to(terms.pixel.dtype) * terms.pixel).sum() * world
        value = pixel_value
        fft_value = float(g.fft / n_total) if terms.fft is not None else 0.0
        if terms.fft is not None:
            loss = loss + cfg.fft_weight * terms.fft.sum() * (world / float(n_total))
            value += cfg.fft_weight * fft_value
        balance_value = float(g.aux) / world
        if cfg.balance_weight and terms.aux is not None:
            loss = loss + cfg.balance_weight * terms.aux.float()
            value += cfg.balance_weight * balance_value
        route_value = float(g.route / n_total) if terms.route is not None else 0.0
        if terms.route is not None:
            loss = loss + cfg.route_task_weight * terms.route.sum() * (world / float(n_total))
            value += cfg.route_task_weight * route_value
        identity_value = float(g.identity / n_total) if terms.identity is not None else 0.0
        if terms.identity is not None:
            loss = loss + cfg.identity_weight * terms.identity.sum() * (world / float(n_total))
            value += cfg.identity_weight * identity_value
        if terms.zero is not None:
            loss = loss + terms.zero
        stats = StepStats(
            loss=value,
            pixel=pixel_value,
            fft=fft_value,
            balance=balance_value,
            route=route_value,
            identity=identity_value,
            task_loss=[float(x) if c > 0 else math.nan for x, c in zip(task_mean.tolist(), g.counts.tolist())],
            task_count=[int(c) for c in g.counts.tolist()],
            weights=None if w is None else w.tolist(),
        )
        return loss, stats

    def update(self, lr: float) -> float | None:
        """Apply the gradients with learning rate `lr` (after clipping, when enabled); returns the gradient norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        norm = None
        if self.config.grad_clip:
            params = [p for p in self.net.parameters() if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def step(self, batch: dict[str, Tensor], lr: float) -> StepStats:
        stats = self.forward_backward(batch)
        stats.grad_norm = self.update(lr)
        return stats

    # -- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "art": self.art.state_dict() if self.art is not None else None,
            "readout": self.readout.state_dict() if self.readout is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.readout is not None:
            if not state.get("readout"):
                raise CheckpointError(
                    "the training state has no routing read-out (it was saved without "
                    "route_task_weight); resume is not possible with routing supervision on"
                )
            self.readout.load_state_dict(state["readout"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.art is not None and state.get("art"):
            self.art.load_state_dict(state["art"])


# --------------------------------------------------------------------------------------------------------------------
# Validation


def val_metric(config: TrainConfig) -> str:
    """What validation measures: PSNR of restored images, or the router's accuracy (percent) at naming the task."""
    return "accuracy" if config.stage == "router" else "psnr"


@torch.no_grad()
def validate(
    model: nn.Module,
    pairs: Sequence[Any],
    tasks: Sequence[str],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    metric: str = "psnr",
) -> dict[str, float]:
    """Per task and averaged over tasks: mean PSNR (RGB, data range 1, outputs clamped, as MoCE-IR's test; routing
    deterministic), or the percentage of images a router classifies as their task."""
    from ..archs.clip_router import CLIPRouter
    from ..evaluation.metrics import psnr

    if metric == "accuracy" and not isinstance(model, CLIPRouter):
        raise TypeError(f"accuracy validates a LoRA-IR router, not a {type(model).__name__}")
    was_training = model.training
    model.eval()
    per_task: dict[str, list[float]] = {}
    try:
        for pair in pairs:
            lq = pair.lq.unsqueeze(0).to(device)
            with autocast(device, autocast_dtype):
                if isinstance(model, CLIPRouter) and metric == "accuracy":
                    logits, _ = model.route(lq)
                    value = 100.0 * float(int(logits.argmax(dim=1)[0]) == pair.task_id)
                else:
                    out = run_padded(model, lq).output.float().clamp(0, 1)[0].cpu()
                    value = float(psnr(out, pair.gt))
            per_task.setdefault(tasks[pair.task_id], []).append(value)
    finally:
        model.train(was_training)
    result = {t: sum(v) / len(v) for t, v in per_task.items()}
    result["mean"] = sum(result.values()) / len(result) if result else math.nan
    return result


# --------------------------------------------------------------------------------------------------------------------
# Logs


class RunLog:
    """`log.csv` / `val.csv` (and TensorBoard when installed) of the main process; resuming drops rows after the
    checkpoint, so a killed run's log does not count steps twice."""

    def __init__(
        self, out: Path, tasks: Sequence[str], art: bool, resume_step: int | None, metric: str = "psnr"
    ) -> None:
        self.train_path, self.val_path = out / "log.csv", out / "val.csv"
        self.train_cols = ["step", "epoch", "lr", "loss", "pixel", "fft", "balance", "route", "identity"]
        self.train_cols += [f"loss/{t}" for t in tasks] + ([f"weight/{t}" for t in tasks] if art else [])
        self.train_cols += ["grad_norm", "it_per_s", "seconds"]
        self.val_cols = ["step", f"{metric}/mean"] + [f"{metric}/{t}" for t in tasks]
        for path, cols in ((self.train_path, self.train_cols), (self.val_path, self.val_cols)):
            kept: list[dict[str, str]] = []
            if resume_step is not None and path.is_file():
                with open(path, newline="") as f:
                    kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:
            pass

    def _append(self, path: Path, cols: list[str], row: dict[str, Any]) -> None:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=cols, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )

    def train_row(self, row: dict[str, Any]) -> None:
        self._append(self.train_path, self.train_cols, row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and not math.isnan(v):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def val_row(self, row: dict[str, Any]) -> None:
        self._append(self.val_path, self.val_cols, row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"val/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------------------------------------------------
# The run


def _train_info(config: TrainConfig, step: int, epoch: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "preset": config.preset,
        "tasks": config.tasks,
        "step": step,
        "epoch": epoch,
        "seed": config.seed,
        "reweight": config.reweight,
        "with_complexity": config.with_complexity,
        "stage": config.stage,
        **(extra or {}),
    }


def _check_resume(out: Path, config: TrainConfig) -> dict[str, Any]:
    """The training state to resume from, once the saved recipe and files are known to fit `config`."""
    if (out / "config.json").is_file():
        diff = recipe_changes(saved_config(out), config)
        if diff:
            raise TrainError(f"{out}: --resume with a different recipe ({', '.join(diff)} changed); start a new --out")
    state = checkpoint.load_state(out / checkpoint.STATE)
    weights = out / checkpoint.WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; cannot resume")
    info = checkpoint.read_train_info(weights)
    if info.get("step") != state["step"]:
        raise CheckpointError(
            f"{out}: {checkpoint.WEIGHTS} is from step {info.get('step')} but {checkpoint.STATE} from step "
            f"{state['step']} (the run was killed while saving); resume is not possible from these files"
        )
    return state


def warmup_warning(config: TrainConfig, total_steps: int, steps_per_epoch: int) -> str | None:
    """A line for a warm-up at least as long as the run (the rate would only climb, never anneal), else None."""
    unit = config.schedule_unit
    length = total_steps // steps_per_epoch if unit == "epoch" else total_steps
    if not config.warmup or config.warmup < length:
        return None
    return (
        f"the warm-up ({config.warmup} {unit}s) is not shorter than the run ({length} {unit}s): the learning rate "
        "only climbs and never anneals; lower --warmup"
    )


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    threads: int | None = None,
    on_event: EventSink | None = None,
    dataset: Any = None,
    val_pairs: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Run `config` into the folder `out` (see `irtool.train.checkpoint` for its files); returns the summary.

    The config's paths are stored absolute (against the working folder), so the run resumes from any folder.
    resume: continue the run in `out`; the recipe must be the saved one but for `RESUMABLE_FIELDS` (a new length
    is followed as `lr_at` describes).
    dataset / val_pairs: a prebuilt `TrainingSet` and validation pairs instead of those the config's sources make.
    Under torchrun every process calls this; only rank 0 writes files and emits events.
    """
    out = Path(out)
    emit = on_event or (lambda kind, info: None)
    if threads:
        torch.set_num_threads(threads)
    ctx = setup(device)
    try:
        run = _Run(absolute_paths(config), out, resume, ctx, emit, dataset, val_pairs)
        with _stop_after_the_step(ctx) as stop:
            run.train_steps(stop)
        return run.finish()
    finally:
        teardown(ctx)


class _StopRequest:
    """Set by Ctrl-C (SIGINT) during training: the run stops after the step it is in, once it is saved."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop at once, without saving
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def _stop_after_the_step(ctx: Dist) -> Iterator[_StopRequest]:
    """Ctrl-C during the steps asks for a stop after the current one instead of breaking into it (a step broken
    into leaves weights and optimiser state out of step). One process only: under DDP every process would have to
    agree on the step, so there Ctrl-C stops at once as before; and only where SIGINT still raises
    KeyboardInterrupt (the main thread, no handler of the caller's own)."""
    import signal
    import threading

    request = _StopRequest()
    ours = (
        ctx.world_size == 1
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if not ours:
        yield request
        return
    previous = signal.signal(signal.SIGINT, request.handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def _batches(loader: Any) -> Iterator[dict[str, Tensor]]:
    """The loader's batches; an irtool error raised in a loader worker comes back as its own one-line message
    (the DataLoader re-raises it with the worker's traceback as the message)."""
    from .data import workers_started

    with workers_started():  # the workers fork here (the first time; they persist)
        iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except IrtoolError as exc:
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            last = lines[-1] if lines else type(exc).__name__
            if str(exc).startswith("Caught ") and ": " in last:
                last = last.split(": ", 1)[1]  # drop "irtool.errors.ImageError: "
            raise type(exc)(last) from None
        yield batch


def _agree(ctx: Dist, problem: str | None) -> None:
    """Raise `problem` (found by rank 0) on every process, so that none is left waiting in a collective."""
    problem = broadcast_object(ctx, problem)
    if problem:
        raise TrainError(problem)


@dataclass
class _LogWindow:
    """The steps since the last log row: when it began, how many, and their summed losses."""

    start: float
    steps: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, stats: StepStats) -> None:
        self.steps += 1
        for k in ("loss", "pixel", "fft", "balance", "route", "identity"):
            self.sums[k] = self.sums.get(k, 0.0) + getattr(stats, k)


class _Run:
    """One call of `train` on one process: `__init__` builds the run in named steps (data, run folder, schedule,
    trainer, resumed state, logs), `train_steps` trains to the end, `finish` writes the summary."""

    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        resume: bool,
        ctx: Dist,
        emit: EventSink,
        dataset: Any,
        val_pairs: Sequence[Any] | None,
    ) -> None:
        from .data import make_loader

        self.config, self.out, self.ctx, self.emit = config, out, ctx, emit
        self.main = ctx.is_main
        self.net = build_network(config)
        router = load_router(config)
        self.dataset, self.val_pairs = self._data(router, dataset, val_pairs)
        self.has_val = bool(broadcast_object(ctx, bool(self.val_pairs)))
        ids = (s.task_id for s in self.dataset.sources)
        self.tasks = config.tasks or [f"task{i}" for i in range(1 + max(ids, default=0))]
        self.metric = val_metric(config)
        state = self._open_folder(resume)
        self._schedule()
        self.loader = make_loader(
            self.dataset, self.sampler, num_workers=config.num_workers, pin_memory=ctx.device.type == "cuda"
        )
        self.trainer = Trainer(config, self.net, ctx, self.tasks, router)
        self.model_for_val = restorer(self.net, self.trainer.router)
        self.step, self.best = 0, -math.inf
        self.best_step: int | None = None
        if state is not None:
            self._restore(state)
        self.first_step = self.step
        self.log: RunLog | None = None
        if self.main:
            checkpoint.write_json(out / "config.json", config.to_dict())
            self.log = RunLog(out, self.tasks, self.trainer.art is not None, self.step if resume else None, self.metric)
            self._announce()
        self.val_every = config.val_every or config.ckpt_every
        self.last_stats: StepStats | None = None
        self.last_val: dict[str, float] | None = None
        self.started = time.perf_counter()
        self.window = _LogWindow(self.started)

    # -- building

    def _data(self, router: CLIPRouter | None, dataset: Any, val_pairs: Sequence[Any] | None) -> tuple[Any, list[Any]]:
        """The training set and (on the main process) the validation pairs: given, or made from the sources."""
        views = router_views_spec(self.config, self.net, router)
        if dataset is None:
            from .sources import build_datasets

            dataset, built_val = build_datasets(self.config, with_val=self.main, views=views)
            val_pairs = built_val if val_pairs is None else val_pairs
        else:
            dataset.views = views
        return dataset, list(val_pairs or []) if self.main else []

    def _open_folder(self, resume: bool) -> dict[str, Any] | None:
        """The state to resume from (checked against the saved run), or None for a new run in an unused folder."""
        if resume:
            return _check_resume(self.out, self.config)
        busy = self.main and (self.out / checkpoint.STATE).exists()
        _agree(
            self.ctx,
            f"{self.out}: already holds a run; pass --resume to continue it or choose another --out" if busy else None,
        )
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        return None

    def _schedule(self) -> None:
        """The epoch sampler of this process, the steps per epoch and the run's length in steps."""
        from .data import EpochBatchSampler

        cfg, ctx = self.config, self.ctx
        self.sampler = EpochBatchSampler(
            len(self.dataset), cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size
        )
        self.spe = self.sampler.batches_per_epoch
        if self.spe == 0:
            raise TrainError(
                f"{len(self.dataset)} training samples are fewer than one batch of {cfg.batch_size} x "
                f"{ctx.world_size} process(es); add images or lower --batch-size"
            )
        self.total = cfg.total_steps(self.spe)

    def _restore(self, state: dict[str, Any]) -> None:
        """Weights, optimiser, Art and RNG states of the checkpoint; a new length must not end before its step."""
        from safetensors.torch import load_file

        self.net.load_state_dict(load_file(str(self.out / checkpoint.WEIGHTS)), strict=True)
        self.trainer.load_state_dict(state)
        self.step, self.best_step = state["step"], state.get("best_step")
        self.best = state["best"] if state.get("best") is not None else -math.inf
        if self.total < self.step:
            more = f"--epochs {math.ceil(self.step / self.spe)}" if self.config.epochs else f"--steps {self.step}"
            raise TrainError(
                f"{self.out}: the run is already at step {self.step}, past the end of this one (step {self.total}); "
                f"pass {more} or more"
            )
        rngs = state["rng"]
        if len(rngs) == self.ctx.world_size:
            checkpoint.restore_rng(rngs[self.ctx.rank], {"noise": self.trainer.noise})
        elif self.main:
            self.emit(
                "warning",
                {
                    "message": f"resumed with {self.ctx.world_size} processes instead of {len(rngs)}: "
                    "routing noise is reseeded, the run is no longer bit-exact"
                },
            )
        saved_total = state.get("total_steps", self.total)
        if saved_total != self.total and self.main:
            last_lr = state.get("schedule", {}).get("last_lr", math.nan)
            next_lr = lr_at(self.config, self.step, self.spe, self.total)
            self.emit(
                "warning",
                {
                    "message": f"resumed at step {self.step} with a run of {self.total} steps instead of "
                    f"{saved_total}: the learning rate follows the schedule of a run of {self.total} steps from here "
                    f"({last_lr:.3g} at step {self.step}, {next_lr:.3g} at step {self.step + 1})"
                },
            )

    def _announce(self) -> None:
        """The run's warnings, then the start event (main process)."""
        cfg = self.config
        warnings = list(getattr(self.dataset, "warnings", []))
        if cfg.stage == "router" and not cfg.init:
            warnings.append(
                "router stage without --init: the CLIP tower is random (pass the released router file or another "
                "router checkpoint to start from CLIP's weights)"
            )
        warnings += self.trainer.precision_notes
        warmup = warmup_warning(cfg, self.total, self.spe)
        warnings += [warmup] if warmup else []
        for warning in warnings:
            self.emit("warning", {"message": warning})
        self.emit(
            "start",
            {
                "out": str(self.out),
                "total_steps": self.total,
                "steps_per_epoch": self.spe,
                "start_step": self.step,
                "samples": len(self.dataset),
                "val_pairs": len(self.val_pairs),
                "tasks": self.tasks,
                "world_size": self.ctx.world_size,
                "device": str(self.ctx.device),
                "parameters": sum(p.numel() for p in self.net.parameters()),
                "trainable": sum(p.numel() for p in self.net.parameters() if p.requires_grad),
                "metric": self.metric,
            },
        )

    # -- training

    def train_steps(self, stop: _StopRequest | None = None) -> None:
        """Steps from the current one to the end, with logs, validations and checkpoints on their schedules; when
        `stop` is requested, the run is saved after the current step and `TrainInterrupted` raised."""
        cfg = self.config
        while self.step < self.total:
            epoch, offset = divmod(self.step, self.spe)
            self.sampler.set_position(epoch, offset)
            for batch in _batches(self.loader):
                lr = lr_at(cfg, self.step, self.spe, self.total)
                stats = self.trainer.step(batch, lr)
                if not math.isfinite(stats.loss):
                    raise TrainError(
                        f"step {self.step + 1}: the loss is {stats.loss}; lower --lr or enable --grad-clip"
                    )
                self.step += 1
                self.last_stats = stats
                self.window.add(stats)
                end = self.step == self.total
                if self.step % cfg.log_every == 0 or end:
                    self._log_step(stats, lr)
                if self.has_val and (self.step % self.val_every == 0 or end):
                    self._validate()
                if self.step % cfg.ckpt_every == 0 or end:
                    self._save()
                if stop is not None and stop.requested and not end:
                    self._stop()
                if self.step >= self.total:
                    break

    def _stop(self) -> None:
        """Save this step (unless its checkpoint was just written) so that a resume continues from it, then raise
        `TrainInterrupted`."""
        if self.step % self.config.ckpt_every:
            self._save()
        if self.log is not None:
            self.log.close()
        raise TrainInterrupted(self.step, self.out)

    def _log_step(self, stats: StepStats, lr: float) -> None:
        """A row of log.csv and a step event for the steps since the last one (main process)."""
        if self.log is None:
            return
        now, window, tasks = time.perf_counter(), self.window, self.tasks
        rate = window.steps / max(now - window.start, 1e-9)
        row: dict[str, Any] = {
            "step": self.step,
            "epoch": self.step / self.spe,
            "lr": lr,
            "it_per_s": rate,
            "seconds": now - self.started,
            "grad_norm": stats.grad_norm if stats.grad_norm is not None else "",
        }
        row.update({k: v / window.steps for k, v in window.sums.items()})
        row.update({f"loss/{t}": v for t, v in zip(tasks, stats.task_loss)})
        if stats.weights is not None:
            row.update({f"weight/{t}": v for t, v in zip(tasks, stats.weights)})
        self.log.train_row(row)
        self.emit(
            "step",
            {
                **row,
                "total_steps": self.total,
                "eta_s": (self.total - self.step) / max(rate, 1e-9),
                "tasks": tasks,
                "task_loss": stats.task_loss,
                "weights": stats.weights,
            },
        )
        self.window = _LogWindow(now)

    def _validate(self) -> None:
        """Validate (main process), keep the best weights, and share the result with every process."""
        result = None
        if self.log is not None:
            result = validate(
                self.model_for_val,
                self.val_pairs,
                self.tasks,
                self.ctx.device,
                self.trainer.autocast_dtype,
                self.metric,
            )
            self.log.val_row({"step": self.step, **{f"{self.metric}/{t}": v for t, v in result.items()}})
            if result["mean"] > self.best:
                self.best, self.best_step = result["mean"], self.step
                info = _train_info(self.config, self.step, self.step // self.spe, {f"val_{self.metric}": self.best})
                checkpoint.save_weights(self.out / checkpoint.BEST, self.net, info)
            self.emit(
                "val",
                {
                    "step": self.step,
                    "metric": self.metric,
                    "result": result,
                    "best": self.best,
                    "best_step": self.best_step,
                },
            )
        self.last_val = broadcast_object(self.ctx, result)
        self.best = broadcast_object(self.ctx, self.best)

    def _save(self) -> None:
        """The checkpoint of this step: weights first, then the training state (main process; all processes wait)."""
        cfg, step, spe = self.config, self.step, self.spe
        rngs = gather_objects(self.ctx, checkpoint.capture_rng({"noise": self.trainer.noise}))
        if self.main:
            checkpoint.save_weights(self.out / checkpoint.WEIGHTS, self.net, _train_info(cfg, step, step // spe))
            state = {
                "format": 1,
                "step": step,
                "epoch": step // spe,
                "total_steps": self.total,
                "steps_per_epoch": spe,
                "world_size": self.ctx.world_size,
                "rng": rngs,
                "metric": self.metric,
                "best": None if self.best == -math.inf else self.best,
                "best_step": self.best_step,
                "schedule": {
                    "unit": cfg.schedule_unit,
                    "warmup": cfg.warmup,
                    "length": cfg.schedule_length,
                    "lr": cfg.lr,
                    "lr_min": cfg.lr_min,
                    "last_lr": lr_at(cfg, max(0, step - 1), spe, self.total),
                },
                **self.trainer.state_dict(),
            }
            checkpoint.save_state(self.out / checkpoint.STATE, state)
            self.emit("checkpoint", {"step": step, "path": str(self.out / checkpoint.WEIGHTS)})
        barrier(self.ctx)

    def finish(self) -> dict[str, Any]:
        """The run's summary (written to summary.json and sent as the end event by the main process)."""
        last, tasks, out = self.last_stats, self.tasks, self.out
        summary = {
            "out": str(out),
            "steps": self.step,
            "epochs": self.step / self.spe,
            "trained_steps": self.step - self.first_step,
            "seconds": time.perf_counter() - self.started,
            "final_loss": last.loss if last else None,
            "final_task_loss": dict(zip(tasks, last.task_loss)) if last else None,
            "art_weights": dict(zip(tasks, last.weights)) if last and last.weights else None,
            "metric": self.metric,
            "val": self.last_val,
            "best": None if self.best == -math.inf else self.best,
            "best_step": self.best_step,
            "weights": str(out / checkpoint.WEIGHTS),
            "best_weights": str(out / checkpoint.BEST) if self.best_step is not None else None,
        }
        if self.log is not None:
            self.log.close()
            checkpoint.write_json(out / "summary.json", summary)
            self.emit("end", summary)
        return summary
