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
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, IrtoolError
from ..tiling import run_padded
from . import checkpoint, losses
from .distributed import Dist, all_reduce_sum, barrier, broadcast_object, gather_objects, setup, teardown
from .models import MoCEForward, build_network, forward_module, load_router, restorer, router_views_spec
from .presets import RUNTIME_FIELDS, TrainConfig
from .reweight import ArtReweighter

#: callback for progress events: (kind, info) with kind in start, step, val, checkpoint, end
EventSink = Callable[[str, dict[str, Any]], None]


class TrainError(IrtoolError):
    """A training run cannot start or continue (bad data, a resume that does not fit, ...)."""


# --------------------------------------------------------------------------------------------------------------------
# Learning rate


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Linear warm-up then cosine to `lr_min`, in epochs (constant within an epoch) or steps.

    Warm-up unit u (0-based) gets lr·(u+1)/warmup, so the last warm-up unit reaches lr. The official schedule
    (pl_bolts' LinearWarmupCosineAnnealingLR stepped per epoch, warmup_start_lr 0) starts at lr·u/(warmup-1), i.e. it
    trains the whole first epoch at lr 0; the rest, from the end of the warm-up on, is the same curve.
    """
    if config.schedule_unit == "epoch":
        unit, length = step // steps_per_epoch, config.schedule_length or config.epochs
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
    task_loss: list[float]  # per task, nan when absent from the global batch
    task_count: list[int]
    weights: list[float] | None  # Art's weights, None without Art
    grad_norm: float | None = None


class Trainer:
    """Network, optimiser, Art state and noise generator of one process; `step(batch, lr)` trains on one batch.

    router: LoRA-IR's frozen router for the network stages (it rides along on the device, outside the optimiser)."""

    def __init__(
        self, config: TrainConfig, net: nn.Module, ctx: Dist, tasks: Sequence[str], router: nn.Module | None = None
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.tasks = list(tasks)
        self.device = ctx.device
        self.net = net.to(self.device).train()
        self.router = router.to(self.device).eval() if router is not None else None
        self.channels_last = config.channels_last if config.channels_last is not None else self.device.type == "cuda"
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None

        self.forward_module = forward_module(self.net, self.router, config, distributed=ctx.enabled)
        moce = self.forward_module if isinstance(self.forward_module, MoCEForward) else None
        self.groups = moce.groups if moce is not None else []  # MoCE-IR's (layer, expert) parameter groups
        self.num_experts = moce.num_experts if moce is not None else 0
        module: nn.Module = self.forward_module
        if ctx.enabled:
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # The only buffers are the constant expert complexities: no need to re-send them every forward.
            # (torch >= 2.13 renamed the option.)
            no_sync = (
                "forward_sync_buffers"
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers"
            )
            module = DistributedDataParallel(
                module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,
                **{no_sync: False},
            )
        if config.compile:
            module = torch.compile(module, dynamic=False)
        self.module = module

        params = [p for p in self.net.parameters() if p.requires_grad]
        self.readout = moce.readout if moce is not None else None
        if self.readout is not None:
            self.readout.to(self.device)
            params += list(self.readout.parameters())
        self.optimizer = torch.optim.AdamW(
            params,
            lr=config.lr,
            betas=tuple(config.betas),
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

    # -- the step

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def forward_backward(self, batch: dict[str, Tensor]) -> StepStats:
        """Losses and gradients for one batch (this process's share of the global batch); no parameter update."""
        cfg, ctx, K = self.config, self.ctx, len(self.tasks)
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
        fft = losses.fft_l1(out, gt) if cfg.fft_weight else None

        # One all-reduce for everything global: per-task sums and counts, FFT sum, balance loss, expert usage.
        sums, counts = losses.task_sums(pixel, task, K)
        usage = torch.zeros(len(self.groups), dtype=torch.float64, device=self.device)
        if experts is not None and self.groups:
            flat = experts.reshape(experts.shape[0], experts.shape[1], -1)
            layer = torch.arange(flat.shape[1], device=flat.device).view(1, -1, 1)
            usage.index_add_(
                0,
                (layer * self.num_experts + flat).flatten(),
                torch.ones(flat.numel(), dtype=torch.float64, device=self.device),
            )
        nothing = torch.zeros((), dtype=torch.float64, device=self.device)
        extras = torch.stack(
            [
                fft.detach().double().sum() if fft is not None else nothing,
                aux.detach().double() if aux is not None else nothing,
                route.detach().double().sum() if route is not None else nothing,
            ]
        )
        packed = all_reduce_sum(ctx, torch.cat([sums, counts.to(self.device), extras, usage]))
        sums, counts = packed[:K], packed[K : 2 * K]
        fft_sum, aux_sum, route_sum = packed[2 * K], packed[2 * K + 1], packed[2 * K + 2]
        usage = packed[2 * K + 3 :]
        n_total = counts.sum()
        present = counts > 0
        task_mean = sums / counts.clamp_min(1)

        if self.art is not None:
            w = self.art.step(task_mean.cpu(), present.cpu()).to(self.device)
            coeff = (w / counts.clamp_min(1))[task]
            pixel_value = float((w * task_mean).sum())
        else:
            w = None
            coeff = torch.full_like(pixel, 1.0, dtype=torch.float64) / n_total
            pixel_value = float(sums.sum() / n_total)
        loss = (coeff.to(pixel.dtype) * pixel).sum() * ctx.world_size
        value = pixel_value
        fft_value = float(fft_sum / n_total) if fft is not None else 0.0
        if fft is not None:
            loss = loss + cfg.fft_weight * fft.sum() * (ctx.world_size / float(n_total))
            value += cfg.fft_weight * fft_value
        balance_value = float(aux_sum) / ctx.world_size
        if cfg.balance_weight and aux is not None:
            loss = loss + cfg.balance_weight * aux.float()
            value += cfg.balance_weight * balance_value
        route_value = float(route_sum / n_total) if route is not None else 0.0
        if route is not None:
            loss = loss + cfg.route_task_weight * route.sum() * (ctx.world_size / float(n_total))
            value += cfg.route_task_weight * route_value
        if zero is not None:
            loss = loss + zero
        loss.backward()

        if ctx.enabled:
            # Experts no image of any process chose: back to "no gradient", as on one process (see module docstring).
            for g in (usage == 0).nonzero().flatten().tolist():
                for p in self.groups[g]:
                    p.grad = None

        return StepStats(
            loss=value,
            pixel=pixel_value,
            fft=fft_value,
            balance=balance_value,
            route=route_value,
            task_loss=[float(x) if c > 0 else math.nan for x, c in zip(task_mean.tolist(), counts.tolist())],
            task_count=[int(c) for c in counts.tolist()],
            weights=None if w is None else w.tolist(),
        )

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
    autocast_dtype=None,
    metric: str = "psnr",
) -> dict[str, float]:
    """Per task and averaged over tasks: mean PSNR (RGB, data range 1, outputs clamped, as MoCE-IR's test; routing
    deterministic), or the percentage of images a router classifies as their task."""
    from ..evaluation.metrics import psnr

    was_training = model.training
    model.eval()
    per_task: dict[str, list[float]] = {}
    try:
        for pair in pairs:
            lq = pair.lq.unsqueeze(0).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
                if metric == "accuracy":
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
        self.train_cols = ["step", "epoch", "lr", "loss", "pixel", "fft", "balance", "route"]
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
    saved_config = out / "config.json"
    if saved_config.is_file():
        saved = TrainConfig.from_dict(json.loads(saved_config.read_text())).to_dict()
        diff = [k for k, v in config.to_dict().items() if saved.get(k) != v and k not in RUNTIME_FIELDS]
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

    dataset / val_pairs: a prebuilt `TrainingSet` and validation pairs instead of those the config's sources make.
    Under torchrun every process calls this; only rank 0 writes files and emits events.
    """
    out = Path(out)
    emit = on_event or (lambda kind, info: None)
    if threads:
        torch.set_num_threads(threads)
    ctx = setup(device)
    try:
        return _run(config, out, resume, ctx, emit, dataset, val_pairs)
    finally:
        teardown(ctx)


def _batches(loader: Any):
    """The loader's batches; an irtool error raised in a loader worker comes back as its own one-line message
    (the DataLoader re-raises it with the worker's traceback as the message)."""
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


def _run(
    config: TrainConfig, out: Path, resume: bool, ctx: Dist, emit: EventSink, dataset, val_pairs
) -> dict[str, Any]:
    from .data import EpochBatchSampler, make_loader

    main = ctx.is_main
    net = build_network(config)
    router = load_router(config)
    views = router_views_spec(config, net, router)
    if dataset is None:
        from .sources import build_datasets

        dataset, built_val = build_datasets(config, with_val=main, views=views)
        val_pairs = built_val if val_pairs is None else val_pairs
    else:
        dataset.views = views
    val_pairs = list(val_pairs or []) if main else []
    has_val = bool(broadcast_object(ctx, bool(val_pairs)))
    tasks = config.tasks or [f"task{i}" for i in range(1 + max((s.task_id for s in dataset.sources), default=0))]
    metric = val_metric(config)

    state = None
    if resume:
        state = _check_resume(out, config)
    else:
        _agree(
            ctx,
            f"{out}: already holds a run; pass --resume to continue it or choose another --out"
            if main and (out / checkpoint.STATE).exists()
            else None,
        )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / "config.json", config.to_dict())

    sampler = EpochBatchSampler(
        len(dataset), config.batch_size, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    spe = sampler.batches_per_epoch
    if spe == 0:
        raise TrainError(
            f"{len(dataset)} training samples are fewer than one batch of {config.batch_size} x {ctx.world_size} "
            "process(es); add images or lower --batch-size"
        )
    total = config.epochs * spe if config.epochs is not None else config.steps
    loader = make_loader(dataset, sampler, num_workers=config.num_workers, pin_memory=ctx.device.type == "cuda")

    trainer = Trainer(config, net, ctx, tasks, router)
    model_for_val = restorer(net, trainer.router)
    step, best, best_step = 0, -math.inf, None
    if state is not None:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(out / checkpoint.WEIGHTS)), strict=True)
        trainer.load_state_dict(state)
        step, best_step = state["step"], state.get("best_step")
        best = state["best"] if state.get("best") is not None else -math.inf
        rngs = state["rng"]
        if len(rngs) == ctx.world_size:
            checkpoint.restore_rng(rngs[ctx.rank], {"noise": trainer.noise})
        elif main:
            emit(
                "warning",
                {
                    "message": f"resumed with {ctx.world_size} processes instead of {len(rngs)}: "
                    "routing noise is reseeded, the run is no longer bit-exact"
                },
            )
    log = RunLog(out, tasks, trainer.art is not None, step if state is not None else None, metric) if main else None
    val_every = config.val_every or config.ckpt_every

    if main:
        for warning in getattr(dataset, "warnings", []):
            emit("warning", {"message": warning})
        if config.stage == "router" and not config.init:
            emit(
                "warning",
                {
                    "message": "router stage without --init: the CLIP tower is random (pass the released "
                    "router file or another router checkpoint to start from CLIP's weights)"
                },
            )
        emit(
            "start",
            {
                "out": str(out),
                "total_steps": total,
                "steps_per_epoch": spe,
                "start_step": step,
                "samples": len(dataset),
                "val_pairs": len(val_pairs),
                "tasks": tasks,
                "world_size": ctx.world_size,
                "device": str(ctx.device),
                "parameters": sum(p.numel() for p in net.parameters()),
                "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
                "metric": metric,
            },
        )

    def save(step: int) -> None:
        rngs = gather_objects(ctx, checkpoint.capture_rng({"noise": trainer.noise}))
        if main:
            checkpoint.save_weights(out / checkpoint.WEIGHTS, net, _train_info(config, step, step // spe))
            checkpoint.save_state(
                out / checkpoint.STATE,
                {
                    "format": 1,
                    "step": step,
                    "epoch": step // spe,
                    "total_steps": total,
                    "steps_per_epoch": spe,
                    "world_size": ctx.world_size,
                    "rng": rngs,
                    "metric": metric,
                    "best": None if best == -math.inf else best,
                    "best_step": best_step,
                    "schedule": {
                        "unit": config.schedule_unit,
                        "warmup": config.warmup,
                        "length": config.schedule_length,
                        "lr": config.lr,
                        "lr_min": config.lr_min,
                        "last_lr": lr_at(config, max(0, step - 1), spe, total),
                    },
                    **trainer.state_dict(),
                },
            )
            emit("checkpoint", {"step": step, "path": str(out / checkpoint.WEIGHTS)})
        barrier(ctx)

    started = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    sums: dict[str, float] = {}
    first_step = step
    last_stats: StepStats | None = None
    last_val: dict[str, float] | None = None
    while step < total:
        epoch, offset = divmod(step, spe)
        sampler.set_position(epoch, offset)
        for batch in _batches(loader):
            lr = lr_at(config, step, spe, total)
            stats = trainer.step(batch, lr)
            if not math.isfinite(stats.loss):
                raise TrainError(f"step {step + 1}: the loss is {stats.loss}; lower --lr or enable --grad-clip")
            step += 1
            last_stats = stats
            window_steps += 1
            for k, v in (
                ("loss", stats.loss),
                ("pixel", stats.pixel),
                ("fft", stats.fft),
                ("balance", stats.balance),
                ("route", stats.route),
            ):
                sums[k] = sums.get(k, 0.0) + v
            if main and (step % config.log_every == 0 or step == total):
                now = time.perf_counter()
                rate = window_steps / max(now - window_start, 1e-9)
                row = {
                    "step": step,
                    "epoch": step / spe,
                    "lr": lr,
                    "it_per_s": rate,
                    "seconds": now - started,
                    "grad_norm": stats.grad_norm if stats.grad_norm is not None else "",
                }
                row.update({k: v / window_steps for k, v in sums.items()})
                row.update({f"loss/{t}": v for t, v in zip(tasks, stats.task_loss)})
                if stats.weights is not None:
                    row.update({f"weight/{t}": v for t, v in zip(tasks, stats.weights)})
                log.train_row(row)
                emit(
                    "step",
                    {
                        **row,
                        "total_steps": total,
                        "eta_s": (total - step) / max(rate, 1e-9),
                        "tasks": tasks,
                        "task_loss": stats.task_loss,
                        "weights": stats.weights,
                    },
                )
                window_start, window_steps, sums = now, 0, {}
            if has_val and (step % val_every == 0 or step == total):
                result = None
                if main:
                    result = validate(model_for_val, val_pairs, tasks, ctx.device, trainer.autocast_dtype, metric)
                    log.val_row({"step": step, **{f"{metric}/{t}": v for t, v in result.items()}})
                    if result["mean"] > best:
                        best, best_step = result["mean"], step
                        checkpoint.save_weights(
                            out / checkpoint.BEST, net, _train_info(config, step, step // spe, {f"val_{metric}": best})
                        )
                    emit(
                        "val", {"step": step, "metric": metric, "result": result, "best": best, "best_step": best_step}
                    )
                last_val = broadcast_object(ctx, result)
                best = broadcast_object(ctx, best)
            if step % config.ckpt_every == 0 or step == total:
                save(step)
            if step >= total:
                break

    summary = {
        "out": str(out),
        "steps": step,
        "epochs": step / spe,
        "trained_steps": step - first_step,
        "seconds": time.perf_counter() - started,
        "final_loss": last_stats.loss if last_stats else None,
        "final_task_loss": dict(zip(tasks, last_stats.task_loss)) if last_stats else None,
        "art_weights": dict(zip(tasks, last_stats.weights)) if last_stats and last_stats.weights else None,
        "metric": metric,
        "val": last_val,
        "best": None if best == -math.inf else best,
        "best_step": best_step,
        "weights": str(out / checkpoint.WEIGHTS),
        "best_weights": str(out / checkpoint.BEST) if best_step is not None else None,
    }
    if main:
        log.close()
        checkpoint.write_json(out / "summary.json", summary)
        emit("end", summary)
    return summary
