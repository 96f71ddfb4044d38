"""Data-parallel PPO under torchrun: a 2-rank gloo update averages gradients exactly as a
1-process update on the union of the ranks' rollouts; a real `torchrun --nproc_per_node 2` run
leaves one run folder and resumes; bad combinations stop every rank with one line and exit 2."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import multiprocessing as mp

from agents import commands, distributed, ppo
from agents.config import TrainConfig
from agents.returns import gae
from agents.rollout import EpisodeStats, Rollout, Timers, collect, initial_carry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# norm_adv off: advantages normalised per rank are not those normalised over the union
CFG = dict(env_kwargs={"length": 3}, core="gru", num_envs=4, num_steps=8, seq_len=4,
           num_minibatches=1, update_epochs=1, hidden_size=8, embed_size=8, norm_adv=False,
           progress=False, device="cpu")


def _rollout(cfg: TrainConfig):
    """A real rollout of the union (4 envs) and the policy that collected it."""
    torch.manual_seed(0)
    venv = commands.make_env(cfg)
    policy = commands.make_policy(cfg, venv, torch.device("cpu"))
    ro = Rollout.zeros(policy, cfg.num_steps, cfg.num_envs, cfg.seq_len, torch.device("cpu"))
    carry = initial_carry(policy, venv, cfg.seed, torch.device("cpu"))
    for _ in range(2):  # the second rollout starts mid-episode, with memory
        carry = collect(policy, venv, ro, carry, EpisodeStats(), Timers())
    venv.close()
    return policy, ro


def _half(ro, rank: int, world: int):
    """Envs rank*B..(rank+1)*B-1 of the rollout: what that rank would have collected."""
    B = ro.rewards.shape[1] // world
    cols = slice(rank * B, (rank + 1) * B)
    part = {}
    for name, x in vars(ro).items():
        if name == "states":  # each [K, layers, B, H]
            part[name] = tuple(s[:, :, cols].clone() for s in x)
        elif name == "next_value":
            part[name] = x[cols].clone()
        elif name == "seq_len":
            part[name] = x
        else:  # [T, B, ...] (obs may be a tree; here a tensor)
            part[name] = x[:, cols].clone()
    return Rollout(**part)


def _grads_after_update(policy, ro, cfg):
    """The gradients and weights after an update (with --refresh-states each rank re-runs its
    own rollout before the second epoch)."""
    advantages, returns = gae(ro.rewards, ro.values, ro.terminated, ro.truncated, ro.next_value,
                              ro.final_values, cfg.gamma, cfg.gae_lambda)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    policy.train()
    refresh = (lambda: ppo.refreshed_states(policy, ro)) if cfg.refresh_states else None
    ppo.update(distributed.wrap(policy), optimizer, ro, advantages, returns, cfg, refresh)
    return {k: p.grad.clone() for k, p in policy.named_parameters()}, \
        {k: p.detach().clone() for k, p in policy.named_parameters()}


def _rank(rank: int, world: int, init_file: str, state: dict, ro, out: str, more: dict) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world)
    try:
        cfg = TrainConfig(**{**CFG, **more})
        venv = commands.make_env(cfg, num_envs=1)
        policy = commands.make_policy(cfg, venv, torch.device("cpu"))
        venv.close()
        policy.load_state_dict(state)
        torch.save(_grads_after_update(policy, _half(ro, rank, world), cfg), f"{out}.{rank}")
        torch.distributed.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("more", [{}, {"refresh_states": True, "update_epochs": 2}])
def test_two_rank_update_equals_one_process_update_on_the_union(tmp_path, more):
    cfg = TrainConfig(**{**CFG, **more})
    policy, ro = _rollout(cfg)
    assert ro.reset[1:].any()  # episodes end inside the rollout: resets inside the sequences
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    out = str(tmp_path / "grads")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), state, ro, out, more), nprocs=2, join=True)
    grads, params = _grads_after_update(policy, ro, cfg)  # one process, all 4 envs
    for rank in (0, 1):
        rank_grads, rank_params = torch.load(f"{out}.{rank}", weights_only=True)
        for k in grads:
            torch.testing.assert_close(rank_grads[k], grads[k], rtol=1e-5, atol=1e-6, msg=k)
            torch.testing.assert_close(rank_params[k], params[k], rtol=1e-5, atol=1e-6, msg=k)
    assert any(g.abs().sum() > 0 for g in grads.values())


def torchrun(*argv, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train.py"), *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


TINY = ["--env-kwargs", "length=3", "--core", "gru", "--num-envs", "4", "--num-steps", "8",
        "--seq-len", "8", "--num-minibatches", "2", "--hidden-size", "8", "--embed-size", "8",
        "--eval-episodes", "4", "--no-progress", "--device", "cpu"]


def test_torchrun_two_ranks_one_run_folder_then_resume(tmp_path):
    p = torchrun(*TINY, "--total-steps", "96", "--norm-reward", "--logdir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("finished: 96 steps") == 1, p.stdout  # rank 0 alone reports
    (run_dir,) = [tmp_path / d for d in os.listdir(tmp_path)]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2 and config["num_envs"] == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["total_steps"] == 96
    assert summary["updates"] == 3 and summary["final_eval_episodes"] == 4
    assert (run_dir / "checkpoint.pt").is_file()
    # --norm-reward's moments count the returns of both ranks' envs: 96 steps in all
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["reward_scale"]["count"] == 96

    p = torchrun("--resume", str(run_dir), "--total-steps", "160")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_steps"] == 160 and summary["updates"] == 5
    assert os.listdir(tmp_path) == [run_dir.name]


@pytest.mark.parametrize("argv, message", [
    (["--algo", "impala"], "torchrun runs data-parallel PPO learners"),
    (["--num-envs", "5", "--num-minibatches", "1"], "--num-envs (5) must be a multiple of the 2"),
])
def test_torchrun_bad_combination_is_one_line_and_exit_code_2(tmp_path, argv, message):
    p = torchrun(*argv, "--total-steps", "64", "--no-progress", "--logdir", str(tmp_path))
    assert p.returncode != 0
    ours = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and message in ours[0], p.stderr[-3000:]  # rank 0 speaks for both
    assert "exitcode  : 2" in p.stderr  # torchrun's own report of each rank's exit code
    assert not os.listdir(tmp_path)
