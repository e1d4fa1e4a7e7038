"""Art: active task reweighting (Wu, Jiang, Jiang, Liu, ACM MM 2024; code: github.com/Aitical/Art), for K tasks.

Every step, each task k present in the global batch gets its mean L1 `L_k`, and a score

    s_k = (L_k / L_last_k) · (log L_min_k / log L_k) / tau

where `L_last_k` is the task's moving average (EMA with coefficient `ema`) and `L_min_k` the smallest `L_k` seen so
far. A task whose loss is above its average, or above its best, scores higher. The weights are softmax(s) over the
tasks present (absent tasks weigh 0), computed without gradient, and the pixel loss is sum_k w_k · L_k. After the
weights are taken, every present task's average and minimum are updated. State starts at `init` (0.1) for every task.

Departures from the released `Rebalance_L1` / `IRModel_TransWeather_Rebalance` (three hard-coded task slots), each a
defect fix:
- every task's moving average is updated (the released code writes the third task's EMA into an unrelated attribute,
  so its average stays at 0.1 for ever);
- the state is keyed by task name, saved in the training state and restored on resume;
- with several processes, the per-task losses are summed over all of them before scoring (the loop all-reduces), so
  every process computes the same weights and the same state (the released code reduced them to rank 0 only);
- the score is only defined for 0 < L < 1 (log L = 0 at L = 1); losses are clamped to [1e-8, 0.999] inside the
  score (the released code has no guard), which only matters for a diverging run.
The logarithm base cancels in the ratio of logs; base 10 as released.

Imports torch only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

_LOW, _HIGH = 1e-8, 0.999


class ArtReweighter:
    """Per-task weights from the running statistics of per-task losses. All values are float64 on the CPU."""

    def __init__(self, tasks: Sequence[str], tau: float = 0.1, ema: float = 0.01, init: float = 0.1) -> None:
        self.tasks = list(tasks)
        self.tau = float(tau)
        self.ema = float(ema)
        self.init = float(init)
        self.last = torch.full((len(self.tasks),), self.init, dtype=torch.float64)
        self.minimum = torch.full((len(self.tasks),), self.init, dtype=torch.float64)
        self.updates = torch.zeros(len(self.tasks), dtype=torch.long)

    def scores(self, losses: Tensor, present: Tensor) -> Tensor:
        """(K,) scores s_k for the present tasks, -inf for the others. losses: (K,) mean L1 per task."""
        cur = losses.detach().to("cpu", torch.float64).clamp(_LOW, _HIGH)
        best = self.minimum.clamp(_LOW, _HIGH)
        s = (cur / self.last) * (torch.log10(best) / torch.log10(cur)) / self.tau
        return torch.where(present.to("cpu"), s, torch.tensor(-math.inf, dtype=torch.float64))

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        """(K,) softmax weights over the present tasks (0 for absent ones), float64, no gradient."""
        present = present.to("cpu", torch.bool)
        if not bool(present.any()):
            return torch.zeros(len(self.tasks), dtype=torch.float64)
        return torch.softmax(self.scores(losses, present), dim=0)

    def update(self, losses: Tensor, present: Tensor) -> None:
        """Fold this step's per-task losses into the moving averages and minima of the present tasks."""
        cur = losses.detach().to("cpu", torch.float64)
        present = present.to("cpu", torch.bool)
        self.last = torch.where(present, self.ema * cur + (1.0 - self.ema) * self.last, self.last)
        self.minimum = torch.where(present, torch.minimum(self.minimum, cur), self.minimum)
        self.updates += present.long()

    def step(self, losses: Tensor, present: Tensor) -> Tensor:
        """Weights for this step (from the state before it), then update the state; what the loop calls."""
        w = self.weights(losses, present)
        self.update(losses, present)
        return w

    # -- persistence, by task name so that a resumed run with the same tasks in another order still matches

    def state_dict(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "ema": self.ema,
            "init": self.init,
            "tasks": {
                t: {"last": float(self.last[i]), "min": float(self.minimum[i]), "updates": int(self.updates[i])}
                for i, t in enumerate(self.tasks)
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["tasks"]
        for i, t in enumerate(self.tasks):
            if t in saved:
                self.last[i] = saved[t]["last"]
                self.minimum[i] = saved[t]["min"]
                self.updates[i] = saved[t]["updates"]
