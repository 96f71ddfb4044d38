"""Recurrent actor-critic: observation encoder -> memory core -> policy and value heads.

The encoder is chosen from the observation space: vectors are flattened, Discrete and MultiDiscrete
become one-hot, image Boxes go through a small CNN, Dict/Tuple spaces are concatenated; the previous
action and reward are appended (zeroed at episode starts), then one Linear+ReLU gives the core's input.
The recurrent state is the core's opaque tuple; nothing here looks inside it.

A Dict observation's ``action_mask`` key is not encoded: it masks the policy's logits
(``policies.action_mask``), when acting and when re-evaluating stored observations alike.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from policies.action_mask import (
    MASK_KEY,
    check_allowed,
    check_mask_space,
    has_mask,
    mask_from_obs,
    masked_logits,
    without_mask,
)
from policies.cores import make_core
from policies.space_codec import space_from_dict, space_to_dict

State = tuple[torch.Tensor, ...]
Obs = Any  # a tensor, or a dict / tuple of tensors, shaped like the observation space


# ---------------------------------------------------------------------------------------------
# observation helpers (tensor trees)
# ---------------------------------------------------------------------------------------------

def obs_dtype(space: spaces.Space) -> torch.dtype:
    """Storage dtype of one leaf space."""
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return torch.long
    if isinstance(space, spaces.Box) and space.dtype == np.uint8:
        return torch.uint8
    return torch.float32


def obs_to_tensor(space: spaces.Space, obs: Any, device: torch.device | str) -> Obs:
    """Batched numpy (or torch) observation (leading dim B) -> tensor tree on ``device``."""
    if isinstance(space, spaces.Dict):
        return {k: obs_to_tensor(s, obs[k], device) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(obs_to_tensor(s, o, device) for s, o in zip(space.spaces, obs))
    dtype = obs_dtype(space)
    if isinstance(obs, torch.Tensor):
        return obs.to(device=device, dtype=dtype)
    array = np.asarray(obs)
    tensor = torch.from_numpy(array) if array.dtype != object else torch.as_tensor(array.tolist())
    return tensor.to(device=device, dtype=dtype, non_blocking=True)


def obs_zeros(space: spaces.Space, lead: tuple[int, ...], device: torch.device | str) -> Obs:
    """Preallocated tensor tree of shape [*lead, *space.shape]."""
    if isinstance(space, spaces.Dict):
        return {k: obs_zeros(s, lead, device) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(obs_zeros(s, lead, device) for s in space.spaces)
    shape = () if isinstance(space, spaces.Discrete) else tuple(space.shape)
    return torch.zeros(*lead, *shape, dtype=obs_dtype(space), device=device)


def tree_map(fn, *trees):
    """Apply ``fn`` to the leaves of equally structured tensor trees."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: tree_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, tuple):
        return tuple(tree_map(fn, *leaves) for leaves in zip(*trees))
    return fn(*trees)


# ---------------------------------------------------------------------------------------------
# encoders: each maps [N, *space.shape] -> [N, out_size]
# ---------------------------------------------------------------------------------------------

class FlatEncoder(nn.Module):
    """Box vectors (and MultiBinary): flatten to float."""

    def __init__(self, space: spaces.Space):
        super().__init__()
        self.out_size = int(np.prod(space.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        return x if x.is_floating_point() else x.float()


class OneHotEncoder(nn.Module):
    """Discrete / MultiDiscrete: concatenated one-hot vectors (int64 input)."""

    def __init__(self, space: spaces.Space):
        super().__init__()
        if isinstance(space, spaces.Discrete):
            nvec, start = np.array([space.n]), np.array([space.start])
        else:
            nvec, start = np.asarray(space.nvec).reshape(-1), np.zeros(int(np.prod(space.nvec.shape)))
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]) - start
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.long), persistent=False)
        self.out_size = int(nvec.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.reshape(x.shape[0], -1).long() + self.offsets            # [N, k]
        out = torch.zeros(x.shape[0], self.out_size, device=x.device)    # [N, sum(nvec)]
        return out.scatter_(1, idx, 1.0)


class ImageEncoder(nn.Module):
    """Image Boxes (HWC or CHW).

    Small uint8 images (<= 16 px a side: MiniGrid's 7x7x3 grid of object/colour/state ids, or
    few-colour grid-world RGB) embed each channel's byte value with a learned 8-d vector, since their
    values are symbols rather than intensities, then go through the small CNN of MiniGrid's
    rl-starter-files (2x2 convolutions with 16, 32, 64 channels, one 2x2 max-pool when the image is
    large enough). Larger uint8 images are scaled by 1/255 and go through the Nature-DQN stack
    (>= 36 px) or the small CNN.
    """

    def __init__(self, space: spaces.Box):
        super().__init__()
        shape = tuple(space.shape)
        self.channels_last = shape[-1] <= 4 or shape[0] > 4
        c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        self.embed_dim = 0
        if space.dtype == np.uint8 and max(h, w) <= 16:
            self.embed_dim = 8
            self.embed = nn.Parameter(torch.randn(256 * c, self.embed_dim))
            self.register_buffer("offsets", torch.arange(c) * 256, persistent=False)
            c = self.embed_dim * c
        self.scale = 1.0 / 255.0 if (space.dtype == np.uint8 and not self.embed_dim) else 1.0
        if min(h, w) >= 36:
            layers = [nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                      nn.Conv2d(64, 64, 3), nn.ReLU()]
        else:
            layers, side = [], min(h, w)
            for i, out in enumerate((16, 32, 64)):
                k = 2 if side >= 2 else 1
                layers += [nn.Conv2d(c, out, k), nn.ReLU()]
                c, side = out, side - k + 1
                if i == 0 and (side // 2) >= 3:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
        self.cnn = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.out_size = int(self.cnn(torch.zeros(1, layers[0].in_channels, h, w)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            x = x.permute(0, 2, 3, 1)                                     # [N, H, W, C]
        if self.embed_dim:
            idx = x.long() + self.offsets                                 # [N, H, W, C]
            # index_select: its backward is several times faster than nn.Embedding's on CPU
            x = self.embed.index_select(0, idx.reshape(-1)).view(*idx.shape[:3], -1)  # [N, H, W, 8C]
        else:
            x = x.to(self.cnn[0].weight.dtype) * self.scale
        # channels-last [N, C, H, W] view, no copy: oneDNN's convolutions and pooling run about
        # twice as fast on it as on a contiguous NCHW copy for these small images
        return self.cnn(x.permute(0, 3, 1, 2))


class TreeEncoder(nn.Module):
    """Dict / Tuple spaces: encode each part, concatenate."""

    def __init__(self, space: spaces.Dict | spaces.Tuple):
        super().__init__()
        items = space.spaces.items() if isinstance(space, spaces.Dict) else enumerate(space.spaces)
        self.keys = [k for k, _ in items]
        subspaces = space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces
        self.parts = nn.ModuleList(make_encoder(s) for s in subspaces)
        self.out_size = sum(p.out_size for p in self.parts)

    def forward(self, x: dict | tuple) -> torch.Tensor:
        return torch.cat([p(x[k]) for k, p in zip(self.keys, self.parts)], dim=1)


def make_encoder(space: spaces.Space) -> nn.Module:
    """Pick an encoder for an observation space; raises ValueError for unsupported ones."""
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        return TreeEncoder(space)
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return OneHotEncoder(space)
    if isinstance(space, spaces.Box) and len(space.shape) == 3:
        return ImageEncoder(space)
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return FlatEncoder(space)
    raise ValueError(f"unsupported observation space {space}: use Box, Discrete, MultiDiscrete, "
                     "MultiBinary, Dict or Tuple")


# ---------------------------------------------------------------------------------------------
# action heads
# ---------------------------------------------------------------------------------------------

class ActionHead(nn.Module):
    """Policy head and action encoding for Discrete, MultiDiscrete and Box action spaces."""

    def __init__(self, space: spaces.Space, in_size: int, gain: float = 0.01):
        super().__init__()
        if isinstance(space, spaces.Discrete):
            self.kind, self.nvec = "categorical", [int(space.n)]
            self.start = int(space.start)
        elif isinstance(space, spaces.MultiDiscrete) and np.asarray(space.nvec).ndim == 1:
            self.kind, self.nvec = "multi", [int(n) for n in space.nvec]
            self.start = 0
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            self.kind, self.nvec = "gaussian", []
            self.dim = int(space.shape[0])
        else:
            raise ValueError(f"unsupported action space {space}: use Discrete, 1-D MultiDiscrete "
                             "or 1-D Box")
        out = sum(self.nvec) if self.nvec else self.dim
        self.linear = nn.Linear(in_size, out)
        nn.init.orthogonal_(self.linear.weight, gain)
        nn.init.zeros_(self.linear.bias)
        if self.kind == "gaussian":
            self.log_std = nn.Parameter(torch.zeros(self.dim))
        # width of the previous-action input
        self.encoding_size = sum(self.nvec) if self.nvec else self.dim
        if self.nvec:
            offs = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
            self.register_buffer("offsets", torch.as_tensor(offs, dtype=torch.long), persistent=False)

    def action_shape(self) -> tuple[int, ...]:
        return () if self.kind == "categorical" else ((len(self.nvec),) if self.nvec else (self.dim,))

    def action_dtype(self) -> torch.dtype:
        return torch.float32 if self.kind == "gaussian" else torch.long

    def encode(self, action: torch.Tensor) -> torch.Tensor:
        """[N, *action_shape] -> [N, encoding_size] (one-hot for discrete, raw for Box)."""
        if self.kind == "gaussian":
            return action.float()
        idx = action.reshape(action.shape[0], -1) + self.offsets        # [N, k]
        out = torch.zeros(action.shape[0], self.encoding_size, device=action.device)
        return out.scatter_(1, idx, 1.0)

    def _split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return [F.log_softmax(part, -1) for part in logits.split(self.nvec, -1)]

    def sample(self, h: torch.Tensor, greedy: bool = False, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """h [N, H], mask None or bool [N, sum(nvec)] -> (action [N, *action_shape], logprob [N]).

        Masked actions (mask False) are never drawn nor taken greedily; ``logprob`` is that of the
        distribution renormalised over the allowed actions.
        """
        out = masked_logits(self.linear(h), mask)
        if self.kind == "gaussian":
            std = self.log_std.exp()
            action = out if greedy else out + std * torch.randn_like(out)
            return action, self._normal_logprob(out, action)
        actions, logprob = [], 0.0
        for logp in self._split(out):
            if greedy:
                a = logp.argmax(-1)
            else:
                a = torch.multinomial(logp.exp(), 1).squeeze(-1)
            actions.append(a)
            logprob = logprob + logp.gather(-1, a.unsqueeze(-1)).squeeze(-1)
        action = actions[0] if self.kind == "categorical" else torch.stack(actions, -1)
        return action, logprob

    def logprob_entropy(self, h: torch.Tensor, action: torch.Tensor,
                        mask: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [N, H], action [N, *action_shape], mask None or bool [N, sum(nvec)] ->
        (logprob [N], entropy [N], uniform_kl [N]).

        ``uniform_kl`` is KL(uniform || pi) summed over the discrete components,
        ``-mean_a log pi(a) - log n`` (0 for Box actions): unlike the entropy its gradient does not
        vanish as an action's probability goes to 0, so as a penalty it keeps every action in play.
        With a mask every term is that of the distribution renormalised over the allowed actions,
        and the uniform of the KL is over the m allowed ones: ``-mean_allowed log pi(a) - log m``.
        """
        out = masked_logits(self.linear(h), mask)
        if self.kind == "gaussian":
            entropy = (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum().expand(h.shape[0])
            return self._normal_logprob(out, action), entropy, torch.zeros_like(entropy)
        cols = [action] if self.kind == "categorical" else action.unbind(-1)
        allowed = [None] * len(cols) if mask is None else mask.split(self.nvec, -1)
        logprob, entropy, kl = 0.0, 0.0, 0.0
        for logp, a, ok in zip(self._split(out), cols, allowed):
            logprob = logprob + logp.gather(-1, a.unsqueeze(-1)).squeeze(-1)
            entropy = entropy - (logp.exp() * logp).sum(-1)   # masked: 0 * (finite) = 0
            if ok is None:
                kl = kl - logp.mean(-1) - math.log(logp.shape[-1])
            else:
                m = ok.sum(-1).clamp(min=1).to(logp.dtype)
                kl = kl - torch.where(ok, logp, 0.0).sum(-1) / m - m.log()
        return logprob, entropy, kl

    def _normal_logprob(self, mean: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        var = (2 * self.log_std).exp()
        lp = -((action - mean) ** 2) / (2 * var) - self.log_std - 0.5 * math.log(2 * math.pi)
        return lp.sum(-1)


# ---------------------------------------------------------------------------------------------
# actor-critic
# ---------------------------------------------------------------------------------------------

class ActOutput(NamedTuple):
    action: torch.Tensor    # [B, *action_shape]
    logprob: torch.Tensor   # [B]
    value: torch.Tensor     # [B]
    state: State            # the core's state after consuming the observation


class Evaluation(NamedTuple):
    logprob: torch.Tensor     # [T, B]
    entropy: torch.Tensor     # [T, B]
    value: torch.Tensor       # [T, B]
    uniform_kl: torch.Tensor  # [T, B] KL(uniform || pi), 0 for Box actions


DESCRIPTION_FORMAT = "urlstm-policy"
DESCRIPTION_VERSION = 1


class ActorCritic(nn.Module):
    """Encoder -> memory core -> policy and value heads.

    Args:
        observation_space: a single env's observation space; a Dict with an ``action_mask`` key
            masks Discrete / MultiDiscrete actions (``policies.action_mask``; a mask of the wrong
            shape raises ``ActionMaskError``).
        action_space: a single env's action space (Discrete, MultiDiscrete or Box).
        core: a spec of ``policies.cores.CORE_SPECS`` (e.g. "urlstm", "lstm", "mlp").
        hidden_size: core width.
        num_layers: stacked core layers.
        embed_size: width of the core's input.
        prev_action_reward: append the previous action and reward to the encoded observation.
        core_options: extra keyword arguments for ``make_core``.
        head_gain: orthogonal-init gain of the policy head's weights (0.01: a near-uniform first
            policy, as in CleanRL; 1.0 lets the first updates tell observations apart, which
            MiniGrid-MemoryS7 needs).
        learn_initial_state: every episode starts from a learned core state (one parameter per
            state tensor and layer) instead of zeros.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 core: str = "urlstm", hidden_size: int = 128, num_layers: int = 1,
                 embed_size: int = 128, prev_action_reward: bool = True,
                 core_options: dict[str, Any] | None = None, head_gain: float = 0.01,
                 learn_initial_state: bool = False):
        super().__init__()
        self.observation_space, self.action_space = observation_space, action_space
        # every constructor argument but the spaces, as plain data (see ``describe``)
        self.arguments = {"core": core, "hidden_size": hidden_size, "num_layers": num_layers,
                          "embed_size": embed_size, "prev_action_reward": prev_action_reward,
                          "core_options": dict(core_options or {}), "head_gain": head_gain,
                          "learn_initial_state": learn_initial_state}
        self.head = ActionHead(action_space, hidden_size, head_gain)
        # observations with an action mask: it masks the logits and is not an input
        self.masked = has_mask(observation_space)
        if self.masked:
            check_mask_space(observation_space.spaces[MASK_KEY], self.head.nvec, action_space)
        self.encoder = make_encoder(without_mask(observation_space) if self.masked
                                    else observation_space)
        self.prev_action_reward = prev_action_reward
        in_size = self.encoder.out_size + (self.head.encoding_size + 1 if prev_action_reward else 0)
        self.trunk = nn.Sequential(nn.Linear(in_size, embed_size), nn.ReLU())
        nn.init.orthogonal_(self.trunk[0].weight, math.sqrt(2))
        nn.init.zeros_(self.trunk[0].bias)
        self.core = make_core(core, embed_size, hidden_size, num_layers, **(core_options or {}),
                              learn_initial_state=learn_initial_state)
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.orthogonal_(self.value_head.weight, 1.0)
        nn.init.zeros_(self.value_head.bias)

    # -- description ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What rebuilds this network without its env, as JSON-able data (no weights)."""
        return {"format": DESCRIPTION_FORMAT, "version": DESCRIPTION_VERSION,
                "observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space), "arguments": dict(self.arguments)}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> ActorCritic:
        """A freshly initialised network shaped as ``describe`` said (load the weights next).

        Raises:
            ValueError: not a description of this version, or one that no longer builds.
        """
        if not isinstance(description, dict) or description.get("format") != DESCRIPTION_FORMAT:
            raise ValueError("not a urlstm policy description")
        if description.get("version") != DESCRIPTION_VERSION:
            raise ValueError(f"policy description version {description.get('version')!r}, "
                             f"expected {DESCRIPTION_VERSION}")
        obs_space = space_from_dict(description["observation_space"])
        action_space = space_from_dict(description["action_space"])
        return cls(obs_space, action_space, **description["arguments"])

    # -- helpers ------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        """The core's initial state for ``batch_size`` envs: zeros or the learned one (a tuple of
        [L, B, H]; () for "mlp")."""
        return tuple(self.core.initial_state(batch_size, device))

    def _inputs(self, obs: Obs, reset: torch.Tensor, prev_action: torch.Tensor | None,
                prev_reward: torch.Tensor | None, lead: tuple[int, ...]) -> torch.Tensor:
        """Encode [*lead, ...] inputs -> [*lead, embed_size]."""
        n = math.prod(lead)
        flat = tree_map(lambda x: x.reshape(n, *x.shape[len(lead):]), obs)
        parts = [self.encoder(flat)]
        if self.prev_action_reward:
            keep = (~reset.reshape(n, 1)).float()                       # zero them at episode starts
            if prev_action is None:
                pa = torch.zeros(n, self.head.encoding_size, device=keep.device)
                pr = torch.zeros(n, 1, device=keep.device)
            else:
                pa = self.head.encode(prev_action.reshape(n, *prev_action.shape[len(lead):]))
                pr = prev_reward.reshape(n, 1).float()
            parts += [pa * keep, pr * keep]
        dtype = self.trunk[0].weight.dtype
        return self.trunk(torch.cat([p.to(dtype) for p in parts], 1)).reshape(*lead, -1)

    def action_mask(self, obs: Obs, lead: tuple[int, ...]) -> torch.Tensor | None:
        """The observations' action mask as bool [*lead, sum(nvec)]; None without one.

        Raises:
            ActionMaskError: a mask of the wrong shape.
        """
        if not self.masked:
            return None
        return mask_from_obs(obs, lead, sum(self.head.nvec))

    # -- acting -------------------------------------------------------------------------------
    def act(self, obs: Obs, state: State, reset: torch.Tensor, prev_action: torch.Tensor | None = None,
            prev_reward: torch.Tensor | None = None, greedy: bool = False) -> ActOutput:
        """One step for a batch of envs.

        Args:
            obs: [B, ...] tensor tree.
            state: core state before this observation.
            reset: [B] bool, True where ``obs`` starts an episode (state and previous action/reward
                are zeroed first).
            prev_action: [B, *action_shape] action taken before ``obs`` (None: zeros).
            prev_reward: [B] reward received before ``obs`` (None: zeros).
            greedy: take the most likely action.

        Returns:
            ActOutput(action [B, ...], logprob [B], value [B], state).

        Raises:
            ActionMaskError: ``obs`` has an action mask of the wrong shape, or one that allows no
                action for some env.
        """
        mask = self.action_mask(obs, (reset.shape[0],))                             # [B, A]
        if mask is not None:
            check_allowed(mask, self.head.nvec)
        x = self._inputs(obs, reset, prev_action, prev_reward, (reset.shape[0],))   # [B, E]
        y, state = self.core.step(x, state, reset)                                 # [B, H]
        action, logprob = self.head.sample(y, greedy, mask)
        return ActOutput(action, logprob, self.value_head(y).squeeze(-1), state)

    def value(self, obs: Obs, state: State, reset: torch.Tensor, prev_action: torch.Tensor | None = None,
              prev_reward: torch.Tensor | None = None) -> torch.Tensor:
        """V(obs) [B] for one step with the given state (the state after it is discarded)."""
        x = self._inputs(obs, reset, prev_action, prev_reward, (reset.shape[0],))
        y, _ = self.core.step(x, state, reset)
        return self.value_head(y).squeeze(-1)

    # -- training -----------------------------------------------------------------------------
    def evaluate(self, obs: Obs, state0: State, reset: torch.Tensor, actions: torch.Tensor,
                 prev_action: torch.Tensor | None = None, prev_reward: torch.Tensor | None = None,
                 with_uniform_kl: bool = False):
        """Re-run training sequences from their stored start states.

        Args:
            obs: [T, B, ...] tensor tree (its action mask, if any, masks the distribution as it
                did when acting).
            state0: core state before ``obs[0]`` (tuple of [L, B, H]).
            reset: [T, B] bool episode starts (the core applies them inside the sequence).
            actions: [T, B, *action_shape] actions taken.
            prev_action: [T, B, *action_shape]; prev_reward: [T, B].
            with_uniform_kl: also return KL(uniform || pi) (see ``ActionHead.logprob_entropy``).

        Returns:
            (logprob, entropy, value), each [T, B]; with ``with_uniform_kl`` an
            ``Evaluation(logprob, entropy, value, uniform_kl)``.
        """
        lead = tuple(reset.shape)
        x = self._inputs(obs, reset, prev_action, prev_reward, lead)   # [T, B, E]
        y, _ = self.core(x, state0, reset)                              # [T, B, H]
        flat = y.reshape(-1, y.shape[-1])
        mask = self.action_mask(obs, lead)
        logprob, entropy, kl = self.head.logprob_entropy(
            flat, actions.reshape(-1, *actions.shape[2:]),
            None if mask is None else mask.reshape(flat.shape[0], -1))
        value = self.value_head(flat).squeeze(-1)
        out = Evaluation(logprob.reshape(lead), entropy.reshape(lead), value.reshape(lead), kl.reshape(lead))
        return out if with_uniform_kl else out[:3]

    @torch.no_grad()
    def sequence_start_states(self, obs: Obs, state0: State, reset: torch.Tensor,
                              prev_action: torch.Tensor, prev_reward: torch.Tensor, seq_len: int,
                              reference: bool = False) -> State:
        """Re-run a rollout from ``state0`` with the current weights (no gradient) and return the
        core state before steps 0, seq_len, 2 * seq_len, ... (PPO's training sequences).

        Args:
            obs: [T, B, ...] tensor tree; reset: [T, B] bool episode starts (applied inside);
                prev_action: [T, B, *action_shape]; prev_reward: [T, B].
            state0: core state before ``obs[0]`` (tuple of [L, B, H]).
            seq_len: a divisor of T.
            reference: step by step as acting does (the slow reference); else the encoder once
                over the rollout and the core's sequence path chunk by chunk.

        Returns:
            The states, each part stacked to [T / seq_len, *state_shape] (() for a core without
            state); the first is ``state0``.
        """
        T, B = reset.shape
        state, starts = state0, [state0]
        if reference:
            for t in range(T - seq_len):
                x = self._inputs(tree_map(lambda o, t=t: o[t], obs), reset[t], prev_action[t],
                                 prev_reward[t], (B,))
                _, state = self.core.step(x, state, reset[t])
                if (t + 1) % seq_len == 0:
                    starts.append(state)
        else:
            x = self._inputs(obs, reset, prev_action, prev_reward, (T, B))   # [T, B, E]
            for t in range(0, T - seq_len, seq_len):
                _, state = self.core(x[t:t + seq_len], state, reset[t:t + seq_len])
                starts.append(state)
        return tuple(torch.stack(parts) for parts in zip(*starts))
