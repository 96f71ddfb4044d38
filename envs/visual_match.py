"""Passive and Active Visual Match (after Hung et al. 2019, the RL task of the UR-LSTM paper).

A grid world seen through a 5x5 egocentric RGB view (uint8 [5, 5, 3]; the agent is the white centre
cell; walls grey, floor black, apples yellow, the colours pure red/green/blue; walls do not block
sight). Actions ``Discrete(4)``: 0 right, 1 up, 2 left, 3 down; walls and coloured squares block.
Three phases, with the agent moved to the next room when a phase's time is up:

1. Cue, 15 steps, room 5x9 (interior 3x7, a wall at column 4 with a door in the middle row splits
   it into two 3x3 halves). A square of one of the 3 colours (random per episode) sits at the east
   end of the middle row. Passive: the agent starts next to it, in view. Active: the agent starts in
   the centre of the west half, out of view (5 columns away), and must walk through the door into
   the east half (3 steps) to see it.
2. Distractor, D steps (``distractor_steps``, the memory length): room 9x11 (interior 7x9), agent
   enters at the centre, 10 apples at random cells; walking onto one gives reward 1 and respawns it
   at a random free cell. The cue is never visible.
3. Choice, up to 15 steps: room 7x7 (interior 5x5, all of it in view from the centre where the agent
   enters) with the 3 coloured squares at 3 random distinct cells among the 8 cells with even
   interior coordinates other than the centre, so squares never touch each other or the entry cell
   and each one can be reached in at most 4 steps. Moving into the square of the
   cue's colour gives reward 5 and ends the episode with ``success`` 1; moving into another ends it
   with 0 reward and ``success`` 0; touching none within 15 steps ends it with ``success`` 0.

Every episode ends with ``terminated=True``; its length is at most 30 + D. Chance is 1/3.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs._base import BatchedEnv, SingleEnv
from envs.tmaze import check_positive_int

FLOOR, APPLE, WALL, RED, GREEN, BLUE, AGENT = range(7)  # codes <= APPLE can be walked on
PALETTE = np.array(
    [[0, 0, 0], [255, 255, 0], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255],
     [255, 255, 255]],
    dtype=np.uint8,
)  # [7, 3] colour of each cell code
CUE_STEPS, CHOICE_STEPS, NUM_APPLES = 15, 15, 10
APPLE_REWARD, MATCH_REWARD = 1.0, 5.0

_CUE_MAP = ["#########", "#...#...#", "#.......#", "#...#...#", "#########"]
_DISTRACTOR_MAP = ["#" * 11] + ["#" + "." * 9 + "#"] * 7 + ["#" * 11]
_CHOICE_MAP = ["#" * 7] + ["#" + "." * 5 + "#"] * 5 + ["#" * 7]
_PAD = 2  # wall border so the 5x5 view never leaves the canvas
_H, _W = 9 + 2 * _PAD, 11 + 2 * _PAD  # canvas holding the largest room


def _room(rows: list[str]) -> np.ndarray:
    canvas = np.full((_H, _W), WALL, dtype=np.uint8)
    room = np.array([[WALL if c == "#" else FLOOR for c in r] for r in rows], dtype=np.uint8)
    canvas[_PAD : _PAD + room.shape[0], _PAD : _PAD + room.shape[1]] = room
    return canvas.ravel()


def _at(row: int, col: int) -> int:
    """Flat canvas index of room cell (row, col)."""
    return (row + _PAD) * _W + col + _PAD


_ROOMS = {
    "cue": _room(_CUE_MAP), "distractor": _room(_DISTRACTOR_MAP), "choice": _room(_CHOICE_MAP)
}
_CUE_CELL, _ACTIVE_START, _PASSIVE_START = _at(2, 7), _at(2, 2), _at(2, 6)
_DISTRACTOR_ENTRY, _CHOICE_ENTRY = _at(4, 5), _at(3, 3)
_DISTRACTOR_CELLS = np.flatnonzero(_ROOMS["distractor"] == FLOOR)  # [63]
_CHOICE_CELLS = np.array(
    [_at(r, c) for r in (1, 3, 5) for c in (1, 3, 5) if (r, c) != (3, 3)], dtype=np.int64
)  # [8] square positions: even interior coordinates, not the centre
_MOVES = np.array([1, -_W, -1, _W], dtype=np.int64)  # right, up, left, down
_VIEW = np.array([r * _W + c for r in range(-2, 3) for c in range(-2, 3)], dtype=np.int64)  # [25]
_STREAM_CUE, _STREAM_APPLES, _STREAM_CHOICE, _STREAM_RESPAWN = 0, 1, 2, 16


def _top_k(u: np.ndarray, k: int) -> np.ndarray:
    """Indices [K, k] of the k largest entries of each row of u [K, C], largest first."""
    return np.argsort(-u, axis=1, kind="stable")[:, :k]


class VisualMatchVector(BatchedEnv):
    """Batched visual match; SAME_STEP autoreset (see BatchedEnv).

    Args:
        num_envs: N.
        distractor_steps: D >= 0, length of the distractor phase (memory length).
        seed: env i uses seed + i on the first reset.
        render_mode: None or "rgb_array".

    Observations uint8 [N, 5, 5, 3]; actions int [N] in {0, 1, 2, 3}. The variant is the class
    attribute ``active`` (cue in the other half of the first room when True): the subclasses below.
    """

    active = False

    def __init__(
        self,
        num_envs: int,
        distractor_steps: int = 60,
        seed: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.distractor_steps = check_positive_int("distractor_steps", distractor_steps, 0)
        obs_space = spaces.Box(0, 255, shape=(5, 5, 3), dtype=np.uint8)
        super().__init__(num_envs, obs_space, spaces.Discrete(4), seed, render_mode)
        self.max_episode_steps = CUE_STEPS + self.distractor_steps + CHOICE_STEPS
        n = self.num_envs
        self._grid = np.empty((n, _H * _W), dtype=np.uint8)  # [N, H*W] cell codes of the room
        self._flat = self._grid.reshape(-1)  # view for global flat indexing
        self._row0 = np.arange(n, dtype=np.int64) * (_H * _W)  # [N] offset of each env's canvas
        self._pos = np.zeros(n, dtype=np.int64)  # [N] agent's flat cell index
        self._t = np.zeros(n, dtype=np.int64)  # [N] steps taken
        self._cue = np.zeros(n, dtype=np.int64)  # [N] 0 red, 1 green, 2 blue

    def _reset_envs(self, idx: np.ndarray) -> None:
        cue = (self._uniform(idx, _STREAM_CUE, 1)[:, 0] * 3).astype(np.int64)
        self._grid[idx] = _ROOMS["cue"]
        self._grid[idx, _CUE_CELL] = RED + cue
        self._cue[idx] = cue
        self._pos[idx] = _ACTIVE_START if self.active else _PASSIVE_START
        self._t[idx] = 0

    def _enter_distractor(self, idx: np.ndarray) -> None:
        u = self._uniform(idx, _STREAM_APPLES, len(_DISTRACTOR_CELLS))  # [K, 63]
        u[:, _DISTRACTOR_CELLS == _DISTRACTOR_ENTRY] = -1.0
        cells = _DISTRACTOR_CELLS[_top_k(u, NUM_APPLES)]  # [K, 10]
        self._grid[idx] = _ROOMS["distractor"]
        self._grid[idx[:, None], cells] = APPLE
        self._pos[idx] = _DISTRACTOR_ENTRY

    def _enter_choice(self, idx: np.ndarray) -> None:
        u = self._uniform(idx, _STREAM_CHOICE, len(_CHOICE_CELLS))  # [K, 8]
        cells = _CHOICE_CELLS[_top_k(u, 3)]  # [K, 3], square j has colour RED + j
        self._grid[idx] = _ROOMS["choice"]
        self._grid[idx[:, None], cells] = np.array([RED, GREEN, BLUE], dtype=np.uint8)
        self._pos[idx] = _CHOICE_ENTRY

    def _respawn(self, idx: np.ndarray) -> None:
        """Put one apple on a random free cell (not an apple, not the agent) of envs ``idx``."""
        stream = _STREAM_RESPAWN + self._t[idx]
        u = self._uniform(idx, stream, 8) * len(_DISTRACTOR_CELLS)
        cand = _DISTRACTOR_CELLS[u.astype(np.int64)]  # [K, 8] candidate cells
        free = (self._grid[idx[:, None], cand] == FLOOR) & (cand != self._pos[idx, None])
        cell = cand[np.arange(len(idx)), free.argmax(axis=1)]
        stuck = ~free.any(axis=1)  # 8 misses in a row: probability ~1e-6, pick among free cells
        if stuck.any():
            s = idx[stuck]
            u = self._uniform(s, stream[stuck] + (1 << 40), len(_DISTRACTOR_CELLS))  # [S, 63]
            u *= (self._grid[s[:, None], _DISTRACTOR_CELLS] == FLOOR) & (
                _DISTRACTOR_CELLS != self._pos[s, None]
            )
            cell[stuck] = _DISTRACTOR_CELLS[u.argmax(axis=1)]
        self._grid[idx, cell] = APPLE

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        target = self._pos + _MOVES[actions]
        cell = self._flat[self._row0 + target]  # [N] code of the cell moved into
        passable = cell <= APPLE
        np.copyto(self._pos, target, where=passable)
        ate = cell == APPLE
        touched = (cell >= RED) & (self._t >= CUE_STEPS + self.distractor_steps)
        success = (touched & (cell - RED == self._cue)).astype(np.float32)
        reward = (ate * APPLE_REWARD + success * MATCH_REWARD).astype(np.float32)
        self._t += 1
        if ate.any():
            eaten = np.flatnonzero(ate)
            self._flat[self._row0[eaten] + self._pos[eaten]] = FLOOR
            self._respawn(eaten)
        if self.distractor_steps > 0:
            enter = np.flatnonzero(self._t == CUE_STEPS)
            if len(enter):
                self._enter_distractor(enter)
        enter = np.flatnonzero(self._t == CUE_STEPS + self.distractor_steps)
        if len(enter):
            self._enter_choice(enter)
        terminated = touched | (self._t >= self.max_episode_steps)
        return reward, terminated, success

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        sl = slice(None) if idx is None else idx
        cells = np.take(self._flat, (self._row0[sl] + self._pos[sl])[:, None] + _VIEW)  # [N, 25]
        cells[:, 12] = AGENT
        return np.take(PALETTE, cells, axis=0).reshape(-1, 5, 5, 3)  # faster than PALETTE[cells]

    def _render_env(self, i: int, cell: int = 16) -> np.ndarray:
        """The current room of env ``i`` (agent white) under a bar in the cue's colour.

        Returns uint8 [(9 * cell) + cell // 4, 11 * cell, 3]."""
        codes = self._grid[i].copy()
        codes[self._pos[i]] = AGENT
        img = PALETTE[codes.reshape(_H, _W)[_PAD:-_PAD, _PAD:-_PAD]]  # [9, 11, 3]
        img = np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)
        bar = np.broadcast_to(PALETTE[RED + self._cue[i]], (cell // 4, img.shape[1], 3))
        return np.concatenate([bar, img], axis=0)


class VisualMatchPassiveVector(VisualMatchVector):
    """Batched passive visual match; see :class:`VisualMatchVector`."""


class VisualMatchActiveVector(VisualMatchVector):
    """Batched active visual match; see :class:`VisualMatchVector`."""

    active = True


class VisualMatchPassiveEnv(SingleEnv):
    """Single passive visual match (``urlstm/VisualMatchPassive-v0``, kwarg distractor_steps)."""

    batched_cls = VisualMatchPassiveVector


class VisualMatchActiveEnv(SingleEnv):
    """Single active visual match (``urlstm/VisualMatchActive-v0``, kwarg distractor_steps)."""

    batched_cls = VisualMatchActiveVector
