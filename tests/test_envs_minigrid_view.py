"""envs.minigrid_view.FastView gives exactly MiniGrid's own observations, step by step."""

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.minigrid_view import FastView

minigrid = pytest.importorskip("minigrid")
from minigrid.core.world_object import Door  # noqa: E402
from minigrid.wrappers import ViewSizeWrapper  # noqa: E402

# memory, doors and keys (toggle, pickup, drop), moving obstacles (see-through walls), lava, boxes
IDS = ["MiniGrid-MemoryS7-v0", "MiniGrid-DoorKey-5x5-v0", "MiniGrid-Unlock-v0", "MiniGrid-KeyCorridorS3R1-v0",
       "MiniGrid-Dynamic-Obstacles-5x5-v0", "MiniGrid-LavaCrossingS9N1-v0", "MiniGrid-Fetch-5x5-N2-v0",
       "MiniGrid-BlockedUnlockPickup-v0"]


def _doors(env) -> list[bool]:
    return [(o.is_open, o.is_locked) for o in env.unwrapped.grid.grid if isinstance(o, Door)]


def _same(a: dict, b: dict) -> bool:
    return (a["image"].dtype == b["image"].dtype and np.array_equal(a["image"], b["image"])
            and a["direction"] == b["direction"] and a["mission"] == b["mission"])


@pytest.mark.parametrize("env_id", IDS)
def test_fast_view_matches_minigrid_on_random_walks(env_id):
    stock, fast = gym.make(env_id), FastView(gym.make(env_id))
    rng = np.random.default_rng(0)
    steps = door_changes = 0
    for episode in range(12):
        a, _ = stock.reset(seed=episode)
        b, _ = fast.reset(seed=episode)
        assert _same(a, b)
        for _ in range(150):
            # biased to the actions that change the grid, so doors and keys are touched often
            action = int(rng.choice(7, p=[0.2, 0.2, 0.25, 0.1, 0.1, 0.15, 0.0]))
            before = _doors(stock)
            a, *rest_a = stock.step(action)
            b, *rest_b = fast.step(action)
            door_changes += _doors(stock) != before
            assert _same(a, b), f"{env_id}: episode {episode}, step {steps}, action {action}"
            assert rest_a[:3] == rest_b[:3]
            steps += 1
            if rest_a[1] or rest_a[2]:
                break
    if env_id == "MiniGrid-DoorKey-5x5-v0":
        assert door_changes > 0  # the toggle path was exercised


def test_fast_view_follows_a_changed_view_size():
    stock = ViewSizeWrapper(gym.make("MiniGrid-MemoryS7-v0"), agent_view_size=9)
    fast = ViewSizeWrapper(FastView(gym.make("MiniGrid-MemoryS7-v0")), agent_view_size=9)
    a, _ = stock.reset(seed=3)
    b, _ = fast.reset(seed=3)
    assert a["image"].shape == (9, 9, 3) and _same(a, b)
    for action in [0, 2, 2, 1, 1, 2, 0, 0, 2]:
        assert _same(stock.step(action)[0], fast.step(action)[0])


def test_envs_make_uses_the_fast_view_and_refuses_non_minigrid():
    venv = envs.make("MiniGrid-MemoryS7-v0", 1, seed=0, vectorization="sync")
    inner = venv.unwrapped.envs[0]
    while not isinstance(inner, FastView):
        inner = inner.env
    venv.close()
    venv = envs.make("MiniGrid-MemoryS7-v0", 1, seed=0, vectorization="sync", fast_view=False)
    inner = venv.unwrapped.envs[0]
    while hasattr(inner, "env"):
        assert not isinstance(inner, FastView)
        inner = inner.env
    venv.close()
    with pytest.raises(TypeError, match="needs a MiniGrid env"):
        FastView(gym.make("CartPole-v1"))
