"""Action masks read from a Dict observation's ``action_mask`` key (Gymnasium / PettingZoo).

For ``Discrete(n)`` actions the mask is n flags; for ``MultiDiscrete(nvec)`` it is the
components' flags concatenated, ``sum(nvec)`` of them (sb3-contrib's MaskablePPO layout), or a
Tuple of one ``nvec[i]``-flag mask per component. A flag is nonzero (or True) where the action is
allowed. The policy's logits of masked actions are set to the lowest finite value of their dtype,
so they get probability exactly 0 (never sampled, never the argmax) and the log-probabilities,
entropy and KL terms are those of the distribution renormalised over the allowed actions, with
no inf or NaN anywhere (a masked entry's gradient is 0).
"""

from __future__ import annotations

import torch
from gymnasium import spaces

MASK_KEY = "action_mask"


class ActionMaskError(ValueError):
    """An action mask that cannot be used: a wrong shape, a mask for Box actions, or an env whose
    mask allows no action (of some component). The message is one line."""


def has_mask(space: spaces.Space) -> bool:
    """Whether observations of ``space`` carry an action mask (a top-level Dict key)."""
    return isinstance(space, spaces.Dict) and MASK_KEY in space.spaces


def without_mask(space: spaces.Dict) -> spaces.Dict:
    """``space`` without its mask key, the other keys in their order (what the encoder reads)."""
    return spaces.Dict([(k, s) for k, s in space.spaces.items() if k != MASK_KEY])


def check_mask_space(space: spaces.Space, nvec: list[int], action_space: spaces.Space) -> None:
    """Raise ``ActionMaskError`` unless ``space`` (the mask's subspace) fits ``nvec``.

    Args:
        space: the observation space's ``action_mask`` entry.
        nvec: the action components' sizes (``[n]`` for Discrete, ``[]`` for Box).
        action_space: for the message.
    """
    if not nvec:
        raise ActionMaskError(f"the observation has an {MASK_KEY!r} key but the action space "
                              f"{action_space} is not Discrete or MultiDiscrete")
    if isinstance(space, spaces.Tuple):
        shapes = [tuple(s.shape or ()) for s in space.spaces]
        if shapes != [(n,) for n in nvec]:
            raise ActionMaskError(f"{MASK_KEY!r} is a Tuple of masks shaped {shapes}; the action "
                                  f"space {action_space} needs {[(n,) for n in nvec]}")
        return
    width = sum(nvec)
    if tuple(space.shape or ()) != (width,):
        layout = ", the components' flags concatenated" if len(nvec) > 1 else ""
        raise ActionMaskError(f"{MASK_KEY!r} has shape {tuple(space.shape or ())}; the action space "
                              f"{action_space} needs ({width},): one flag per action{layout}")


def mask_from_obs(obs: dict, lead: tuple[int, ...], width: int) -> torch.Tensor:
    """The mask of a batch of observations as bool [*lead, width] (True: allowed).

    Raises:
        ActionMaskError: a mask of another shape.
    """
    mask = obs[MASK_KEY]
    if isinstance(mask, (tuple, list)):
        mask = torch.cat(list(mask), -1)
    if tuple(mask.shape) != (*lead, width):
        raise ActionMaskError(f"{MASK_KEY!r} has shape {tuple(mask.shape)}, expected "
                              f"{(*lead, width)}: one flag per action for each env")
    return mask if mask.dtype == torch.bool else mask != 0


def check_allowed(mask: torch.Tensor, nvec: list[int]) -> None:
    """Raise ``ActionMaskError`` where a row of ``mask`` [N, sum(nvec)] allows no action of some
    component (one sync with the device)."""
    ok = torch.stack([part.any(-1) for part in mask.split(nvec, -1)], -1)   # [N, components]
    if not bool(ok.all()):
        env, comp = (int(i) for i in (~ok).nonzero()[0])
        which = f" in action component {comp}" if len(nvec) > 1 else ""
        raise ActionMaskError(f"{MASK_KEY!r} allows no action{which} for env {env}: "
                              "every env needs at least one allowed action")


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """logits [N, sum(nvec)] with the masked entries (mask False) at the dtype's lowest value."""
    if mask is None:
        return logits
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
