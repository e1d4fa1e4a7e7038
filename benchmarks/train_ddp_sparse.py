"""DDP with sparse experts: `find_unused_parameters=True` versus irtool's zero term, side by side in one run.

    python benchmarks/train_ddp_sparse.py [--procs 2] [--steps 20] [--size 64] [--batch 4] [--config tiny]

Spawns `--procs` gloo processes on this machine (CPU). Each builds two identical MoCE-IR replicas and alternates
training steps between them: (a) DDP(find_unused_parameters=True), the official recipe's strategy; (b)
DDP(find_unused_parameters=False) with 0 · sum(expert parameters) added to the loss and the gradients of experts no
process chose reset to None afterwards (what `irtool train` does). Both compute L1 + 0.01 · balance loss on the same
batches. Prints the median forward+backward time of each and their ratio. On GPUs with NCCL the difference is
larger in principle (find_unused traverses the autograd graph each step and delays the buckets holding unused
parameters); this script measures what this machine can show.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel


def _worker(rank: int, args: argparse.Namespace, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.procs)
    torch.set_num_threads(args.threads)
    from irtool.archs.moce_ir import VARIANTS, MoCEIR
    from irtool.train.models import MoCEForward

    def replica(zero_term: bool, find_unused: bool):
        torch.manual_seed(0)
        net = MoCEIR(VARIANTS[args.config]).train()
        module = DistributedDataParallel(MoCEForward(net, zero_term=zero_term), find_unused_parameters=find_unused)
        return net, module, torch.optim.AdamW(net.parameters(), lr=1e-4)

    variants = {"find_unused": replica(False, True), "zero_term": replica(True, False)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    gen = torch.Generator().manual_seed(rank)
    for step in range(args.steps + 2):
        lq = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
        batch = {"lq": lq}
        for name, (_net, module, opt) in variants.items():
            dist.barrier()
            start = time.perf_counter()
            out, aux, experts, zero = module(batch, None)
            loss = (out - lq).abs().mean() + 0.01 * aux
            if zero is not None:
                loss = loss + zero
            loss.backward()
            if name == "zero_term":
                usage = torch.zeros(len(module.module.groups))
                flat = experts.reshape(experts.shape[0], experts.shape[1], -1)
                layer = torch.arange(flat.shape[1]).view(1, -1, 1)
                usage.index_add_(0, (layer * module.module.num_experts + flat).flatten(), torch.ones(flat.numel()))
                dist.all_reduce(usage)
                for g in (usage == 0).nonzero().flatten().tolist():
                    for p in module.module.groups[g]:
                        p.grad = None
            elapsed = time.perf_counter() - start
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= 2:  # warm-up steps are not timed
                times[name].append(elapsed)
    if rank == 0:
        results.update({k: statistics.median(v) for k, v in times.items()})
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", default="tiny")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(args, port, results), nprocs=args.procs, join=True)
        a, b = results["find_unused"], results["zero_term"]
    print(
        f"{args.procs} gloo processes, MoCE-IR {args.config}, batch {args.batch} x {args.size}px, "
        f"{args.steps} timed steps (median forward+backward):"
    )
    print(f"  find_unused_parameters=True : {a * 1000:8.1f} ms")
    print(f"  zero term + unused reset    : {b * 1000:8.1f} ms")
    print(f"  ratio find_unused / zero term: {a / b:.3f}")


if __name__ == "__main__":
    main()
