"""Gymnasium spaces <-> plain JSON data, so a checkpoint can rebuild its policy without the env.

Covers Box, Discrete, MultiDiscrete, MultiBinary, Dict and Tuple. Every value is a dict, list,
str, int, float or bool; infinite Box bounds are written as the strings ``"inf"`` and ``"-inf"``
so the result is strict JSON; a Box whose bound is one number everywhere stores that
number once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

_INFINITE = {"inf": math.inf, "-inf": -math.inf}


def _number(x: float) -> float | str:
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _bound(array: np.ndarray) -> Any:
    """A Box bound: one number when constant, else nested lists."""
    flat = array.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return _number(flat[0].item())
    return _encode_nested(array.tolist())


def _encode_nested(value: Any) -> Any:
    return [_encode_nested(v) for v in value] if isinstance(value, list) else _number(value)


def _decode_nested(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_nested(v) for v in value]
    return _INFINITE[value] if isinstance(value, str) else value


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """Describe ``space`` as JSON-able data; raises ValueError for a space outside the codec."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist(),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(k) for k in n]}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict",
                "spaces": [[key, space_to_dict(s)] for key, s in space.spaces.items()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_dict(s) for s in space.spaces]}
    raise ValueError(f"cannot describe space {space}: use Box, Discrete, MultiDiscrete, "
                     "MultiBinary, Dict or Tuple")


def space_from_dict(data: dict[str, Any]) -> spaces.Space:
    """The space ``space_to_dict`` described; raises ValueError for anything else."""
    try:
        kind = data["type"]
        if kind == "Box":
            shape = tuple(data["shape"])
            dtype = np.dtype(data["dtype"])
            low, high = (np.broadcast_to(np.asarray(_decode_nested(data[k]), dtype), shape).copy()
                         for k in ("low", "high"))
            return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
        if kind == "Discrete":
            return spaces.Discrete(data["n"], start=data["start"], dtype=data["dtype"])
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.asarray(data["nvec"]), dtype=data["dtype"],
                                        start=np.asarray(data["start"]))
        if kind == "MultiBinary":
            return spaces.MultiBinary(data["n"])
        if kind == "Dict":
            # pairs, not a dict: gymnasium sorts a dict's keys, the encoder needs their order
            return spaces.Dict([(key, space_from_dict(sub)) for key, sub in data["spaces"]])
        if kind == "Tuple":
            return spaces.Tuple(tuple(space_from_dict(sub) for sub in data["spaces"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"bad space description {str(data)[:120]}: "
                         f"{type(err).__name__}: {err}") from None
    raise ValueError(f"unknown space type {kind!r} in a space description")
