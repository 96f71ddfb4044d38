"""Run a trained policy with its recurrent state carried across steps; optional GIF of one episode.

An evaluation plays its episodes on up to ``episodes`` envs at once (one batch through the policy
per step), as many as fit in half the free memory by an estimate made before any env is built;
each env plays a fixed quota of episodes, so that short episodes are not over-counted.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from gymnasium import spaces

from agents.rollout import env_actions
from policies.actor_critic import ActorCritic, obs_to_tensor

MAX_EPISODE_STEPS = 100_000  # the step guard: an episode still running after this many steps is an error
ENV_BYTES = 1 << 20  # host memory of one env object, generous (a MiniGrid env measured 22 KiB)
ENVS_PER_WORKER = 8  # an evaluation steps its envs in worker processes of at least this many envs each
ACTIVATION_FLOATS = 64  # floats of encoder activations per observation element, generous


class EvaluationError(RuntimeError):
    """The evaluation cannot run or cannot finish (memory, an episode that does not end); one line."""


# ---------------------------------------------------------------------------------------------
# how many envs at once
# ---------------------------------------------------------------------------------------------

def space_elements(space: spaces.Space) -> tuple[int, int]:
    """(elements, bytes) of one observation."""
    if isinstance(space, spaces.Dict):
        parts = [space_elements(s) for s in space.spaces.values()]
    elif isinstance(space, spaces.Tuple):
        parts = [space_elements(s) for s in space.spaces]
    else:
        n = int(np.prod(space.shape)) if space.shape else 1
        return n, n * np.dtype(space.dtype or np.float32).itemsize
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def bytes_per_env(policy: ActorCritic) -> int:
    """Estimated memory one more env of an evaluation takes: the env, its observation, its core
    state and the policy's activations for it (float32)."""
    elements, obs_bytes = space_elements(policy.observation_space)
    state = sum(s.numel() * s.element_size() for s in policy.initial_state(1, "cpu"))
    return ENV_BYTES + 4 * obs_bytes + 4 * ACTIVATION_FLOATS * elements + 4 * state


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations: the GPU's for a CUDA device, else the host's (MemAvailable,
    lowered to a cgroup's limit when the process has one); None when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            room = max(0, int(limit) - used)
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def eval_envs(policy: ActorCritic, device: torch.device, episodes: int, num_envs: int | None = None,
              free: int | None = None) -> tuple[int, str | None]:
    """How many envs an evaluation of ``episodes`` episodes steps at once.

    ``num_envs`` None: up to ``episodes``, capped so that the estimate fits in half the free memory
    (the note then says so). An explicit ``num_envs`` that does not fit, or a single env that does
    not, raises EvaluationError naming what it needs and what is free.

    Returns:
        (envs, note): the note is None unless the envs were capped.
    """
    want = max(1, min(episodes, num_envs or episodes))
    free = free_memory(device) if free is None else free
    if free is None:
        return want, None
    per_env = bytes_per_env(policy)
    fits = (free // 2) // per_env
    if want <= fits:
        return want, None
    if num_envs is not None or fits < 1:
        raise EvaluationError(
            f"the evaluation's {want} envs need about {gib(want * per_env)} "
            f"({gib(per_env)} each) and {gib(free)} is free; "
            + ("lower --num-envs" if num_envs is not None else "free some memory"))
    return int(fits), (f"evaluating {fits} envs at once, not {want}: {want} would need about "
                       f"{gib(want * per_env)} and {gib(free)} is free")


def episode_limit(venv) -> int | None:
    """The most steps an episode of ``venv`` can last, where the env says (a native task's length,
    a TimeLimit, MiniGrid's max_steps); None when it does not."""
    base = venv.unwrapped
    for name in ("max_episode_steps", "episode_length"):  # the native tasks
        if isinstance(getattr(base, name, None), int):
            return getattr(base, name)
    for name in ("spec", "max_steps"):  # gymnasium's vector envs: asked of the first env
        try:
            # an async worker asked for an attribute its env lacks stops for good: ask first
            if not base.call("has_wrapper_attr", name)[0]:
                continue
            value = base.get_attr(name)[0]
        except Exception:  # noqa: BLE001 - an env without it, or a vector env that cannot say
            continue
        value = getattr(value, "max_episode_steps", value)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_episode_limit(venv, env_id: str, guard: int | None = None,
                        remedy: str = "raise --max-episode-steps") -> None:
    """Raise EvaluationError when ``venv``'s episodes may outlast the evaluation's step guard
    (the message ends with ``remedy``)."""
    guard = guard or MAX_EPISODE_STEPS
    limit = episode_limit(venv)
    if limit is not None and limit > guard:
        raise EvaluationError(f"episodes of {env_id} last up to {limit:,} steps, more than the "
                              f"evaluation's guard of {guard:,} steps per episode: shorten them or {remedy}")


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------

def make_eval_envs(cfg, n: int, seed: int):
    """``n`` envs of the run's task: a native task is one batched env already; other ids step in
    slices over this process and ``envs.sharded``'s workers (one slice per usable core, at least
    ``ENVS_PER_WORKER`` envs each; the same observations as in one process) unless the run asked
    for ``async`` (a process per env)."""
    import envs
    from envs.sharded import usable_cores

    kwargs = dict(cfg.env_kwargs)
    if envs.ALIASES.get(cfg.env, cfg.env) not in envs.NATIVE_IDS and kwargs.get("vectorization") != "async":
        workers = min(usable_cores(), n // ENVS_PER_WORKER) - 1
        kwargs.pop("workers", None)
        kwargs.update({"vectorization": "shards", "workers": workers} if workers >= 1 else {"vectorization": "sync"})
    return envs.make(cfg.env, n, seed, **kwargs)


@torch.inference_mode()
def evaluate(policy: ActorCritic, cfg, device: torch.device, episodes: int, greedy: bool = False,
             seed: int | None = None, num_envs: int | None = None,
             max_episode_steps: int | None = None, note=None, ablate_memory: bool = False) -> dict:
    """Play ``episodes`` whole episodes in fresh environments (seed: cfg.seed + 10_000 by default).

    ``ablate_memory``: the core state is zeroed before every step (the previous action and reward
    are still fed): a diagnosis of how much the agent's success rests on its memory.

    Up to ``episodes`` envs at once (``eval_envs``); each env plays a fixed quota of episodes, so that
    short episodes are not over-counted. ``note(text)`` receives a line when the envs were capped.
    ``max_episode_steps`` is the step guard (default ``MAX_EPISODE_STEPS``).

    Raises:
        EvaluationError: the envs do not fit in memory, or an episode runs past
            ``max_episode_steps`` (known in advance from the env, or met while playing).

    Returns:
        {"episodes", "return_mean", "return_std", "length_mean", "success_rate" (None when the env
        reports no success), "greedy", "num_envs"}.
    """
    max_episode_steps = max_episode_steps or MAX_EPISODE_STEPS
    n, capped = eval_envs(policy, device, episodes, num_envs)
    if capped and note is not None:
        note(capped)
    seed = cfg.seed + 10_000 if seed is None else seed
    venv = make_eval_envs(cfg, n, seed)
    quota = np.full(n, episodes // n) + (np.arange(n) < episodes % n)
    done = np.zeros(n, dtype=np.int64)
    ep_steps = np.zeros(n, dtype=np.int64)  # steps of each env's current episode
    returns, lengths, successes = [], [], []
    try:
        check_episode_limit(venv, cfg.env, max_episode_steps)
        obs, _ = venv.reset(seed=seed)
        obs = obs_to_tensor(policy.observation_space, obs, device)
        state = policy.initial_state(n, device)
        reset = torch.ones(n, dtype=torch.bool, device=device)
        prev_a = prev_r = None
        while (done < quota).any():
            if ablate_memory:
                state = policy.initial_state(n, device)
            out = policy.act(obs, state, reset, prev_a, prev_r, greedy=greedy)
            next_obs, reward, term, trunc, info = venv.step(env_actions(venv.single_action_space, out.action))
            ended = np.logical_or(term, trunc)
            if "_episode" in info and info["_episode"].any():
                for i in np.flatnonzero(info["_episode"]):
                    if done[i] < quota[i]:
                        returns.append(float(info["episode"]["r"][i]))
                        lengths.append(float(info["episode"]["l"][i]))
                        if "_success" in info and info["_success"][i]:
                            successes.append(float(info["success"][i]))
                        done[i] += 1
            ep_steps = np.where(ended, 0, ep_steps + 1)
            if (ep_steps[done < quota] >= max_episode_steps).any():
                raise EvaluationError(f"an episode of {cfg.env} did not end within "
                                      f"{max_episode_steps:,} steps (the evaluation's step guard): "
                                      "do its episodes end?")
            obs = obs_to_tensor(policy.observation_space, next_obs, device)
            reset = torch.as_tensor(ended, device=device)
            prev_a, prev_r, state = out.action, torch.as_tensor(reward, dtype=torch.float32, device=device), out.state
    finally:
        venv.close()
    return {
        "episodes": len(returns),
        "return_mean": float(np.mean(returns)) if returns else None,
        "return_std": float(np.std(returns)) if returns else None,
        "length_mean": float(np.mean(lengths)) if lengths else None,
        "success_rate": float(np.mean(successes)) if successes else None,
        "greedy": greedy,
        "num_envs": n,
        "ablate_memory": ablate_memory,
    }


@torch.inference_mode()
def record_gif(policy: ActorCritic, cfg, device: torch.device, file: str, greedy: bool = False,
               seed: int | None = None, fps: int = 8, max_steps: int = 5_000) -> dict:
    """Play one episode in an env made with render_mode="rgb_array" and save its frames as a GIF.

    Raises ValueError when the environment cannot render RGB frames.
    """
    from PIL import Image

    import envs

    seed = cfg.seed + 20_000 if seed is None else seed
    try:
        venv = envs.make(cfg.env, 1, seed, render_mode="rgb_array", **cfg.env_kwargs)
    except TypeError as err:
        raise ValueError(f"{cfg.env} cannot render frames ({err}); no GIF written") from None
    try:
        obs, _ = venv.reset(seed=seed)

        def frame():
            f = venv.render()
            if isinstance(f, (tuple, list)):
                f = f[0] if f else None
            if f is None or np.asarray(f).ndim != 3:
                raise ValueError(f"{cfg.env} has no rgb_array render(); no GIF written")
            return np.asarray(f, dtype=np.uint8)

        frames = [frame()]
        obs = obs_to_tensor(policy.observation_space, obs, device)
        state = policy.initial_state(1, device)
        reset = torch.ones(1, dtype=torch.bool, device=device)
        prev_a = prev_r = None
        total, success, length = 0.0, None, 0
        for _ in range(max_steps):
            out = policy.act(obs, state, reset, prev_a, prev_r, greedy=greedy)
            next_obs, reward, term, trunc, info = venv.step(env_actions(venv.single_action_space, out.action))
            total += float(reward[0])
            length += 1
            if term[0] or trunc[0]:
                if "_success" in info and info["_success"][0]:
                    success = float(info["success"][0])
                break  # after an autoreset the env shows the next episode: keep the frames so far
            frames.append(frame())
            obs = obs_to_tensor(policy.observation_space, next_obs, device)
            reset = torch.zeros(1, dtype=torch.bool, device=device)
            prev_a, prev_r, state = out.action, torch.as_tensor(reward, dtype=torch.float32, device=device), out.state
    finally:
        venv.close()
    images = []
    for f in frames:
        img = Image.fromarray(f)
        scale = max(1, 256 // max(img.size))
        if scale > 1:
            img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
        images.append(img)
    images[0].save(file, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return {"file": file, "frames": len(images), "return": total, "length": length, "success": success}


def finish_run(cfg, policy: ActorCritic, device: torch.device, logger, *, algo: str, status: str,
               stats, global_step: int, updates: int, wall: float, best_success: float | None,
               checkpoint: str, run_dir: str, perf_s: dict, extra: dict | None = None) -> dict:
    """The end of a training run, shared by the learners: the final evaluation (finished runs
    only, ``cfg.eval_episodes`` episodes), its TensorBoard scalars, and ``summary.json``.

    Raises:
        EvaluationError: the final evaluation could not run or finish; summary.json is written first
            (with ``final_eval_error``), and the checkpoint was saved before.

    Args:
        logger: the run's ``agents.logger.Logger`` (closed here).
        stats: the run's ``EpisodeStats`` (its last 100 training episodes go in the summary).
        wall: wall-clock seconds of the whole run (resumed parts included).
        perf_s: seconds per activity (env, inference, learn, ...); the final evaluation's seconds
            are added as ``final_eval``.
        extra: learner-specific summary entries, appended.

    Returns:
        The summary dict (also written to ``run_dir/summary.json``).
    """
    recent_return, recent_success = stats.recent()
    final_eval, eval_error = None, None
    if status == "finished" and cfg.eval_episodes > 0:
        t0 = time.perf_counter()
        try:
            final_eval = evaluate(policy, cfg, device, episodes=cfg.eval_episodes,
                                  greedy=cfg.eval_greedy, note=_note)
        except EvaluationError as err:
            eval_error = err
        perf_s = {**perf_s, "final_eval": time.perf_counter() - t0}
    if final_eval is not None:
        logger.scalar("charts/eval_return", final_eval["return_mean"], global_step)
        if final_eval["success_rate"] is not None:
            logger.scalar("charts/eval_success_rate", final_eval["success_rate"], global_step)
            s = final_eval["success_rate"]
            best_success = s if best_success is None else max(best_success, s)
    summary = {
        "env": cfg.env, "env_kwargs": cfg.env_kwargs, "core": cfg.core, "algo": algo,
        "seed": cfg.seed, "status": status, "total_steps": global_step, "updates": updates,
        "wall_time_s": round(wall, 2), "sps": round(global_step / max(wall, 1e-9), 1),
        "final_success_rate": final_eval["success_rate"] if final_eval else None,
        "final_return": final_eval["return_mean"] if final_eval else recent_return,
        "final_eval_episodes": final_eval["episodes"] if final_eval else 0,
        "train_success_rate": recent_success, "train_return": recent_return,
        "best_success_rate": best_success, "checkpoint": checkpoint, "run_dir": run_dir,
        "perf_s": {k: round(v, 3) for k, v in perf_s.items()},
        **({"final_eval_error": str(eval_error)} if eval_error else {}),
        **(extra or {}),
    }
    logger.write_json("summary.json", summary)
    logger.close()
    if eval_error is not None:
        raise eval_error  # the checkpoint and summary.json are written
    return summary


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)
