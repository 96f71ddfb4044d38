"""agents/rollout.py: the pieces every learner, checkpoint and evaluation shares."""

import numpy as np
import torch
from gymnasium import spaces

from agents.rollout import EpisodeStats, env_actions, stack_obs


def test_best_success_counts_once_enough_episodes_ended():
    s = EpisodeStats(window=100)
    assert s.best_success(None) is None
    s.new_successes = [1.0] * 10
    s.flush()
    assert s.best_success(None) is None and s.best_success(0.3) == 0.3  # 10 of the 20 needed
    s.new_successes = [0.0] * 10
    s.flush()
    assert s.best_success(None) == 0.5 and s.best_success(0.7) == 0.7 and s.best_success(0.2) == 0.5
    small = EpisodeStats(window=5)
    small.new_successes = [1.0] * 5
    small.flush()
    assert small.best_success(0.2) == 1.0  # a window under 20 episodes counts once full


def test_env_actions_and_stack_obs():
    a = torch.tensor([0, 2])
    assert env_actions(spaces.Discrete(3, start=-1), a).tolist() == [-1, 1]
    assert env_actions(spaces.Box(-1.0, 1.0, (1,)), torch.tensor([[3.0], [-0.5]])).tolist() == [[1.0], [-0.5]]
    space = spaces.Dict({"x": spaces.Box(0, 1, (2,)), "t": spaces.Tuple((spaces.Discrete(2),))})
    out = stack_obs(space, [{"x": np.zeros(2), "t": (1,)}, {"x": np.ones(2), "t": (0,)}])
    assert out["x"].shape == (2, 2) and out["t"][0].tolist() == [1, 0]
