"""T-Maze, passive and active (after Ni et al., NeurIPS 2023, "When do transformers shine in RL?").

Corridor cells x = 0..L on row y = 0, junction at x = L, goal cells (L, +1) and (L, -1); the correct
goal ``goal_y`` is +1 or -1 at random each episode. Actions ``Discrete(4)``: 0 right, 1 up, 2 left,
3 down; moves into walls leave the agent in place (up/down only at the junction, left/right only on
row 0).

- Passive: the agent starts on the cue cell x = 0; the cue is shown in the first observation only.
  Episode length L + 1.
- Active: the cue cell is x = -1, one cell left of the start x = 0; the cue is shown whenever the
  agent stands on it. Episode length L + 3.

Observation float32 [2]: ``[0, goal_y]`` when the cue is shown, ``[0, 0]`` in the corridor,
``[1, y]`` at the junction and goal cells. Reward: at the last step 1.0 if the agent is on the
correct goal cell, else 0 (that is ``success``); at earlier steps -1/L whenever the agent lags the
optimal walk (x < t passive, x < t - 2 active). Every episode ends with ``terminated=True`` after
exactly L + 1 / L + 3 steps. Memory horizon L; a memoryless policy succeeds half the time.

A lag is irreversible: once behind the optimal walk the agent can never catch up; it pays -1/L at
every remaining step whatever it does and cannot reach the junction in time (success 0), and its
corridor observation is the same [0, 0] as on the optimal walk (only the previous reward, 0 or
-1/L, tells the two apart).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs._base import BatchedEnv, SingleEnv

_DX = np.array([1, 0, -1, 0], dtype=np.int64)  # right, up, left, down
_DY = np.array([0, 1, 0, -1], dtype=np.int64)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as int, or raise ValueError if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class TMazeVector(BatchedEnv):
    """Batched T-maze: ``num_envs`` mazes stepped with numpy; SAME_STEP autoreset (see BatchedEnv).

    Args:
        num_envs: N.
        length: corridor length L >= 1 (memory horizon).
        seed: env i uses seed + i on the first reset.
        render_mode: None or "rgb_array".

    Observations float32 [N, 2]; actions int [N] in {0, 1, 2, 3}. The variant is the class
    attribute ``active`` (cue one cell behind the start when True): the subclasses below.
    """

    active = False

    def __init__(
        self,
        num_envs: int,
        length: int = 50,
        seed: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.length = check_positive_int("length", length)
        obs_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        super().__init__(num_envs, obs_space, spaces.Discrete(4), seed, render_mode)
        self.min_x = -1 if self.active else 0
        self.episode_length = self.length + (3 if self.active else 1)
        self._lag = 2 if self.active else 0  # optimal walk: x = t - lag
        n = self.num_envs
        self._x = np.zeros(n, dtype=np.int64)  # [N]
        self._y = np.zeros(n, dtype=np.int64)  # [N]
        self._t = np.zeros(n, dtype=np.int64)  # [N] steps taken this episode
        self._goal = np.ones(n, dtype=np.int64)  # [N] +1 or -1
        self._penalty = np.float32(-1.0 / self.length)

    def _reset_envs(self, idx: np.ndarray) -> None:
        self._x[idx] = 0
        self._y[idx] = 0
        self._t[idx] = 0
        self._goal[idx] = np.where(self._uniform(idx, 0, 1)[:, 0] < 0.5, 1, -1)

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, t, L = self._x, self._y, self._t, self.length
        on_row = y == 0
        at_junction = x == L
        x += _DX[actions] * on_row
        np.maximum(x, self.min_x, out=x)
        np.minimum(x, L, out=x)
        y += _DY[actions] * at_junction
        np.maximum(y, -1, out=y)
        np.minimum(y, 1, out=y)
        t += 1
        terminated = t == self.episode_length
        success = (y == self._goal).astype(np.float32)
        lagging = x < t - self._lag
        reward = np.where(terminated, success, lagging * self._penalty).astype(np.float32)
        return reward, terminated, success

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        sl = slice(None) if idx is None else idx
        x, y, goal = self._x[sl], self._y[sl], self._goal[sl]
        cue = (x == -1) if self.active else (self._t[sl] == 0)
        obs = np.empty((len(x), 2), dtype=np.float32)  # [N, 2]
        obs[:, 0] = x == self.length
        obs[:, 1] = y + goal * cue
        return obs

    def _render_env(self, i: int, cell: int = 8, max_cols: int = 64) -> np.ndarray:
        """Rows y = +1, 0, -1 of the maze around the agent: corridor black, walls grey, cue blue,
        correct goal green, wrong goal red, agent white. uint8 [3 * cell, cols * cell, 3]."""
        L, x0 = self.length, self.min_x
        ncols = L - x0 + 1
        cols = min(ncols, max_cols)
        first = int(np.clip(self._x[i] - cols // 2, x0, L - cols + 1))
        img = np.full((3, ncols, 3), 96, dtype=np.uint8)  # walls
        img[1, :] = 0
        img[1, 0] = (0, 0, 255)  # cue cell: x = -1 active, x = 0 passive
        goal_row = 1 - self._goal[i]  # y = +1 -> row 0
        img[goal_row, L - x0] = (0, 200, 0)
        img[2 - goal_row, L - x0] = (200, 0, 0)
        img[1 - self._y[i], self._x[i] - x0] = 255
        img = img[:, first - x0 : first - x0 + cols]
        return np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)


class TMazePassiveVector(TMazeVector):
    """Batched passive T-maze; see :class:`TMazeVector`."""


class TMazeActiveVector(TMazeVector):
    """Batched active T-maze; see :class:`TMazeVector`."""

    active = True


class TMazePassiveEnv(SingleEnv):
    """Single passive T-maze (``urlstm/TMazePassive-v0``, kwarg ``length``); obs float32 [2]."""

    batched_cls = TMazePassiveVector


class TMazeActiveEnv(SingleEnv):
    """Single active T-maze (``urlstm/TMazeActive-v0``, kwarg ``length``); obs float32 [2]."""

    batched_cls = TMazeActiveVector
