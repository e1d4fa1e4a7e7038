"""Training pairs: task-labelled sources, repeat factors, patches, augmentation, and the epoch sampler.

Every sample is a pure function of (seed, epoch, index): its crop, its flip/rotation and the noise of a synthetic
degradation come from `np.random.default_rng([seed, epoch, index])`. So the data a run sees does not depend on the
number of loader workers, and resuming at step s only needs s (the sampler skips the batches already seen).

The sampler shards one seeded permutation per epoch across processes the way `DistributedSampler` does (rank r takes
positions r, r + world, ...), so the images of global batch j are the same whatever the number of processes: with N
processes of batch b they are the positions [j·N·b, (j+1)·N·b) of the epoch's permutation, as for one process of
batch N·b.

Imports numpy and torch; images are read by `irtool.images.files` and degraded by `irtool.degrade`.
"""

from __future__ import annotations

import bisect
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ImageError
from ..images import tensors

#: (clean HxWx3 float32 in [0, 1], rng) -> degraded HxWx3 float32 in [0, 1]
Degrader = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: path -> HxWx3 float32 RGB in [0, 1]
Reader = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class Pair:
    """One training example: the clean image and, for real pairs, the degraded one (a path or an array)."""

    gt: Path | np.ndarray
    lq: Path | np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.gt.name if isinstance(self.gt, Path) else "<array>"


@dataclass
class Source:
    """The pairs of one task, degraded on the fly by `degrade` when they are clean images only."""

    task_id: int
    pairs: list[Pair]
    repeat: int = 1
    degrade: Degrader | None = None


# --------------------------------------------------------------------------------------------------------------------
# Augmentation


def dihedral(image: np.ndarray, mode: int) -> np.ndarray:
    """One of the 8 flips/rotations of an HxWxC array: mode = 4·flip + quarter turns (0 is the identity)."""
    if mode >= 4:
        image = image[::-1]
    return np.rot90(image, k=mode % 4, axes=(0, 1))


def augment_mode(rng: np.random.Generator, augment: str) -> int:
    if augment == "none":
        return 0
    if augment == "official":  # MoCE-IR/PromptIR `random_augmentation`: one of 7 non-identity modes, always
        return int(rng.integers(1, 8))
    return int(rng.integers(0, 8))


def random_crop(images: Sequence[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random size x size window of each image (reflect-padded first when an image is smaller)."""
    h, w = images[0].shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        # reflection needs the image larger than the padding; else mirror with the edge repeated
        images = [
            np.pad(im, ((0, ph), (0, pw), (0, 0)), mode="reflect")
            if ph < h and pw < w
            else np.pad(im, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
            for im in images
        ]
        h, w = images[0].shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return [im[top : top + size, left : left + size] for im in images]


def to_tensor(image: np.ndarray) -> Tensor:
    """HxWx3 float array -> 3xHxW float32 tensor (irtool.images.tensors' layout change)."""
    return tensors.to_tensor(np.asarray(image, dtype=np.float32))


# --------------------------------------------------------------------------------------------------------------------
# The dataset


#: Synthetic degradations are applied to a window this many patch sizes wide (at most the photo) around the patch.
CONTEXT_FACTOR = 4


class TrainingSet(torch.utils.data.Dataset):
    """Task-labelled training patches. Indexed by (epoch, index); `len` is the length of the repeated list."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        patch_size: int,
        augment: str = "dihedral",
        seed: int = 0,
        reader: Reader | None = None,
        views: tuple[int, int] | None = None,
    ) -> None:
        self.sources = [s for s in sources if s.pairs]
        self.patch_size = patch_size
        self.augment = augment
        self.seed = seed
        self.reader = reader
        #: (size, tiles): also give each sample LoRA-IR's CLIP views of its degraded patch (uint8, made here so that
        #: loader workers do the PIL resizing, as the official `AllInOneCLIPDataset` does)
        self.views = views
        #: one-line notes for the run's log (what the registry noticed while pairing, a large validation hold-out)
        self.warnings: list[str] = []
        self.offsets = [0]
        for s in self.sources:
            self.offsets.append(self.offsets[-1] + len(s.pairs) * s.repeat)

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[Source, Pair]:
        k = bisect.bisect_right(self.offsets, index) - 1
        source = self.sources[k]
        return source, source.pairs[(index - self.offsets[k]) % len(source.pairs)]

    def _load(self, image: Path | np.ndarray) -> np.ndarray:
        if isinstance(image, np.ndarray):
            return image
        if self.reader is None:
            raise ValueError("TrainingSet: pairs are paths but no image reader was given")
        return self.reader(image)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        source, pair = self.locate(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        gt = self._load(pair.gt)
        images = [gt] if pair.lq is None else [self._load(pair.lq), gt]
        if pair.lq is not None and images[0].shape[:2] != gt.shape[:2]:
            raise ImageError(
                f"{pair.lq}: {images[0].shape[1]}x{images[0].shape[0]} px but its clean image {pair.gt} is "
                f"{gt.shape[1]}x{gt.shape[0]} px"
            )
        if pair.lq is None and source.degrade is not None:
            # Degrade a wider window than the patch, upright, then cut the patch from it: rain streaks, blur that
            # reaches in from outside the patch and the haze depth ramp then look as they do on whole photos
            # (degrading the 64-px patch itself made them a different, patch-sized degradation).
            context = min(self.patch_size * CONTEXT_FACTOR, max(gt.shape[:2]))
            window = np.ascontiguousarray(random_crop([gt], context, rng)[0], dtype=np.float32)
            images = [source.degrade(window, rng), window]
        images = random_crop(images, self.patch_size, rng)
        mode = augment_mode(rng, self.augment)
        images = [dihedral(im, mode) for im in images]
        lq, gt = images if len(images) == 2 else images * 2  # to_tensor makes the contiguous float32 copies
        sample: dict[str, Any] = {"lq": to_tensor(lq), "gt": to_tensor(gt), "task": source.task_id}
        if self.views is not None:
            from ..archs.clip_router import router_views_uint8

            sample["views"] = router_views_uint8(sample["lq"][None], *self.views)[0]
        return sample


# --------------------------------------------------------------------------------------------------------------------
# Sampling


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of (epoch, index) keys for one process: a seeded permutation per epoch, sharded across processes,
    incomplete batches dropped. `set_position(epoch, batch)` starts the next iteration mid-epoch (for resume)."""

    def __init__(self, size: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = size // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start = epoch, batch

    def permutation(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return torch.randperm(self.size, generator=gen)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        mine = self.permutation(self.epoch)[self.rank : self.world_size * self.per_rank : self.world_size].tolist()
        b = self.batch_size
        for j in range(self.start, self.batches_per_epoch):
            yield [(self.epoch, i) for i in mine[j * b : (j + 1) * b]]


def collate(samples: list[dict[str, Any]]) -> dict[str, Tensor]:
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "task"}
    batch["task"] = torch.tensor([s["task"] for s in samples], dtype=torch.long)
    return batch


def _worker_init(_: int) -> None:
    # Workers decode and degrade; one thread each keeps them from fighting the training process for cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the training process decides when to stop (after saving its step),
    # and a worker that died of it first would fail the batch that step is waiting for
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # OpenCV's threads are limited before the fork (`workers_started`), never here: its thread pool does not survive
    # a fork, and reconfiguring it in the child waits forever for threads that only the parent has


@contextmanager
def workers_started() -> Iterator[None]:
    """Around `iter(loader)`, where the loader forks its workers: OpenCV runs single-threaded while they are forked
    (so they inherit a pool of one and decode and degrade on their own thread), then as before in this process."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency
        yield
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def make_loader(
    dataset: TrainingSet, sampler: EpochBatchSampler, *, num_workers: int, pin_memory: bool
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers else None,
    )


@dataclass
class ValPair:
    """A fixed validation pair (3xHxW float32 tensors) and its task id."""

    lq: Tensor
    gt: Tensor
    task_id: int
    name: str
