"""Native tasks: check_env, batched == single envs == gymnasium's SyncVectorEnv, a scalar reference
written from envs.md, scripted optimal and memoryless policies, autoreset boundaries, seeding."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs
from envs.visual_match import CUE_STEPS, PALETTE, RED

SMALL = {
    "urlstm/TMazePassive-v0": {"length": 5},
    "urlstm/TMazeActive-v0": {"length": 5},
    "urlstm/MemoryChain-v0": {"length": 4, "num_bits": 3},
    "urlstm/VisualMatchPassive-v0": {"distractor_steps": 6},
    "urlstm/VisualMatchActive-v0": {"distractor_steps": 6},
    "urlstm/MaskedRecall-v0": {"length": 3, "num_actions": 4},
}


def row(obs, i: int):
    """Observation ``i`` of a batch (a dict of rows for Dict observations)."""
    return {k: v[i] for k, v in obs.items()} if isinstance(obs, dict) else obs[i]


def assert_obs_equal(a, b) -> None:
    """Equal observations, arrays or dicts of arrays."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    else:
        np.testing.assert_array_equal(a, b)


def obs_equal(a, b) -> bool:
    return all((a[k] == b[k]).all() for k in a) if isinstance(a, dict) else bool((a == b).all())


@pytest.mark.parametrize("env_id", envs.NATIVE_IDS)
def test_check_env(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped)
    for mode in env.unwrapped.metadata["render_modes"]:
        frame = gym.make(env_id, render_mode=mode)
        frame.reset(seed=0)
        img = frame.render()
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def _random_actions(space: gym.Space, steps: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, space.n, size=(steps, n))  # [T, N]


@pytest.mark.parametrize("env_id", envs.NATIVE_IDS)
def test_batched_equals_single_envs(env_id: str) -> None:
    """Env i of a batch seeded with s replays a single env seeded with s + i, across autoresets."""
    n, seed, steps = 4, 7, 80
    venv = envs.make(env_id, n, seed=seed, **SMALL[env_id])
    singles = [gym.make(env_id, **SMALL[env_id]) for _ in range(n)]
    obs, _ = venv.reset()
    for i, env in enumerate(singles):
        assert_obs_equal(row(obs, i), env.reset(seed=seed + i)[0])
    ends = 0
    for a in _random_actions(venv.single_action_space, steps, n):
        obs, rew, term, trunc, info = venv.step(a)
        assert not trunc.any()
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(a[i])
            assert (r, te, tr) == (pytest.approx(float(rew[i])), bool(term[i]), False)
            if te:
                ends += 1
                assert_obs_equal(info["final_obs"][i], o)
                assert info["_success"][i] and info["success"][i] == inf["success"]
                o = env.reset()[0]
            else:
                assert "_final_obs" not in info or not info["_final_obs"][i]
            assert_obs_equal(row(obs, i), o)
    assert ends >= n


@pytest.mark.parametrize("env_id", envs.NATIVE_IDS)
def test_batched_equals_gymnasium_sync_vector_env(env_id: str) -> None:
    """Same obs, rewards and info (final_obs, episode, success) as gymnasium's SAME_STEP env."""
    n, seed = 3, 11
    fast = envs.make(env_id, n, seed=seed, **SMALL[env_id])
    slow = envs.make(env_id, n, seed=seed, vectorization="sync", **SMALL[env_id])
    for venv in (fast, slow):
        assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert fast.single_observation_space == slow.single_observation_space
    assert fast.single_action_space == slow.single_action_space
    assert_obs_equal(fast.reset()[0], slow.reset()[0])
    for a in _random_actions(fast.single_action_space, 60, n, seed=1):
        f, s = fast.step(a), slow.step(a)
        assert_obs_equal(f[0], s[0])
        for x, y in zip(f[1:4], s[1:4]):
            np.testing.assert_allclose(x, y)
        fi, si = f[4], s[4]
        assert ("_episode" in fi) == ("_episode" in si)
        if "_episode" in fi:
            for key in ("_final_obs", "_episode", "_success", "success"):
                np.testing.assert_array_equal(fi[key], si[key])
            for key in ("r", "l"):
                np.testing.assert_allclose(fi["episode"][key], si["episode"][key], rtol=1e-6)
            assert fi["episode"]["r"].dtype == np.float32 and fi["episode"]["l"].dtype == np.int32
            for i in np.flatnonzero(fi["_final_obs"]):
                assert_obs_equal(fi["final_obs"][i], si["final_obs"][i])
            assert all(fi["final_obs"][i] is None for i in np.flatnonzero(~fi["_final_obs"]))
    fast.close()
    slow.close()


# ---- scalar references written from envs.md ---------------------------------------------------
def _tmaze_reference(length: int, active: bool, goal: int, actions: list[int]) -> list[tuple]:
    moves = {0: (1, 0), 1: (0, 1), 2: (-1, 0), 3: (0, -1)}
    x, y, t = 0, 0, 0
    horizon = length + (3 if active else 1)
    lag = 2 if active else 0
    out = []
    for a in actions:
        dx, dy = moves[a]
        nx, ny = x + dx, y + dy
        cue_x = -1 if active else 0
        in_corridor = ny == 0 and cue_x <= nx <= length
        at_goal = nx == length and ny in (-1, 1)
        if (in_corridor or at_goal) and (dy == 0 or x == length):
            x, y = nx, ny
        t += 1
        if t == horizon:
            reward = 1.0 if (x, y) == (length, goal) else 0.0
        else:
            reward = -1.0 / length if x < t - lag else 0.0
        if x == length:
            obs = (1.0, float(y))
        elif (active and x == -1) or (not active and t == 0):
            obs = (0.0, float(goal))
        else:
            obs = (0.0, 0.0)
        out.append((obs, reward, t == horizon))
        if t == horizon:
            break
    return out


@pytest.mark.parametrize("active", [False, True])
def test_tmaze_matches_reference(active: bool) -> None:
    length = 4
    env = gym.make("urlstm/TMazeActive-v0" if active else "urlstm/TMazePassive-v0", length=length)
    rng = np.random.default_rng(3)
    for episode in range(40):
        obs, _ = env.reset(seed=episode)
        goal = int(env.unwrapped._core._goal[0])
        if not active:
            assert tuple(obs) == (0.0, goal)
        # biased towards "right" so that the junction and both goals are visited often
        actions = rng.choice(4, size=length + 3, p=[0.55, 0.15, 0.15, 0.15]).tolist()
        reference = _tmaze_reference(length, active, goal, actions)
        for (ref_obs, ref_r, ref_done), a in zip(reference, actions):
            o, r, done, trunc, _ = env.step(a)
            assert tuple(o) == ref_obs and r == pytest.approx(ref_r) and done == ref_done


def test_memory_chain_matches_reference() -> None:
    length, bits = 3, 4
    env = gym.make("urlstm/MemoryChain-v0", length=length, num_bits=bits)
    for episode in range(30):
        obs, _ = env.reset(seed=episode)
        context, query = obs[2:].copy(), int(env.unwrapped._core._query[0])
        assert set(context.tolist()) <= {-1.0, 1.0} and obs[0] == 1.0 and obs[1] == 0.0
        for t in range(1, length + 2):
            a = episode % 2
            obs, r, done, _, info = env.step(a)
            assert obs[0] == pytest.approx(1 - t / length)
            assert obs[1] == (query if t == length else 0) and not obs[2:].any()
            correct = (a == 1) == (context[query] > 0)
            assert r == ((1.0 if correct else -1.0) if t == length + 1 else 0.0)
            assert done == (t == length + 1)
        assert info["success"] == float(correct)


# ---- scripted optimal and memoryless policies --------------------------------------------------
def _rate(info_log: list[dict]) -> tuple[float, int]:
    s = np.concatenate([i["success"][i["_success"]] for i in info_log if "_success" in i])
    return float(s.mean()), len(s)


def _run(venv, policy, steps: int) -> list[dict]:
    obs, _ = venv.reset()
    log = []
    for t in range(steps):
        obs, _, _, _, info = venv.step(policy(obs, t))
        log.append(info)
    return log


@pytest.mark.parametrize("active", [False, True])
def test_tmaze_optimal_and_memoryless(active: bool) -> None:
    n, length = 2048, 10
    venv = envs.make("tmaze-active" if active else "tmaze-passive", n, seed=0, length=length)
    horizon = venv.unwrapped.episode_length
    goal = np.zeros(n)

    def optimal(obs: np.ndarray, t: int) -> np.ndarray:
        k = t % horizon
        cue_step = 1 if active else 0
        if k == cue_step:  # obs after reset (passive) or after stepping left (active)
            goal[:] = obs[:, 1]
        if active and k == 0:
            return np.full(n, 2)
        if k == horizon - 1:
            return np.where(goal > 0, 1, 3)
        return np.zeros(n, dtype=np.int64)

    log = _run(venv, optimal, 2 * horizon)
    assert _rate(log) == (1.0, 2 * n)
    returns = np.concatenate([i["episode"]["r"] for i in log if "episode" in i])
    np.testing.assert_allclose(returns, 1.0, rtol=1e-6)

    def memoryless(obs: np.ndarray, t: int) -> np.ndarray:  # go right, then up at the junction
        return np.where(obs[:, 0] == 1, 1, 0)

    rate, count = _rate(_run(venv, memoryless, 2 * horizon))
    assert count == 2 * n and abs(rate - 0.5) < 0.03


def test_passive_tmaze_lag_is_unobservable_and_irreversible() -> None:
    """After k steps right, one step that is not right costs -1/L at every later step whatever the
    agent does (it can never catch up: return exactly -(L - k)/L, success 0), and the corridor
    observations stay [0, 0], as on the optimal walk: a memoryless agent cannot tell the two apart
    except by the previous reward."""
    n, length, k = 64, 12, 3
    venv = envs.make("tmaze-passive", n, seed=0, length=length)
    rng = np.random.default_rng(0)
    obs0, _ = venv.reset(seed=0)
    on_track = np.zeros(n, dtype=bool)
    on_track[0] = True                                      # env 0 walks right, then goes up
    total = np.zeros(n)
    for t in range(length + 1):
        actions = rng.integers(0, 4, n)                      # lagging envs: anything after the lag
        actions[:] = np.where(t < k, 0, actions)             # everyone walks right for k steps
        actions[1:] = np.where(t == k, rng.choice([1, 2, 3], n - 1), actions[1:])  # then lags
        actions[0] = 1 if t == length else 0
        obs, reward, term, _, info = venv.step(actions)
        total += reward
        if t < length - 1:                                   # env 0 still in the corridor
            np.testing.assert_array_equal(obs, 0.0)
        expected = np.where(on_track | (t < k), 0.0, -1.0 / length)
        if t < length:
            np.testing.assert_allclose(reward, expected, rtol=1e-6)
    assert term.all() and not info["success"][1:].any()
    np.testing.assert_allclose(total[1:], -(length - k) / length, rtol=1e-6)
    assert obs0[:, 0].max() == 0 and np.abs(obs0[:, 1]).min() == 1  # the cue, first step only


def test_memory_chain_optimal_and_memoryless() -> None:
    n, length, bits = 2048, 6, 3
    venv = envs.make("memory-chain", n, seed=0, length=length, num_bits=bits)
    context = np.zeros((n, bits))

    def optimal(obs: np.ndarray, t: int) -> np.ndarray:
        if t % (length + 1) == 0:
            context[:] = obs[:, 2:]
        query = obs[:, 1].astype(np.int64)
        return (context[np.arange(n), query] > 0).astype(np.int64)

    assert _rate(_run(venv, optimal, 2 * (length + 1))) == (1.0, 2 * n)
    def memoryless(obs: np.ndarray, t: int) -> np.ndarray:  # answer from the query alone
        return (obs[:, 1] > 0).astype(np.int64)

    rate, count = _rate(_run(venv, memoryless, 2 * (length + 1)))
    assert count == 2 * n and abs(rate - 0.5) < 0.03


def test_masked_recall_optimal_memoryless_and_masked_actions() -> None:
    n, length, k = 2048, 4, 5
    venv = envs.make("masked-recall", n, seed=0, length=length, num_actions=k)
    target = np.zeros(n, dtype=np.int64)
    draw = np.random.default_rng(0)

    def first_allowed(mask: np.ndarray) -> np.ndarray:
        return (mask * draw.random(mask.shape)).argmax(1)  # a random allowed action

    def optimal(obs: dict, t: int) -> np.ndarray:
        mask, x = obs["action_mask"], obs["observation"]
        assert mask.dtype == np.int8 and (mask.sum(1) >= 1).all()
        if t % (length + 1) == 0:
            target[:] = x[:, :k].argmax(1)
            assert (x[:, :k].sum(1) == 1).all()
        else:
            assert (x[:, :k] == 0).all()  # the cue shows at t = 0 only
        query = x[:, k] == 1
        assert query.all() == (t % (length + 1) == length) and (mask[query].sum(1) == 2).all()
        return np.where(query, target, first_allowed(mask))

    assert _rate(_run(venv, optimal, 2 * (length + 1))) == (1.0, 2 * n)
    rate, count = _rate(_run(venv, lambda obs, t: first_allowed(obs["action_mask"]),
                             2 * (length + 1)))
    assert count == 2 * n and abs(rate - 0.5) < 0.03
    assert venv.invalid_actions.sum() == 0
    # a masked action ends the episode with reward -1 and is counted
    obs, _ = venv.reset()
    masked = obs["action_mask"].argmin(1)
    assert (obs["action_mask"][np.arange(n), masked] == 0).any()
    bad = obs["action_mask"][np.arange(n), masked] == 0
    _, reward, term, _, info = venv.step(masked)
    assert (term == bad).all() and (reward[bad] == -1).all() and (reward[~bad] == 0).all()
    assert (info["success"][bad] == 0).all() and (info["episode"]["l"][bad] == 1).all()
    assert (venv.invalid_actions == bad).all()
    strict = envs.make("masked-recall", 2, seed=0, strict=True)
    obs, _ = strict.reset()
    with pytest.raises(ValueError, match="masked action"):
        for _ in range(20):  # some step masks an action of env 0
            obs, *_ = strict.step(np.repeat(obs["action_mask"][0].argmin(), 2))


def _colour_offsets(obs: np.ndarray, colour: int) -> tuple[int, int] | None:
    """(row, col) offset from the agent of the square of ``colour`` in one 5x5x3 view."""
    hits = np.argwhere((obs == PALETTE[RED + colour]).all(axis=-1))
    return None if len(hits) == 0 else (int(hits[0][0]) - 2, int(hits[0][1]) - 2)


def _path_to(dr: int, dc: int) -> list[int]:
    """Actions (0 right, 1 up, 2 left, 3 down) from the choice-room centre into the square at
    (dr, dc), walking on odd rows/columns where no square can be."""
    right_left = [0] * dc if dc > 0 else [2] * -dc
    if dr == 0:
        return right_left
    vertical = 1 if dr < 0 else 3
    if dc == 0:
        return [vertical] * abs(dr)
    return [vertical] + right_left + [vertical]


def _scripted_visual_match(venv, d: int, blind: bool) -> tuple[list[float], list[int]]:
    """Scripted agent: notes the cue's colour in the first room (walking right, which shows it in
    the active room), idles in the distractor room, then walks straight into the square of that
    colour; ``blind`` replaces the colour by red (no memory of the cue). Two episodes per env."""
    n = venv.num_envs
    horizon = CUE_STEPS + d  # steps before the choice room
    cue = np.zeros(n, dtype=np.int64)
    plans: list[list[int]] = [[] for _ in range(n)]
    k = np.zeros(n, dtype=np.int64)  # step within the episode
    obs, _ = venv.reset()
    successes, lengths = [], []
    for _ in range(2 * (horizon + 4)):
        actions = np.zeros(n, dtype=np.int64)  # right
        for i in range(n):
            if k[i] < CUE_STEPS and not blind:
                for colour in range(3):
                    if _colour_offsets(obs[i], colour) is not None:
                        cue[i] = colour
            if k[i] == horizon:
                plans[i] = _path_to(*_colour_offsets(obs[i], cue[i]))
            if k[i] >= horizon:
                actions[i] = plans[i].pop(0)
        obs, _, term, _, info = venv.step(actions)
        k += 1
        k[term] = 0
        if "_success" in info:
            successes += info["success"][info["_success"]].tolist()
            lengths += info["episode"]["l"][info["_episode"]].tolist()
    return successes, lengths


@pytest.mark.parametrize("active, d", [(False, 4), (True, 4), (True, 0)])
def test_visual_match_optimal_and_memoryless(active: bool, d: int) -> None:
    n = 600
    venv = envs.make("visual-match-active" if active else "visual-match-passive", n, seed=0,
                     distractor_steps=d)
    successes, lengths = _scripted_visual_match(venv, d, blind=False)
    assert len(successes) == 2 * n and np.mean(successes) == 1.0
    assert max(lengths) <= CUE_STEPS + d + 4
    successes, _ = _scripted_visual_match(venv, d, blind=True)
    assert len(successes) == 2 * n and abs(np.mean(successes) - 1 / 3) < 0.05


# ---- visual match phases, autoreset, seeding ---------------------------------------------------
def test_visual_match_cue_visibility_and_distractor() -> None:
    colours = PALETTE[RED : RED + 3]
    passive = envs.make("visual-match-passive", 64, seed=0, distractor_steps=8)
    active = envs.make("visual-match-active", 64, seed=0, distractor_steps=8)
    seen = lambda o: (o[:, :, :, None, :] == colours).all(-1).any(axis=(1, 2))  # noqa: E731  [N, 3]
    po, ao = passive.reset()[0], active.reset()[0]
    assert (seen(po).sum(1) == 1).all() and not seen(ao).any()
    cue = seen(po).argmax(1)
    ao = [active.step(np.zeros(64, dtype=np.int64))[0] for _ in range(3)][-1]  # walk right x3
    assert seen(ao).any(1).all()
    np.testing.assert_array_equal(seen(ao).argmax(1), cue)
    apples = 0.0
    for t in range(3, CUE_STEPS + 8):
        o, r, *_ = active.step(np.random.default_rng(t).integers(0, 4, 64))
        if t >= CUE_STEPS - 1 and t < CUE_STEPS + 7:  # obs in the distractor room
            assert not seen(o).any()
            apples += r.sum()
            assert ((o == PALETTE[1]).all(-1).sum((1, 2)) <= 10).all()
    assert apples > 0


def test_visual_match_respawn_fills_the_last_free_cell() -> None:
    """With only one free cell left, the respawned apple goes there (the fallback after 8 misses)."""
    from envs.visual_match import _DISTRACTOR_CELLS, APPLE, FLOOR

    venv = envs.make("visual-match-passive", 2, seed=0, distractor_steps=5)
    venv.reset()
    for _ in range(CUE_STEPS):
        venv.step(np.zeros(2, dtype=np.int64))
    core = venv.unwrapped
    core._grid[:, _DISTRACTOR_CELLS] = APPLE
    core._grid[np.arange(2), core._pos] = FLOOR  # under the agent
    free = _DISTRACTOR_CELLS[[3, 40]]
    core._grid[np.arange(2), free] = FLOOR
    core._respawn(np.arange(2))
    assert (core._grid[np.arange(2), free] == APPLE).all()
    assert (core._grid[np.arange(2), core._pos] == FLOOR).all()


def test_autoreset_boundary() -> None:
    n, length = 5, 3
    venv = envs.make("tmaze-passive", n, seed=3, length=length)
    obs0, info = venv.reset()
    assert info == {}
    for t in range(1, length + 2):
        obs, rew, term, trunc, info = venv.step(np.zeros(n, dtype=np.int64))
        if t <= length:
            assert not term.any() and info == {}
    assert term.all() and not trunc.any()
    assert info["_episode"].all() and (info["episode"]["l"] == length + 1).all()
    np.testing.assert_allclose(info["episode"]["r"], rew, rtol=1e-6)  # right x3, stay: no penalty
    assert info["_final_obs"].all() and all((f == [1, 0]).all() for f in info["final_obs"])
    assert (obs[:, 0] == 0).all() and (np.abs(obs[:, 1]) == 1).all()  # next episode's cue
    fresh = envs.make("tmaze-passive", n, seed=3, length=length)
    np.testing.assert_array_equal(fresh.reset()[0], obs0)
    np.testing.assert_array_equal(fresh.reset()[0], obs)  # reset() without seed: next episodes


@pytest.mark.parametrize("env_id", envs.NATIVE_IDS)
def test_seeding(env_id: str) -> None:
    def rollout(seed: int | None) -> list[np.ndarray]:
        venv = envs.make(env_id, 8, seed=seed, **SMALL[env_id])
        out = [venv.reset()[0]]
        for a in _random_actions(venv.single_action_space, 30, 8):
            out += [venv.step(a)[0]]
        return out

    a, b, c = rollout(1), rollout(1), rollout(2)
    assert all(obs_equal(x, y) for x, y in zip(a, b))
    assert not all(obs_equal(x, y) for x, y in zip(a, c))


def test_vector_entry_point_and_render() -> None:
    venv = gym.make_vec("urlstm/TMazePassive-v0", 3, vectorization_mode="vector_entry_point",
                        length=7)
    assert venv.num_envs == 3 and venv.unwrapped.length == 7
    venv = envs.make("visual-match-active", 2, seed=0, render_mode="rgb_array")
    venv.reset()
    frames = venv.render()
    assert len(frames) == 2 and frames[0].shape == (148, 176, 3) and frames[0].dtype == np.uint8
    venv = envs.make("tmaze-passive", 2, seed=0, length=200, render_mode="rgb_array")
    venv.reset()
    assert venv.render()[0].shape == (24, 512, 3)
    venv = envs.make("memory-chain", 2, seed=0, num_bits=3, render_mode="rgb_array")
    venv.reset()
    assert venv.render()[1].shape == (32, 80, 3)
