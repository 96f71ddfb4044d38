"""Export one step of a trained policy, with the recurrent state as explicit inputs and outputs.

The graph (ONNX or TorchScript) has the inputs, in this order,

    obs                  [B, *obs_shape] (a Dict / Tuple space gives one input per leaf,
                         named ``obs.<key>`` / ``obs.<i>``); float32, int64 for Discrete and
                         MultiDiscrete, uint8 for uint8 images
    state_0, state_1...  the core's state tensors, each [num_layers, B, hidden_size] float32
                         ([K - 1, B, embed_size] for stack:K)
                         (two for LSTM-like cores, one for GRU-like ones, none for ``mlp``)
    episode_start        [B] bool: True clears the state (to zeros, or to the learned initial
                         state of a policy trained with --learn-initial-state) and the previous
                         action and reward
    prev_action          [B, *action_shape] the network's previous action (int64 index from 0,
                         without a Discrete space's ``start``; float32 for Box)
    prev_reward          [B] float32 the reward that came with ``obs``
                         (these two are absent where the network does not read them:
                         a policy trained with ``--no-prev-action-reward``)

and the outputs ``logits`` [B, sum(nvec)] (Discrete / MultiDiscrete; one block of unnormalised
log-probabilities per component) or ``action_mean`` and ``action_log_std`` [B, action_dim]
(Box), then ``value`` [B] and ``next_state_0``, ``next_state_1``... shaped as the state inputs.
A Dict observation's ``action_mask`` (input ``obs.action_mask``, float32
[B, sum(nvec)], nonzero where allowed) masks ``logits``: masked entries are float32's lowest finite
value, so an argmax or a softmax draw never picks them. The batch size B is free. Every core is exported through its reference path (the plain equations;
the compiled and Triton scans cannot be traced), which the cores' tests hold equal to the fast path.
"""

from __future__ import annotations

import copy
import inspect
import os
import time
import warnings
from typing import Any

import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space
from torch import nn

from policies.action_mask import masked_logits
from policies.actor_critic import ActorCritic, obs_to_tensor
from policies.deploy import RecurrentPolicy, load_policy, one_line

FORMATS = ("onnx", "torchscript")
OPSET = 17


class ExportError(ValueError):
    """An unknown format, an output that cannot be written, or a policy that cannot be exported."""


def _leaves(space: spaces.Space, prefix: str = "obs") -> list[tuple[str, spaces.Space]]:
    """(input name, leaf space) of every leaf of an observation space, depth first."""
    if isinstance(space, spaces.Dict):
        return [leaf for key, sub in space.spaces.items()
                for leaf in _leaves(sub, f"{prefix}.{key}")]
    if isinstance(space, spaces.Tuple):
        return [leaf for i, sub in enumerate(space.spaces)
                for leaf in _leaves(sub, f"{prefix}.{i}")]
    return [(prefix, space)]


def _unflatten(space: spaces.Space, flat: list[torch.Tensor]) -> Any:
    """Rebuild the observation tree from its leaves (consumed from the front of ``flat``)."""
    if isinstance(space, spaces.Dict):
        return {key: _unflatten(sub, flat) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_unflatten(sub, flat) for sub in space.spaces)
    return flat.pop(0)


class OneStep(nn.Module):
    """One step of an ``ActorCritic`` as a function of plain tensors (see the module docstring).

    Holds a CPU copy of the network in eval mode whose core runs its reference path.
    """

    def __init__(self, model: ActorCritic):
        super().__init__()
        self.model = copy.deepcopy(model).to("cpu").float().eval()
        if hasattr(self.model.core, "impl"):
            self.model.core.impl = "reference"
        self.num_obs = len(_leaves(model.observation_space))
        self.num_state = len(model.initial_state(1, "cpu"))
        self.gaussian = self.model.head.kind == "gaussian"

    def input_names(self) -> list[str]:
        return ([name for name, _ in _leaves(self.model.observation_space)]
                + [f"state_{i}" for i in range(self.num_state)] + ["episode_start"]
                + (["prev_action", "prev_reward"] if self.model.prev_action_reward else []))

    def output_names(self) -> list[str]:
        head = ["action_mean", "action_log_std"] if self.gaussian else ["logits"]
        return head + ["value"] + [f"next_state_{i}" for i in range(self.num_state)]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        obs = _unflatten(m.observation_space, list(inputs[:self.num_obs]))
        state = inputs[self.num_obs:self.num_obs + self.num_state]
        episode_start, *previous = inputs[self.num_obs + self.num_state:]
        prev_action, prev_reward = previous if previous else (None, None)
        reset = episode_start.bool()
        x = m._inputs(obs, reset, prev_action, prev_reward, (reset.shape[0],))   # [B, E]
        # the reset convention applied before the step, so the scan itself never branches on data
        keep = (~reset).to(x.dtype).reshape(1, -1, 1)                           # [1, B, 1]
        y, new_state = m.core._scan(x.unsqueeze(0), m.core.apply_reset(state, keep), None)
        y = y.squeeze(0)                                                         # [B, H]
        out = masked_logits(m.head.linear(y), m.action_mask(obs, (reset.shape[0],)))
        head = (out, m.head.log_std.expand_as(out)) if self.gaussian else (out,)
        return (*head, m.value_head(y).squeeze(-1), *new_state)

    def example_inputs(self, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
        """Random inputs of every kind (half of the envs at an episode start)."""
        m = self.model
        sample = batch_space(m.observation_space, batch_size).sample()
        leaves = _flat_tree(obs_to_tensor(m.observation_space, sample, "cpu"))
        state = [torch.randn_like(s) for s in m.initial_state(batch_size, "cpu")]
        action = torch.as_tensor(batch_space(m.action_space, batch_size).sample())
        if m.head.kind != "gaussian":
            action = action - torch.as_tensor(getattr(m.action_space, "start", 0))
        start = torch.arange(batch_size) % 2 == 0
        previous = (action.to(m.head.action_dtype()), torch.randn(batch_size))
        return (*leaves, *state, start, *(previous if m.prev_action_reward else ()))


def _flat_tree(tree: Any) -> list[torch.Tensor]:
    """The leaves of a tensor tree, in the order of ``_leaves``."""
    if isinstance(tree, (dict, tuple)):
        items = tree.values() if isinstance(tree, dict) else tree
        return [leaf for item in items for leaf in _flat_tree(item)]
    return [tree]


def export(policy: RecurrentPolicy | ActorCritic, path: str | os.PathLike,
           format: str = "onnx") -> str:
    """Write one step of ``policy`` to ``path`` as ONNX or TorchScript (see the module docstring).

    Args:
        policy: a ``RecurrentPolicy`` (from ``load_policy``) or an ``ActorCritic``.
        path: the output file (its folder must exist).
        format: ``"onnx"`` (run it with onnxruntime) or ``"torchscript"`` (``torch.jit.load``).

    Returns:
        The path written.

    Raises:
        ExportError: an unknown format, an output that cannot be written, onnx missing, or a
            graph that does not trace; the message is one line.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ExportError(f"cannot write {path}: it is a folder")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ExportError(f"cannot write {path}: no writable folder {folder}")
    step = OneStep(policy.model if isinstance(policy, RecurrentPolicy) else policy)
    example = step.example_inputs()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the legacy tracer is the exporter that needs neither onnxscript nor torch.export; its
            # deprecation and tracer notes say nothing a user can act on
            warnings.simplefilter("ignore")
            if format == "torchscript":
                torch.jit.trace(step, example, check_trace=False).save(tmp)
            else:
                _onnx_export(step, example, tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise ExportError(f"cannot write {path}: {err.strerror or type(err).__name__}") from None
    except ImportError as err:
        raise ExportError(f"ONNX export needs {err.name}: pip install 'urlstm[export]'") from None
    except Exception as err:  # noqa: BLE001 - a tracer or exporter failure: one line, no traceback
        raise ExportError(f"export to {format} failed: {type(err).__name__}: "
                          f"{one_line(err)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _onnx_export(step: OneStep, example: tuple[torch.Tensor, ...], file: str) -> None:
    import onnx  # noqa: F401 - the exporter needs it; missing, it says which extra to install

    names_in, names_out = step.input_names(), step.output_names()
    dynamic = {name: {0: "batch"} for name in names_in + names_out if "state" not in name}
    dynamic.update({name: {1: "batch"} for name in names_in + names_out if "state" in name})
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    torch.onnx.export(step, example, file, input_names=names_in, output_names=names_out,
                      dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, **kwargs)


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike,
                      format: str = "onnx") -> dict[str, Any]:
    """Load a run folder or checkpoint and export its policy: what ``train.py export`` runs.

    Returns:
        {"file", "format", "inputs", "outputs", "seconds"} (names in graph order).

    Raises:
        PolicyLoadError, ExportError: one-line reasons.
    """
    if format not in FORMATS:  # before loading: a typo should not wait for the checkpoint
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    policy = load_policy(checkpoint, "cpu")
    start = time.perf_counter()
    file = export(policy, out, format)
    step = OneStep(policy.model)
    return {"file": file, "format": format, "inputs": step.input_names(),
            "outputs": step.output_names(), "seconds": round(time.perf_counter() - start, 3)}
