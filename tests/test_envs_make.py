"""envs.make: MiniGrid and POPGym adapters, pass-through of other ids, errors."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

import envs
from envs.factory import MiniGridSuccess


def _run_until_episode_end(venv, max_steps: int = 400) -> dict:
    venv.reset()
    for _ in range(max_steps):
        *_, info = venv.step(venv.action_space.sample())
        if "_episode" in info:
            return info
    raise AssertionError("no episode ended")


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_minigrid_memory(vectorization: str) -> None:
    venv = envs.make("MiniGrid-MemoryS7-v0", 2, seed=0, vectorization=vectorization)
    try:
        expected = SyncVectorEnv if vectorization == "sync" else AsyncVectorEnv
        assert isinstance(venv.unwrapped, expected)
        assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        space = venv.single_observation_space
        assert isinstance(space, spaces.Dict) and set(space.spaces) == {"image", "direction"}
        assert space["image"].shape == (7, 7, 3) and space["image"].dtype == np.uint8
        assert space["direction"] == spaces.Discrete(4) and venv.single_action_space.n == 7
        obs, _ = venv.reset()
        assert obs["image"].shape == (2, 7, 7, 3) and obs["direction"].shape == (2,)
        info = _run_until_episode_end(venv, 600)
        done = info["_episode"]
        assert info["episode"]["r"].dtype == np.float32 and info["episode"]["l"].dtype == np.int32
        np.testing.assert_array_equal(info["_success"], done)
        assert set(info["success"][done].tolist()) <= {0.0, 1.0}
        i = int(np.flatnonzero(done)[0])
        assert info["_final_obs"][i] and set(info["final_obs"][i]) == {"image", "direction"}
    finally:
        venv.close()


class _FixedStep(gym.Env):
    observation_space = spaces.Discrete(2)
    action_space = spaces.Discrete(2)

    def __init__(self, reward: float, terminated: bool, truncated: bool) -> None:
        self.result = (0, reward, terminated, truncated, {})

    def reset(self, *, seed=None, options=None):
        return 0, {}

    def step(self, action):
        return self.result


@pytest.mark.parametrize(
    "reward, terminated, truncated, success",
    [(0.7, True, False, 1.0), (0.0, True, False, 0.0), (0.0, False, True, 0.0),
     (0.0, False, False, None)],
)
def test_minigrid_success_is_rewarded_termination(reward, terminated, truncated, success) -> None:
    info = MiniGridSuccess(_FixedStep(reward, terminated, truncated)).step(0)[4]
    assert info.get("success") == success


def test_make_is_reproducible_for_gymnasium_ids() -> None:
    def rollout() -> list[np.ndarray]:
        venv = envs.make("MiniGrid-MemoryS7-v0", 2, seed=5, vectorization="sync")
        out = [venv.reset()[0]["image"]]
        for _ in range(20):
            out.append(venv.step(venv.action_space.sample())[0]["image"])
        return out

    assert all((a == b).all() for a, b in zip(rollout(), rollout()))


def test_popgym() -> None:
    pytest.importorskip("popgym")
    venv = envs.make("popgym-RepeatPreviousEasy-v0", 2, seed=0)
    try:
        assert isinstance(venv.unwrapped, AsyncVectorEnv)
        assert venv.single_observation_space == spaces.Discrete(4)
        info = _run_until_episode_end(venv)
        assert info["_episode"].any() and "success" not in info
    finally:
        venv.close()
    venv = envs.make("popgym-AutoencodeEasy-v0", 1, seed=0)  # Tuple obs -> Dict "0", "1"
    assert isinstance(venv.single_observation_space, spaces.Dict)
    assert set(venv.reset()[0]) == {"0", "1"}


@pytest.mark.filterwarnings("ignore:.*share an object")  # POPGym reuses its info dict
@pytest.mark.parametrize(
    "env_id, obs_type, act_type",
    [
        ("CartPole-v1", spaces.Box, spaces.Discrete),
        ("Pendulum-v1", spaces.Box, spaces.Box),
        ("popgym-CountRecallEasy-v0", spaces.MultiDiscrete, spaces.Discrete),
    ],
)
def test_spaces_pass_through(env_id: str, obs_type: type, act_type: type) -> None:
    if env_id.startswith("popgym"):
        pytest.importorskip("popgym")
    venv = envs.make(env_id, 2, seed=0, vectorization="sync")
    single = gym.make(env_id)
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert isinstance(venv.single_observation_space, obs_type)
    assert isinstance(venv.single_action_space, act_type)
    _run_until_episode_end(venv, 1000)


def test_errors() -> None:
    with pytest.raises(ValueError, match="urlstm/TMazePassive-v0"):
        envs.make("NoSuchEnv-v0", 2)
    with pytest.raises(ValueError, match="length must be an integer >= 1"):
        envs.make("tmaze-passive", 2, length=0)
    with pytest.raises(ValueError, match="num_bits"):
        envs.make("urlstm/MemoryChain-v0", 2, num_bits=0)
    with pytest.raises(ValueError, match="distractor_steps"):
        envs.make("visual-match-active", 2, distractor_steps=-1)
    with pytest.raises(ValueError, match="unexpected kwargs \\['lenght'\\]"):
        envs.make("tmaze-active", 2, lenght=10)
    with pytest.raises(ValueError, match="num_envs"):
        envs.make("tmaze-active", 0)
    with pytest.raises(ValueError, match="vectorization"):
        envs.make("CartPole-v1", 2, vectorization="threads")
    with pytest.raises(ValueError, match="invalid kwargs"):
        envs.make("CartPole-v1", 2, vectorization="sync", no_such_kwarg=1)
    venv = envs.make("tmaze-passive", 2, seed=0)
    venv.reset()
    with pytest.raises(ValueError, match="actions"):
        venv.step(np.array([0, 4]))


def test_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for env_id in [k for k in gym.registry if k.startswith("popgym-")]:
        monkeypatch.delitem(gym.registry, env_id)
    monkeypatch.setitem(sys.modules, "popgym", None)  # import popgym -> ImportError
    with pytest.raises(ImportError, match="pip install popgym"):
        envs.make("popgym-RepeatPreviousEasy-v0", 2)
