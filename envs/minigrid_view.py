"""MiniGrid's partial view computed with numpy: the same observation as ``MiniGridEnv.gen_obs``.

MiniGrid builds every observation by copying the 7x7 view cell by cell into a new ``Grid``,
rotating it cell by cell (up to four times), propagating visibility and encoding each visible cell:
about 80 microseconds of Python per step, most of an env step. ``FastView`` keeps the encoded grid
(and which cells block the view) as arrays, updated when a cell changes (``Grid.set``, or a
``toggle`` of the cell in front), and cuts the view out of them with array slicing and rotations;
only the visibility propagation stays a loop, over plain Python lists, and its result is cached
per pattern of view-blocking cells. The result is identical to
MiniGrid's own (``tests/test_envs_minigrid_view.py`` compares them step by step on several tasks).

``envs.make`` installs it on the tasks of the ``minigrid`` package (MiniGrid and BabyAI: all 172
registered ids that build without extra packages gave identical observations on random walks). A
task of your own that changes an object other than through ``Grid.set`` or the toggle action
(e.g. ``door.is_open = True`` inside its ``step``) would need ``FastView`` to know; such classes,
being outside the package, keep MiniGrid's view unless you wrap them yourself.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

_EMPTY = (1, 0, 0)  # OBJECT_TO_IDX["empty"], colour 0, state 0: how MiniGrid encodes a None cell
_WALL = (2, 5, 0)  # Wall().encode(): what lies outside the grid


class FastView(gym.Wrapper):
    """Wrap a MiniGrid env (directly, before other wrappers) to compute its observations with numpy.

    Replaces ``env.unwrapped.gen_obs`` on that instance; the observation dict is unchanged
    (``image`` uint8 [view, view, 3], ``direction``, ``mission``).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        from minigrid.minigrid_env import MiniGridEnv

        base = env.unwrapped
        if not isinstance(base, MiniGridEnv):
            raise TypeError(f"FastView needs a MiniGrid env, got {type(base).__name__}")
        self._toggle = int(base.actions.toggle)
        self._recheck = None    # (x, y) of a cell to re-encode before the next observation
        self._seen: dict[bytes, np.ndarray] = {}  # opaque-cell pattern of a view -> its visibility mask
        self._grid = None       # the Grid the arrays mirror (kept alive, so identity is safe)
        self._pad = 0           # cells of wall around the grid in the arrays
        self._enc: np.ndarray   # [W + 2 pad, H + 2 pad, 3] uint8 encodings
        self._opaque: np.ndarray  # [W + 2 pad, H + 2 pad] bool: the cell hides what is behind it
        base.gen_obs = self.gen_obs  # instance attribute: MiniGridEnv.step/reset call this one

    def step(self, action: Any):
        if int(action) == self._toggle:
            # toggling a door changes its state without Grid.set: re-encode that cell in gen_obs
            self._recheck = self.env.unwrapped.front_pos
        try:
            return self.env.step(action)
        finally:
            self._recheck = None

    # -- the mirrored grid ------------------------------------------------------------------------
    def _put(self, i: int, j: int, v) -> None:
        p = self._pad
        self._enc[p + i, p + j] = _EMPTY if v is None else v.encode()
        self._opaque[p + i, p + j] = v is not None and not v.see_behind()

    def _mirror(self, grid, pad: int) -> None:
        """Encode the whole grid and hook its ``set`` so later changes reach the arrays."""
        W, H = grid.width, grid.height
        hooked = self._grid is grid  # only a larger view size: the hook is in place already
        self._grid, self._pad = grid, pad
        self._enc = np.empty((W + 2 * pad, H + 2 * pad, 3), dtype=np.uint8)
        self._enc[:] = _WALL
        self._opaque = np.ones((W + 2 * pad, H + 2 * pad), dtype=bool)
        for k, v in enumerate(grid.grid):
            self._put(k % W, k // W, v)
        if hooked:
            return
        stock_set = grid.set

        def set_and_mirror(i: int, j: int, v) -> None:
            stock_set(i, j, v)
            if self._grid is grid:
                self._put(i, j, v)

        grid.set = set_and_mirror

    # -- the observation --------------------------------------------------------------------------
    def gen_obs(self) -> dict[str, Any]:
        base = self.env.unwrapped
        s = base.agent_view_size
        if self._grid is not base.grid or self._pad < s:
            self._mirror(base.grid, s)
        elif self._recheck is not None:
            x, y = (int(c) for c in self._recheck)
            if 0 <= x < base.grid.width and 0 <= y < base.grid.height:
                self._put(x, y, base.grid.get(x, y))
        top_x, top_y, _, _ = base.get_view_exts(s)
        x0, y0 = top_x + self._pad, top_y + self._pad
        turn = _ROTATE[(-(base.agent_dir + 1)) % 4]  # MiniGrid rotates the view left agent_dir + 1 times
        enc = turn(self._enc[x0:x0 + s, y0:y0 + s])
        if base.see_through_walls:
            image = enc.copy()
        else:
            opaque = turn(self._opaque[x0:x0 + s, y0:y0 + s])
            key = opaque.tobytes()
            vis = self._seen.get(key)
            if vis is None:
                if len(self._seen) >= 4096:
                    self._seen.clear()
                vis = self._seen[key] = _visible(opaque.tolist(), s // 2, s - 1)[:, :, None]
            image = np.where(vis, enc, 0).astype(np.uint8)
        image[s // 2, s - 1] = _EMPTY if base.carrying is None else base.carrying.encode()
        return {"image": image, "direction": base.agent_dir, "mission": base.mission}


# np.rot90(m, k) over the first two axes for k = 0..3, as plain views (np.rot90 itself costs a few
# microseconds of argument handling per call)
_ROTATE = (
    lambda m: m,
    lambda m: m[:, ::-1].swapaxes(0, 1),
    lambda m: m[::-1, ::-1],
    lambda m: m.swapaxes(0, 1)[:, ::-1],
)


def _visible(opaque: list[list[bool]], ax: int, ay: int) -> np.ndarray:
    """``Grid.process_vis`` on a [W][H] list of "hides what is behind" flags; returns mask [W, H]."""
    W, H = len(opaque), len(opaque[0])
    mask = [[False] * H for _ in range(W)]
    mask[ax][ay] = True
    for j in reversed(range(H)):
        for i in range(W - 1):
            if mask[i][j] and not opaque[i][j]:
                mask[i + 1][j] = True
                if j > 0:
                    mask[i + 1][j - 1] = True
                    mask[i][j - 1] = True
        for i in reversed(range(1, W)):
            if mask[i][j] and not opaque[i][j]:
                mask[i - 1][j] = True
                if j > 0:
                    mask[i - 1][j - 1] = True
                    mask[i][j - 1] = True
    return np.array(mask, dtype=bool)
