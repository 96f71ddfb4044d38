"""sb3-contrib adapter: any `policies.cores` memory core inside `sb3_contrib.RecurrentPPO`.

RecurrentPPO hard-wires `torch.nn.LSTM` and stores its state as `RNNStates(pi=(h, c), vf=(h, c))`,
each tensor [n_layers, n_envs, H]. The policies below subclass its `RecurrentActorCriticPolicy`,
build a registry core where it builds `nn.LSTM` (same attribute names `lstm_actor` / `lstm_critic`,
so the algorithm, its buffers, `predict` and `evaluate_policy` are untouched) and replace
`_process_sequence`:

- sb3's (h, c) pair is mapped to the core's opaque state tuple and back. LSTM-family cores use it
  as is; GRU-family cores (state `(h,)`) carry a zero dummy `c`; `mlp` (state `()`) carries a zero
  dummy `h` and `c`. Nothing of this leaks into the cores.
- The buffer hands the policy a flat batch of `n_seq` zero-padded sequences; the episode starts
  become the core's reset mask `[T, n_seq]` (urlstm.md section 4: a start zeroes the state before
  that step), so the whole padded batch is one core call. Padding sits at the end of each sequence
  and is masked out of the loss by RecurrentPPO, so it changes nothing.
- Action masking, which RecurrentPPO lacks: a Dict observation with an `action_mask` key (the layout
  of `policies.action_mask`) masks the logits of Discrete / MultiDiscrete actions in `forward`
  (collecting), `get_distribution` (`predict`) and `evaluate_actions` (training), so the ratio is
  taken between the same masked distributions. A row that allows nothing is left unmasked: the
  buffer's zero padding looks like that, and RecurrentPPO drops those rows from the loss. The
  features extractor still sees the mask as one more input, as sb3's extractors do with every key.

Example:
    >>> from sb3_contrib import RecurrentPPO
    >>> from policies.sb3 import URLSTMPolicy
    >>> model = RecurrentPPO(URLSTMPolicy, "CartPole-v1",
    ...                      policy_kwargs={"core": "urlstm", "hidden_size": 128})
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from policies.action_mask import MASK_KEY, masked_logits
from policies.cores import make_core

__all__ = ["PolicyArgumentError", "URLSTMCnnPolicy", "URLSTMMultiInputPolicy", "URLSTMPolicy"]

_DEFAULT_HIDDEN = 256  # RecurrentActorCriticPolicy's default lstm_hidden_size
# torch.nn.LSTM arguments sb3-contrib passes through lstm_kwargs: dropout reaches the core; the others
# are accepted at the value that changes nothing (sb3's buffers are time-major, one direction, no
# projection)
_LSTM_NO_OPS = {"bias": True, "batch_first": False, "bidirectional": False, "proj_size": 0}


class PolicyArgumentError(AssertionError, ValueError):
    """An invalid combination of the policy's arguments. An AssertionError, as sb3-contrib raises for
    the same combinations (code written for it catches this), and a ValueError."""


def _core_options(lstm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """sb3-contrib's ``lstm_kwargs`` (torch.nn.LSTM's keyword arguments) as core options."""
    options = {}
    for key, value in lstm_kwargs.items():
        if key == "dropout":
            options["dropout"] = value
        elif key in _LSTM_NO_OPS and value == _LSTM_NO_OPS[key]:
            continue
        else:
            raise ValueError(
                f"lstm_kwargs {key}={value!r} is not supported by the cores; they take dropout "
                f"(and {', '.join(f'{k}={v!r}' for k, v in _LSTM_NO_OPS.items())}); core options go "
                "in core_kwargs"
            )
    return options


class URLSTMPolicy(RecurrentActorCriticPolicy):
    """RecurrentPPO policy whose memory is any core of `policies.cores` (MLP features).

    Takes every argument of sb3-contrib's `RecurrentActorCriticPolicy` with the same meaning
    (`lstm_hidden_size`, `n_lstm_layers`, `shared_lstm`, `enable_critic_lstm`, ...), plus:

    Args:
        core: core spec of the registry (`policies.cores.CORE_SPECS`), e.g. "urlstm", "lstm",
            "gru", "urgru", "mlp", "lstm:CR".
        hidden_size: alias of `lstm_hidden_size`.
        lstm_kwargs: sb3-contrib's torch.nn.LSTM arguments: `dropout` (between stacked layers, as
            torch's) reaches the core; `bias`, `batch_first`, `bidirectional` and `proj_size` are
            accepted at their defaults.
        core_kwargs: options passed to `make_core` (e.g. `impl`, `forget_bias`, `dropout`).

    Invalid shared/critic core combinations raise `PolicyArgumentError`, an AssertionError as in
    sb3-contrib.

    With `core="lstm"` the parameters are named and initialised like stock `MlpLstmPolicy`'s, so
    a state_dict moves between the two and the same seed gives the same initial weights.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lstm_hidden_size: int = _DEFAULT_HIDDEN,
        n_lstm_layers: int = 1,
        shared_lstm: bool = False,
        enable_critic_lstm: bool = True,
        lstm_kwargs: dict[str, Any] | None = None,
        core: str = "urlstm",
        hidden_size: int | None = None,
        core_kwargs: dict[str, Any] | None = None,
    ):
        if hidden_size is not None:
            if lstm_hidden_size not in (_DEFAULT_HIDDEN, hidden_size):
                raise ValueError(
                    f"hidden_size={hidden_size} and lstm_hidden_size={lstm_hidden_size} disagree; "
                    "pass only one of them"
                )
            lstm_hidden_size = hidden_size
        if shared_lstm and enable_critic_lstm:
            raise PolicyArgumentError(
                "shared_lstm=True needs enable_critic_lstm=False: choose between a shared core, "
                "a separate critic core, or none for the critic"
            )
        if shared_lstm and not share_features_extractor:
            raise PolicyArgumentError("shared_lstm=True needs share_features_extractor=True")
        lstm_options = _core_options(lstm_kwargs or {})

        # Same construction order as RecurrentActorCriticPolicy.__init__ (base networks, actor
        # core, critic Linear or core, optimizer), so a seed draws the same initial weights.
        self.lstm_output_dim = lstm_hidden_size
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        self.core_spec = core
        self.lstm_kwargs = lstm_kwargs or {}
        self._lstm_options = lstm_options
        self.core_kwargs = core_kwargs or {}
        self.n_lstm_layers = n_lstm_layers
        self.shared_lstm = shared_lstm
        self.enable_critic_lstm = enable_critic_lstm
        self.lstm_actor = self._make_core()
        # predict() starts from zeros of this shape: [n_layers, 1, H]
        self.lstm_hidden_state_shape = (n_lstm_layers, 1, lstm_hidden_size)
        self.critic = None
        self.lstm_critic = None
        if not (shared_lstm or enable_critic_lstm):
            self.critic = nn.Linear(self.features_dim, lstm_hidden_size)
        if enable_critic_lstm:
            self.lstm_critic = self._make_core()
        self._state_arity = self._check_state_layout(self.lstm_actor)
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _make_core(self) -> nn.Module:
        options = {**self._lstm_options, **self.core_kwargs}
        return make_core(
            self.core_spec, self.features_dim, self.lstm_output_dim, self.n_lstm_layers, **options
        )

    @staticmethod
    def _check_state_layout(core: nn.Module) -> int:
        """Number of state tensors of `core` (0, 1 or 2); fails if sb3's (h, c) can't carry them."""
        state = core.initial_state(1, th.device("cpu"))
        expected = (core.num_layers, 1, core.hidden_size)
        if len(state) > 2 or any(tuple(s.shape) != expected for s in state):
            shapes = [tuple(s.shape) for s in state]
            raise ValueError(
                f"core state {shapes} does not fit RecurrentPPO's (h, c) buffers of shape "
                f"{expected}; only cores with at most two [num_layers, B, hidden_size] tensors work"
            )
        return len(state)

    def _process_sequence(  # type: ignore[override]
        self,
        features: th.Tensor,
        lstm_states: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
        lstm: nn.Module,
    ) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """Run `lstm` (a core) over sb3's flat batch of padded sequences.

        Args:
            features: [n_seq * T, D], sequence-major (sequence 0's T steps first). T = 1 while
                collecting rollouts, the padded length during training.
            lstm_states: sb3 (h, c), each [n_layers, n_seq, H]: the state before each
                sequence's first step.
            episode_starts: [n_seq * T] float, 1.0 where an observation starts an episode.
            lstm: the actor or critic core.

        Returns:
            Core output [n_seq * T, H] in the same order, and the final state as sb3 (h, c).
        """
        h = lstm_states[0]
        n_seq = h.shape[1]
        x = features.reshape(n_seq, -1, lstm.input_size).transpose(0, 1)  # [T, n_seq, D]
        reset = episode_starts.reshape(n_seq, -1).transpose(0, 1) > 0.5  # [T, n_seq]
        state = tuple(lstm_states[: self._state_arity])
        y, state = lstm(x, state, reset)  # y [T, n_seq, H]
        y = y.transpose(0, 1).reshape(-1, lstm.hidden_size)  # [n_seq * T, H]
        if self._state_arity == 2:
            return y, (state[0], state[1])
        if self._state_arity == 1:
            return y, (state[0], th.zeros_like(state[0]))
        return y, (th.zeros_like(h), th.zeros_like(h))

    # -- action masking ------------------------------------------------------------------------
    _action_mask: th.Tensor | None = None

    @contextmanager
    def _masking(self, obs: Any) -> Iterator[None]:
        """Mask the distributions built inside the block with ``obs``'s action mask, if any."""
        self._action_mask = None
        if isinstance(obs, dict) and MASK_KEY in obs and isinstance(
                self.action_space, (spaces.Discrete, spaces.MultiDiscrete)):
            nvec = ([int(self.action_space.n)] if isinstance(self.action_space, spaces.Discrete)
                    else [int(n) for n in self.action_space.nvec])
            mask = obs[MASK_KEY]
            mask = th.cat(list(mask), -1) if isinstance(mask, (tuple, list)) else mask
            parts = (mask.reshape(mask.shape[0], -1) != 0).split(nvec, -1)
            # a row allowing nothing (the buffer's padding) stays unmasked
            self._action_mask = th.cat([p | ~p.any(-1, keepdim=True) for p in parts], -1)
        try:
            yield
        finally:
            self._action_mask = None

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        if self._action_mask is None:
            return super()._get_action_dist_from_latent(latent_pi)
        logits = masked_logits(self.action_net(latent_pi), self._action_mask)
        return self.action_dist.proba_distribution(action_logits=logits)

    def forward(self, obs: Any, lstm_states: Any, episode_starts: th.Tensor,
                deterministic: bool = False) -> tuple:
        with self._masking(obs):
            return super().forward(obs, lstm_states, episode_starts, deterministic)

    def get_distribution(self, obs: Any, lstm_states: Any, episode_starts: th.Tensor) -> tuple:
        with self._masking(obs):
            return super().get_distribution(obs, lstm_states, episode_starts)

    def evaluate_actions(self, obs: Any, actions: th.Tensor, lstm_states: Any,
                         episode_starts: th.Tensor) -> tuple:
        with self._masking(obs):
            return super().evaluate_actions(obs, actions, lstm_states, episode_starts)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            share_features_extractor=self.share_features_extractor,
            lstm_hidden_size=self.lstm_output_dim,
            n_lstm_layers=self.n_lstm_layers,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            lstm_kwargs=self.lstm_kwargs,
            core=self.core_spec,
            core_kwargs=self.core_kwargs,
        )
        return data


class URLSTMCnnPolicy(URLSTMPolicy):
    """`URLSTMPolicy` for image observations (NatureCNN features, like `CnnLstmPolicy`)."""

    def __init__(self, *args: Any, features_extractor_class=NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class URLSTMMultiInputPolicy(URLSTMPolicy):
    """`URLSTMPolicy` for Dict observations (CombinedExtractor, like `MultiInputLstmPolicy`)."""

    def __init__(self, *args: Any, features_extractor_class=CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
