"""Art's active reweighting: the weights equal the published formula, step by step, for K tasks."""

from __future__ import annotations

import math

import pytest
import torch

from irtool.train.reweight import ArtReweighter


def expected_weights(losses, last, best, tau, present):
    """The score s_k = (L_k / L_last_k) · (log10 L_min_k / log10 L_k) / tau, softmax over present tasks (by hand)."""
    scores = [
        (l / la) * (math.log10(m) / math.log10(l)) / tau if p else None
        for l, la, m, p in zip(losses, last, best, present)
    ]
    top = max(s for s in scores if s is not None)
    exps = [math.exp(s - top) if s is not None else 0.0 for s in scores]
    return [e / sum(exps) for e in exps]


def test_weights_follow_the_formula_over_a_loss_sequence_with_absent_tasks():
    tau, ema, init = 0.1, 0.01, 0.1
    art = ArtReweighter(["noise", "rain", "haze", "blur"], tau=tau, ema=ema, init=init)
    sequence = [
        ([0.05, 0.08, 0.12, 0.09], [True, True, True, True]),
        ([0.04, 0.00, 0.11, 0.10], [True, False, True, True]),  # rain absent from this batch
        ([0.045, 0.07, 0.13, 0.0], [True, True, True, False]),
        ([0.03, 0.065, 0.09, 0.085], [True, True, True, True]),
        ([0.02, 0.066, 0.0, 0.0], [True, True, False, False]),
    ]
    last, best = [init] * 4, [init] * 4
    for losses, present in sequence:
        want = expected_weights(losses, last, best, tau, present)
        got = art.step(torch.tensor(losses, dtype=torch.float64), torch.tensor(present))
        assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert sum(got.tolist()) == pytest.approx(1.0)
        assert all(w == 0.0 for w, p in zip(got.tolist(), present) if not p)
        # then every present task's moving average and minimum move (the released code froze its third task's)
        last = [ema * l + (1 - ema) * la if p else la for l, la, p in zip(losses, last, present)]
        best = [min(m, l) if p else m for l, m, p in zip(losses, best, present)]
        assert art.last.tolist() == pytest.approx(last, rel=1e-15)
        assert art.minimum.tolist() == pytest.approx(best, rel=1e-15)
    assert art.updates.tolist() == [5, 4, 4, 3]


def test_the_research_notes_worked_examples():
    """Published behaviour of the coded rule (research notes, Art §1.7, three tasks, T = 0.1)."""
    art = ArtReweighter(["a", "b", "c"])
    first = art.weights(torch.tensor([0.05, 0.08, 0.12]), torch.ones(3, dtype=torch.bool))
    assert [round(w, 3) for w in first.tolist()] == [0.0, 0.003, 0.997]

    steady = torch.tensor([0.02, 0.04, 0.06], dtype=torch.float64)
    art.last, art.minimum = steady.clone(), 0.9 * steady
    assert [round(w, 3) for w in art.weights(steady, torch.ones(3, dtype=torch.bool)).tolist()] == [0.315, 0.334, 0.350]
    spike = torch.tensor([0.02, 0.04, 0.066], dtype=torch.float64)
    assert [round(w, 3) for w in art.weights(spike, torch.ones(3, dtype=torch.bool)).tolist()] == [0.148, 0.157, 0.694]


def test_state_is_saved_by_task_name():
    art = ArtReweighter(["noise", "rain", "haze"])
    art.step(torch.tensor([0.05, 0.07, 0.09]), torch.tensor([True, True, True]))
    art.step(torch.tensor([0.04, 0.0, 0.08]), torch.tensor([True, False, True]))
    reordered = ArtReweighter(["haze", "noise", "rain"])
    reordered.load_state_dict(art.state_dict())
    assert reordered.last.tolist() == [art.last[2].item(), art.last[0].item(), art.last[1].item()]
    assert reordered.minimum.tolist() == [art.minimum[2].item(), art.minimum[0].item(), art.minimum[1].item()]
    losses = torch.tensor([0.03, 0.06, 0.085])
    assert art.weights(losses, torch.ones(3, dtype=torch.bool)).tolist() == pytest.approx(
        reordered.weights(losses[[2, 0, 1]], torch.ones(3, dtype=torch.bool))[[1, 2, 0]].tolist()
    )


def test_losses_outside_zero_one_give_finite_weights_and_no_task_gives_none():
    art = ArtReweighter(["a", "b"])
    w = art.weights(torch.tensor([1.0, 2.5]), torch.tensor([True, True]))
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(1.0)
    assert art.weights(torch.tensor([0.1, 0.1]), torch.tensor([False, False])).tolist() == [0.0, 0.0]
