"""A trained policy in your own loop: ``load_policy(run)``, then ``policy.act(obs, state, start)``.

A checkpoint written by ``train.py`` holds, next to the weights, the description of its network
(``ActorCritic.describe``: constructor arguments and the observation and action spaces as plain
data), so the policy is rebuilt without making the environment. See docs/deploy.md.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from policies.actor_critic import ActorCritic, Obs, obs_to_tensor

CHECKPOINT_FILE = "checkpoint.pt"  # what train.py writes in a run folder


class PolicyLoadError(ValueError):
    """The path holds no checkpoint, a corrupt one, or one without a policy description."""


class PolicyState(NamedTuple):
    """What a recurrent policy carries from one step to the next, for B envs.

    Attributes:
        core: the memory core's state, a tuple of [num_layers, B, hidden_size] tensors (() for mlp).
        prev_action: [B, *action_shape] the network's action of the previous step (before
            ``env_action``; ignored by ``act`` at an episode start).
    """

    core: tuple[torch.Tensor, ...]
    prev_action: torch.Tensor


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a run folder's ``checkpoint.pt`` or a checkpoint file.

    Raises:
        PolicyLoadError: missing, unreadable, or without the weights and the policy description.
    """
    file = os.fspath(path)
    if os.path.isdir(file):
        file = os.path.join(file, CHECKPOINT_FILE)
    if not os.path.isfile(file):
        raise PolicyLoadError(f"no checkpoint at {file}")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise PolicyLoadError(f"{file} is not a readable checkpoint ({type(err).__name__}: "
                              f"{one_line(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise PolicyLoadError(f"{file} is not a urlstm checkpoint")
    if "policy" not in data:
        raise PolicyLoadError(f"{file} holds no policy description (written by an older version); "
                              "resume the run for one more update to rewrite it")
    data["path"] = file
    return data


class RecurrentPolicy:
    """A trained actor-critic, ready to act (eval mode, no gradients).

    Attributes:
        model: the ``ActorCritic`` on ``device``.
        observation_space, action_space: a single env's spaces.
        config: the training config the checkpoint recorded (a dict; {} when built from a model).
        device: where ``model`` lives and the returned tensors are.
    """

    def __init__(self, model: ActorCritic, config: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.observation_space: spaces.Space = model.observation_space
        self.action_space: spaces.Space = model.action_space
        self.config = dict(config or {})

    @property
    def uses_reward(self) -> bool:
        """True when the network reads the previous reward (``act`` then needs ``reward``)."""
        return bool(self.model.prev_action_reward)

    def initial_state(self, num_envs: int) -> PolicyState:
        """The state before any observation, for ``num_envs`` envs (zeros)."""
        head = self.model.head
        prev = torch.zeros(num_envs, *head.action_shape(), dtype=head.action_dtype(),
                           device=self.device)
        return PolicyState(self.model.initial_state(num_envs, self.device), prev)

    @torch.no_grad()
    def act(self, obs: Obs | np.ndarray, state: PolicyState, episode_start: Any, reward: Any = None,
            greedy: bool = True) -> tuple[np.ndarray, PolicyState]:
        """One step for B envs.

        Args:
            obs: [B, *obs_shape] numpy array or tensor (a dict / tuple of them for Dict / Tuple
                spaces), the observations just received.
            state: the ``PolicyState`` returned by the previous call (or ``initial_state(B)``).
            episode_start: [B] bool, True where ``obs`` is the first observation of an episode
                (the memory and the previous action and reward are cleared there first).
            reward: [B] float, the reward that came with ``obs`` (i.e. for the previous action).
                Needed where the policy reads it (``uses_reward``) and any env is not at an
                episode start; None counts as zeros.
            greedy: take the most likely action (the mean for Box actions); False samples.

        Returns:
            (action, state): the actions for the envs, a numpy array [B, *action_shape] ready for
            ``env.step`` (see ``env_action``), and the new ``PolicyState``.

        Raises:
            ValueError: shapes that do not match the spaces, or a missing ``reward``;
                ``ActionMaskError`` (a ValueError) for an action mask that allows no action.
        """
        start = _tensor(episode_start, self.device).bool().reshape(-1)
        n = start.shape[0]
        x = obs_to_tensor(self.observation_space, obs, self.device)
        _check_batch(self.observation_space, x, n, "obs")
        if reward is None:
            if self.uses_reward and not bool(start.all()):
                raise ValueError("this policy reads the previous reward: pass reward= (the reward "
                                 "that came with obs, [B] floats) wherever episode_start is False")
            reward = torch.zeros(n, device=self.device)
        reward = _tensor(reward, self.device).float().reshape(-1)
        if reward.shape[0] != n or state.prev_action.shape[0] != n:
            raise ValueError(f"reward has {reward.shape[0]} entries and the state "
                             f"{state.prev_action.shape[0]} envs; episode_start has {n}")
        out = self.model.act(x, state.core, start, state.prev_action, reward, greedy=greedy)
        return self.env_action(out.action), PolicyState(tuple(out.state), out.action)

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """The network's action [B, ...] -> what the env takes: a numpy array of the action
        space's dtype, a Discrete / MultiDiscrete ``start`` added, Box actions clipped to bounds."""
        space, a = self.action_space, action.cpu().numpy()
        if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
            return (a + np.asarray(space.start)).astype(space.dtype)
        return np.clip(a, space.low, space.high).astype(space.dtype)


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut at ``limit`` characters."""
    return " ".join(str(err).split())[:limit] or type(err).__name__


def _tensor(x: Any, device: torch.device) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).to(device)


def _check_batch(space: spaces.Space, x: Obs, n: int, name: str) -> None:
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            _check_batch(sub, x[key], n, f"{name}[{key!r}]")
        return
    if isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            _check_batch(sub, x[i], n, f"{name}[{i}]")
        return
    shape = () if isinstance(space, spaces.Discrete) else tuple(space.shape)
    if tuple(x.shape) != (n, *shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {(n, *shape)} (a leading "
                         f"batch dimension of {n} = len(episode_start))")


def policy_from_checkpoint(data: dict[str, Any],
                           device: torch.device | str = "cpu") -> RecurrentPolicy:
    """The policy of an already loaded checkpoint dict (see ``read_checkpoint``).

    Raises:
        PolicyLoadError: the description does not build, or the weights do not fit it.
    """
    where = data.get("path", "the checkpoint")
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep the caller's RNG
        try:
            model = ActorCritic.from_description(data["policy"])
        except (ValueError, TypeError, KeyError) as err:
            raise PolicyLoadError(f"{where}: its policy description does not build "
                                  f"({one_line(err)})") from None
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as err:
        raise PolicyLoadError(f"{where}: the weights do not fit the policy description "
                              f"({one_line(err)})") from None
    return RecurrentPolicy(model, data.get("config"), device)


def load_policy(path: str | os.PathLike, device: torch.device | str = "cpu") -> RecurrentPolicy:
    """Load a trained policy from a run folder or a ``checkpoint.pt``, without making its env.

    Args:
        path: a run folder written by ``train.py`` or its checkpoint file.
        device: where the network runs ("cpu", "cuda", ...).

    Returns:
        A ``RecurrentPolicy`` in eval mode.

    Raises:
        PolicyLoadError: a one-line reason (no checkpoint there, corrupt, written by an older
            version without the policy description, weights that do not fit).
    """
    return policy_from_checkpoint(read_checkpoint(path), device)
