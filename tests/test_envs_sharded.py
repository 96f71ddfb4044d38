"""ShardedVectorEnv: the envs in slices over this process and worker processes give, step for step,
what one SyncVectorEnv over all of them gives (observations, rewards, ends, every info key, the
seeds), errors come back as themselves, and no worker outlives close(); evaluations use it and
report the same figures."""

import multiprocessing as mp
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from agents import commands
from agents import evaluate as ev
from agents.config import TrainConfig
from envs.sharded import ShardedVectorEnv


def same(a, b, path="") -> None:
    """Equal trees of dicts, tuples, arrays (object arrays element by element) and scalars."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(set(a) ^ set(b)))
        for k in a:
            same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert isinstance(b, np.ndarray) and b.dtype == object and a.shape == b.shape, path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert np.asarray(a).dtype == np.asarray(b).dtype, (path, np.asarray(a).dtype, np.asarray(b).dtype)
        assert np.array_equal(np.asarray(a), np.asarray(b)), path


def play(env_id: str, n: int, steps: int, **kwargs) -> list:
    venv = envs.make(env_id, n, 3, **kwargs)
    rng = np.random.default_rng(0)
    try:
        out = [venv.reset()]
        for _ in range(steps):
            out.append(venv.step(rng.integers(0, venv.single_action_space.n, n)))
    finally:
        venv.close()
    return out


@pytest.mark.parametrize("env_id, n, workers, steps", [
    ("MiniGrid-MemoryS7-v0", 10, 1, 300),       # 3 episodes of <= 245 steps end per env
    ("popgym-RepeatPreviousEasy-v0", 7, 2, 120),  # slices of 2, 2 and 3 envs; episodes of 52 steps
])
def test_steps_like_one_sync_vector_env(env_id, n, workers, steps):
    sync = play(env_id, n, steps, vectorization="sync")
    sharded = play(env_id, n, steps, vectorization="shards", workers=workers)
    same(sync, sharded)
    ended = sum(int(s[4].get("_episode", np.zeros(n)).sum()) for s in sync[1:])
    assert ended >= n  # the comparison covered autoresets, final_obs and episode infos


class Countdown(gym.Env):
    """Episodes of ``length`` steps; the observation is the steps left; raises at step ``fail_at``."""

    observation_space = gym.spaces.Box(0.0, 100.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length=5, fail_at=None, fail_build=False, tag=0):
        if fail_build:
            raise ValueError("this env cannot be built")
        self.length, self.fail_at, self.tag, self.steps, self.left = length, fail_at, tag, 0, length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = self.length
        return np.array([self.left], np.float32), {"seed_draw": int(self.np_random.integers(1000))}

    def scaled(self, x, plus=0):
        return x * self.tag + plus

    def step(self, action):
        self.steps += 1
        if self.fail_at is not None and self.steps >= self.fail_at:
            raise KeyError(f"env {self.tag} broke at step {self.steps}")
        self.left -= 1
        return np.array([self.left], np.float32), float(action), self.left == 0, False, {"tag": self.tag}


def countdowns(n: int, **kwargs) -> list:
    return [partial(Countdown, tag=i, length=3 + i, **kwargs) for i in range(n)]


def test_reset_seeds_get_attr_and_call():
    sync = gym.vector.SyncVectorEnv(countdowns(5), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    venv = ShardedVectorEnv(countdowns(5), workers=2)
    try:
        assert venv.bounds == [0, 1, 3, 5]
        same(venv.reset(seed=11), sync.reset(seed=11))
        same(venv.reset(seed=[4, None, 6, 7, 8])[1]["_seed_draw"], np.ones(5, bool))
        assert venv.reset(seed=[4, 5, 6, 7, 8])[1]["seed_draw"].tolist() == sync.reset(seed=[4, 5, 6, 7, 8])[1]["seed_draw"].tolist()
        assert venv.get_attr("length") == (3, 4, 5, 6, 7)
        assert venv.call("scaled", 3, plus=1) == (1, 4, 7, 10, 13)
        assert venv.num_envs == 5 and venv.action_space.shape == (5,) and venv.observation_space.shape == (5, 1)
        with pytest.raises(ValueError, match="2 seeds for 5 envs"):
            venv.reset(seed=[1, 2])
    finally:
        venv.close()
        sync.close()


def test_an_error_in_a_worker_is_raised_here_as_itself_and_close_leaves_no_process():
    venv = ShardedVectorEnv(countdowns(4, fail_at=3), workers=1)
    venv.reset(seed=0)
    venv.step(np.zeros(4, np.int64))
    venv.step(np.zeros(4, np.int64))
    with pytest.raises(KeyError, match="broke at step 3"):
        venv.step(np.zeros(4, np.int64))
    venv.close()
    assert not [p for p in mp.active_children() if p.name.startswith("ShardedVectorEnv")]


def test_an_env_that_cannot_be_built_in_a_worker_raises_here():
    fns = countdowns(2) + [partial(Countdown, fail_build=True)]
    with pytest.raises(ValueError, match="cannot be built"):
        ShardedVectorEnv(fns, workers=1)
    assert not [p for p in mp.active_children() if p.name.startswith("ShardedVectorEnv")]


def test_bad_workers():
    for workers in (-1, 3, 1.5, True):
        with pytest.raises(ValueError, match="workers must be an integer in \\[0, 2\\]"):
            ShardedVectorEnv(countdowns(3), workers=workers)
    with pytest.raises(ValueError, match='needs vectorization="shards"'):
        envs.make("CartPole-v1", 2, workers=1)
    with pytest.raises(ValueError, match='"shards"'):
        envs.make("CartPole-v1", 2, vectorization="threads")


def test_evaluation_in_slices_reports_what_one_process_reports(monkeypatch):
    cfg = TrainConfig(env="MiniGrid-MemoryS7-v0", env_kwargs={"vectorization": "sync"}, num_envs=2, num_steps=8,
                      seq_len=8, num_minibatches=1, hidden_size=8, embed_size=8, progress=False, device="cpu")
    torch.manual_seed(0)
    probe = commands.make_env(cfg, num_envs=1)
    policy = commands.make_policy(cfg, probe, torch.device("cpu")).eval()
    probe.close()
    made = []
    real_make = envs.make
    monkeypatch.setattr(envs, "make", lambda *a, **k: made.append(k) or real_make(*a, **k))
    monkeypatch.setattr("envs.sharded.usable_cores", lambda: 2)
    results = []
    for per_worker in (8, 10_000):  # 16 envs: this process and one worker, then one process
        monkeypatch.setattr(ev, "ENVS_PER_WORKER", per_worker)
        torch.manual_seed(1)  # the same sampled actions
        results.append(ev.evaluate(policy, cfg, torch.device("cpu"), episodes=16, seed=5))
    assert [m["vectorization"] for m in made] == ["shards", "sync"] and made[0]["workers"] == 1
    assert results[0] == results[1] and results[0]["episodes"] == 16
