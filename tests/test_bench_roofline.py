"""benchmarks/roofline.py: the FLOP count against hand counts, its scaling, and the JSON block of
benchmarks/train_speed.py (tiny configs; no figure here depends on the clock)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from gymnasium import spaces

from agents.config import TrainConfig
from benchmarks import roofline, train_speed
from policies.actor_critic import ActorCritic

OBS, ACTIONS, E, H = 2, 4, 6, 8
IN = OBS + ACTIONS + 1  # observation, one-hot previous action, previous reward


def tiny(core: str) -> ActorCritic:
    return ActorCritic(spaces.Box(-1, 1, (OBS,)), spaces.Discrete(ACTIONS), core=core, hidden_size=H, embed_size=E)


def tiny_cfg(core: str, num_steps: int = 6, update_epochs: int = 3) -> TrainConfig:
    return TrainConfig(core=core, num_envs=4, num_steps=num_steps, seq_len=num_steps, num_minibatches=2,
                       update_epochs=update_epochs, hidden_size=H, embed_size=E)


def hand_count(core: str, T: int, epochs: int) -> dict:
    """Matrix products per env step, written out: forward x W is 2*in*out per row; backward
    computes the weight gradient (2*in*out) and, where the input needs a gradient, the input
    gradient (2*in*out); the trunk's input (the observation) needs none."""
    trunk = 2 * IN * E
    heads = 2 * H * ACTIONS + 2 * H
    if core == "mlp":
        cell_fwd, cell_bwd = 2 * E * H, 2 * (2 * E * H)
    else:  # urlstm: 4 gate blocks; W_ih x once per step, W_hh h per step; the sequence's first
        # step has no gradient to pass to its stored start state (no W_hh^T dz there)
        cell_fwd = 2 * (E + H) * 4 * H
        cell_bwd = 2 * (2 * E * 4 * H) + 2 * H * 4 * H + 2 * H * 4 * H * (T - 1) / T
    acting = {"encoder_trunk": trunk, "core": cell_fwd, "heads": heads}
    acting = {k: v + (v if k != "heads" else 2 * H) / T for k, v in acting.items()}  # + bootstrap value
    learning = {"encoder_trunk": epochs * 2 * trunk, "core": epochs * (cell_fwd + cell_bwd),
                "heads": epochs * 3 * heads}
    return {"acting": acting, "learning": learning}


@pytest.mark.parametrize("core", ["mlp", "urlstm"])
def test_flops_per_step_equal_a_hand_count(core):
    T, epochs = 6, 3
    policy = tiny(core)
    flops = roofline.flops_per_step(policy, tiny_cfg(core, T, epochs))
    assert getattr(policy.core, "impl", "fast") == "fast"  # counted on a copy: the policy is left as it was
    hand = hand_count(core, T, epochs)
    for phase in ("acting", "learning"):
        for part, value in hand[phase].items():
            assert flops[phase][part] == round(value), (phase, part)
        assert flops[phase]["total"] == sum(flops[phase][p] for p in roofline.PARTS)
    assert flops["total"] == flops["acting"]["total"] + flops["learning"]["total"]


@pytest.mark.parametrize("core", ["mlp", "urlstm", "lstm", "gru"])
def test_count_is_linear_in_batch_and_steps(core):
    policy = roofline.reference_copy(tiny(core))

    def total(T: int, B: int) -> float:
        return roofline.learning_flops(policy, T, B)["total"] * T * B

    for T in (3, 5):
        assert total(T, 2) == pytest.approx(2 * total(T, 1)) and total(T, 5) == pytest.approx(5 * total(T, 1))
    # each further step costs the same; only the first step of a sequence (no gradient into the
    # stored start state of a recurrent core) costs less
    per_step = total(4, 3) - total(3, 3)
    assert total(7, 3) - total(6, 3) == pytest.approx(per_step)
    assert total(10, 3) == pytest.approx(total(3, 3) + 7 * per_step)
    first = total(1, 3)
    assert first == pytest.approx(per_step) if core == "mlp" else first < per_step
    assert roofline.acting_flops(policy, 10, batch=1) == pytest.approx(roofline.acting_flops(policy, 10, batch=3))


def test_roofline_block_arithmetic():
    flops = {"acting": {"total": 1e6}, "learning": {"total": 3e6}, "total": 4e6}
    gflops = {"1": {"a": 50.0, "b": 100.0}, "2": {"a": 150.0, "b": 200.0}}
    result = {"sps": 10_000.0, "steps_measured": 20_000, "seconds": {"learn": 1.5, "inference": 0.25}}
    block = roofline.roofline(flops, gflops, result)
    assert block["peak_gflops"] == {"1": 100.0, "2": 200.0}
    assert block["achieved_gflops"] == 40.0
    assert block["share_of_peak"] == {"1": 0.4, "2": 0.2}
    assert block["share_of_twice_the_1_thread_peak"] == 0.2
    assert block["gflops_while_learning"] == 40.0 and block["gflops_while_acting"] == 80.0


def test_gemm_peaks_keep_the_thread_count():
    before = torch.get_num_threads()
    rates = roofline.gemm_peaks({"small": (16, 8, 4)}, threads=(1, 2), min_run_time=0.01)
    assert torch.get_num_threads() == before
    assert set(rates) == {"1", "2"} and all(rates[t]["small"] > 0 for t in rates)


def test_train_speed_prints_the_roofline(monkeypatch, capsys):
    monkeypatch.setattr(roofline, "SQUARE_SIZES", (32,))
    monkeypatch.setattr(sys, "argv", ["train_speed.py", "--env-kwargs", "length=5", "--num-envs", "4",
                                      "--num-steps", "6", "--updates", "1", "--hidden-size", "8"])
    before = torch.get_num_threads()
    try:
        train_speed.main()
    finally:
        torch.set_num_threads(before)
    out = json.loads(capsys.readouterr().out)
    block = out["roofline"]
    assert set(block["flops_per_step"]) == {"acting", "learning", "total"}
    assert set(block["gemm_gflops"]) == {"1", "2"}
    assert set(block["gemm_gflops"]["1"]) == {"square 32", "learning minibatch", "learning step", "acting step"}
    assert set(block["share_of_peak"]) == {"1", "2"} and block["achieved_gflops"] > 0
    assert "load_avg_1m" in out["machine"] and "cpu" in out["machine"]
