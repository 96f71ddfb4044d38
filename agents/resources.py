"""Will the run fit? Memory estimated from the config before anything large is allocated, and a run
folder checked for writing before any time is spent.

The estimates are generous upper bounds (float32 everywhere, every saved activation of a minibatch
alive at once), so a configuration that is refused would not have fitted, and one that passes may
still be close to the limit on a machine with little to spare.
"""

from __future__ import annotations

import os
import tempfile

import torch
from gymnasium import spaces

from agents.config import TrainConfig
from agents.evaluate import ACTIVATION_FLOATS, free_memory, gib
from agents.evaluate import space_elements as _elements
from policies.actor_critic import ActionHead, make_encoder

ENV_BYTES = 64 << 10  # one env's host memory, generous: a MiniGrid env measured 22 KiB, a native task's row far less
PROCESS_BYTES = 400 << 20  # one more Python process with torch imported (an IMPALA actor)


class ResourceError(RuntimeError):
    """The run cannot fit or cannot write where it was told to; the message is one line."""


def model_size(cfg: TrainConfig, obs_space: spaces.Space, act_space: spaces.Space) -> tuple[int, int]:
    """(parameters, recurrent-state floats per env) of the config's actor-critic, counted without
    building it: the encoder and the head are built on the meta device (no memory, sizes that do
    not grow with the flags), the trunk, the core and the value head are counted from their shapes,
    the core as four gate blocks per layer with the UR cores' extra bias (a GRU has three), plus
    one state's floats for a learned initial state."""
    with torch.device("meta"):
        encoder, head = make_encoder(obs_space), ActionHead(act_space, 1)
    E, H, L = cfg.embed_size, cfg.hidden_size, cfg.num_layers
    in_size = encoder.out_size + (head.encoding_size + 1 if cfg.prev_action_reward else 0)
    # the frame-stack core stack:K reads K inputs at once and keeps the K - 1 before as its state
    window = int(cfg.core.split(":")[1]) if cfg.core.startswith("stack:") else 1
    # per layer: four gate blocks of input and recurrent weights, two biases, a forget-gate bias
    core = sum(4 * H * ((E * window if layer == 0 else H) + H + 2) + H for layer in range(L))
    heads = (H + 1) * (head.linear.out_features + 1)
    state_floats = max(2 * L * H, (window - 1) * E)
    params = (sum(p.numel() for p in encoder.parameters()) + (in_size + 1) * E + core + heads
              + (state_floats if cfg.learn_initial_state else 0))
    return params, state_floats


def training_bytes(cfg: TrainConfig, obs_space: spaces.Space, act_space: spaces.Space
                   ) -> dict[str, int]:
    """Estimated bytes of each part of a training run: rollout storage, one minibatch's saved
    activations, model and optimizer, the envs (and IMPALA's actor processes)."""
    obs_elements, obs_bytes = _elements(obs_space)
    act_elements, _ = _elements(act_space)
    params, state_floats = model_size(cfg, obs_space, act_space)
    H, L = cfg.hidden_size, cfg.num_layers
    # per stored step: observation, previous action and reward, action, log-prob, value, reward,
    # final value, three flags; per sequence start: the core state
    step_bytes = obs_bytes + 8 * act_elements + 4 * 6 + 3
    # per trained step: the encoder's activations, the core's saved gates and states per layer
    # (up to 4 gate blocks, cell, previous h and c, output, effective gate), the heads
    act_bytes = 4 * (ACTIVATION_FLOATS * obs_elements + 3 * cfg.embed_size + L * 10 * H + 4 * H)
    if cfg.algo == "impala":
        envs_per_actor = cfg.num_envs // cfg.num_actors
        batch_steps = cfg.learner_batch * envs_per_actor * cfg.unroll_length
        in_flight = cfg.num_actors * 2 * envs_per_actor * cfg.unroll_length  # each actor's slots
        rollout = (batch_steps + in_flight) * step_bytes + 4 * state_floats * (cfg.learner_batch + 2) * cfg.num_envs
        minibatch_steps = batch_steps // cfg.learner_minibatches
        envs = cfg.num_envs * ENV_BYTES + cfg.num_actors * (PROCESS_BYTES + 4 * params)
    else:
        rollout = cfg.num_steps * cfg.num_envs * step_bytes + 4 * state_floats * cfg.num_sequences
        minibatch_steps = cfg.num_steps * cfg.num_envs // cfg.num_minibatches
        envs = cfg.num_envs * ENV_BYTES
    return {"rollout storage": rollout, "one minibatch's activations": minibatch_steps * act_bytes,
            "model and optimizer": 4 * 4 * params, "envs": envs}


def check_training_memory(cfg: TrainConfig, obs_space: spaces.Space, act_space: spaces.Space,
                          device: torch.device, free_host: int | None = None,
                          free_device: int | None = None) -> None:
    """Raise ResourceError naming what the run needs and what is free when it cannot fit; runs
    before the model is built, so a model too large to allocate is refused in a moment."""
    parts = training_bytes(cfg, obs_space, act_space)
    host_parts = dict(parts) if device.type != "cuda" else {"envs": parts["envs"]}
    checks = [("", host_parts, free_memory(torch.device("cpu")) if free_host is None else free_host)]
    if device.type == "cuda":
        on_device = {k: v for k, v in parts.items() if k != "envs"}
        checks.append((f" on {device}", on_device, free_memory(device) if free_device is None else free_device))
    for where, need, free in checks:
        total = sum(need.values())
        if free is not None and total > free:
            detail = ", ".join(f"{name} {gib(b)}" for name, b in sorted(need.items(), key=lambda kv: -kv[1]))
            raise ResourceError(f"this configuration needs about {gib(total)}{where} ({detail}) and {gib(free)} "
                                f"is free: lower --num-envs, --num-steps (IMPALA: --unroll-length), --hidden-size, "
                                f"--num-layers or --embed-size, or raise --num-minibatches")


def check_writable(folder: str, what: str = "run folder") -> None:
    """Create ``folder`` if needed and write and delete a file in it; ResourceError if that fails."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check."):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ResourceError(f"cannot write the {what} {os.path.abspath(folder)}: {reason}") from None
