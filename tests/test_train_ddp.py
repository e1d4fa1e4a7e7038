"""Two processes (gloo on CPU) train exactly like one process on the combined batch.

The routers' noise is set to zero here so that both setups route every image identically (with noise, each process
draws its own noise stream and the expert choices legitimately differ); the balance loss is then undefined (it divides
by the noise scale) and left out of this comparison; a second phase checks that full steps with noise and balance
loss keep both processes' weights identical.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import make_images, random_moce
from train_helpers import micro_config

from irtool.archs.moce_ir import MoCEIRConfig
from irtool.devices.processes import Dist, setup, teardown
from irtool.train.loop import Trainer

CONFIG = MoCEIRConfig(
    dim=8, num_blocks=(1, 1, 1, 1), num_dec_blocks=(1, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2)
)
TASKS = ["noise", "lowlight"]
WORLD = 2
SEED = 19  # a network whose routers split this batch so that some experts run on one process only (checked below)


def make_net() -> torch.nn.Module:
    net = random_moce(CONFIG, seed=SEED)
    for layer in net.moce_layers:
        layer.routing.noise_std = 0.0
    return net.train()


def make_batch() -> dict[str, torch.Tensor]:
    lq = make_images(6, 32, 32, seed=0)
    return {"lq": lq, "gt": (0.8 * lq + 0.1).clamp(0, 1), "task": torch.tensor([0, 1, 1, 0, 1, 1])}


def shard(batch, rank: int, world: int) -> dict[str, torch.Tensor]:
    return {k: v[rank::world] for k, v in batch.items()}


def train_config():
    return micro_config(fft_weight=0.1, reweight="art", balance_weight=0.0, grad_clip=0.5)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    ctx = setup("cpu")
    try:
        net = make_net()
        trainer = Trainer(train_config(), net, ctx, TASKS)
        stats = trainer.forward_backward(shard(make_batch(), rank, WORLD))
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}

        # Phase 2: real steps with routing noise and the balance loss, no find_unused_parameters.
        for layer in net.moce_layers:
            layer.routing.noise_std = 1.0 / len(layer.experts)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.config = dataclasses.replace(trainer.config, balance_weight=0.01)
        for _i in range(2):
            trainer.step(shard(make_batch(), rank, WORLD), lr=1e-3)
        weights = {n: p.detach().clone() for n, p in net.named_parameters()}
        torch.save(
            {"grads": grads, "stats": dataclasses.asdict(stats), "weights": weights}, Path(out) / f"rank{rank}.pt"
        )
    finally:
        teardown(ctx)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_gradients_equal_one_process_on_the_combined_batch(tmp_path):
    batch = make_batch()
    # The routing both setups will use; the test only means something if experts are used unevenly.
    with torch.no_grad():
        experts = make_net().eval().run(batch["lq"]).routing.experts[..., 0]  # (B, layers)
    per_rank = [{(l, int(e)) for row in experts[r::WORLD] for l, e in enumerate(row)} for r in range(WORLD)]
    assert per_rank[0] ^ per_rank[1], "some expert must run on one process only"
    layers, num_experts = experts.shape[1], 4
    unused = {(l, e) for l in range(layers) for e in range(num_experts)} - per_rank[0] - per_rank[1]
    assert unused, "some expert must be unused by the whole batch"

    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    torch.set_num_threads(1)
    net = make_net()
    single = Trainer(train_config(), net, Dist(), TASKS)
    stats = single.forward_backward(batch)
    # float32 losses of a 3-image and a 6-image batch differ in the last bits; Art's 1/tau = 10 amplifies that
    assert ranks[0]["stats"]["weights"] == pytest.approx(stats.weights, rel=1e-5)
    assert ranks[0]["stats"]["task_loss"] == pytest.approx(stats.task_loss, rel=1e-6)
    same = [{k: v for k, v in ranks[r]["stats"].items() if k != "balance"} for r in range(WORLD)]  # nan here
    assert same[0] == same[1]

    names = {n for n, _ in net.named_parameters()}
    checked_sparse = 0
    for name, p in net.named_parameters():
        for r in range(WORLD):
            got = ranks[r]["grads"][name]
            if p.grad is None:
                assert got is None, f"{name}: unused by the whole batch, yet has a gradient on rank {r}"
            else:
                assert got is not None, name
                torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-7, msg=name)
        if ".experts." in name and p.grad is not None:
            checked_sparse += 1
    assert checked_sparse and len(names) == len(ranks[0]["grads"])

    for name in names:  # DDP keeps the processes' weights identical through real steps with sparse experts
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
