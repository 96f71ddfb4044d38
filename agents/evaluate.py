"""Run a trained policy with its recurrent state carried across steps; optional GIF of one episode."""

from __future__ import annotations

import numpy as np
import torch

from agents.rollout import env_actions
from policies.actor_critic import ActorCritic, obs_to_tensor

MAX_EVAL_STEPS = 2_000_000  # env steps, all envs together: a guard against episodes that never end


@torch.inference_mode()
def evaluate(policy: ActorCritic, cfg, device: torch.device, episodes: int, greedy: bool = False,
             seed: int | None = None, num_envs: int | None = None) -> dict:
    """Play ``episodes`` whole episodes in fresh environments (seed: cfg.seed + 10_000 by default).

    Each env plays a fixed quota of episodes so that short episodes are not over-counted.

    Returns:
        {"episodes", "return_mean", "return_std", "length_mean", "success_rate" (None when the env
        reports no success), "greedy"}.
    """
    import envs

    n = max(1, min(episodes, num_envs or cfg.num_envs))
    seed = cfg.seed + 10_000 if seed is None else seed
    venv = envs.make(cfg.env, n, seed, **cfg.env_kwargs)
    quota = np.full(n, episodes // n) + (np.arange(n) < episodes % n)
    done = np.zeros(n, dtype=np.int64)
    returns, lengths, successes = [], [], []
    obs, _ = venv.reset(seed=seed)
    obs = obs_to_tensor(policy.observation_space, obs, device)
    state = policy.initial_state(n, device)
    reset = torch.ones(n, dtype=torch.bool, device=device)
    prev_a = prev_r = None
    steps = 0
    try:
        while (done < quota).any() and steps < MAX_EVAL_STEPS:
            out = policy.act(obs, state, reset, prev_a, prev_r, greedy=greedy)
            next_obs, reward, term, trunc, info = venv.step(env_actions(venv.single_action_space, out.action))
            steps += n
            if "_episode" in info and info["_episode"].any():
                for i in np.flatnonzero(info["_episode"]):
                    if done[i] < quota[i]:
                        returns.append(float(info["episode"]["r"][i]))
                        lengths.append(float(info["episode"]["l"][i]))
                        if "_success" in info and info["_success"][i]:
                            successes.append(float(info["success"][i]))
                        done[i] += 1
            obs = obs_to_tensor(policy.observation_space, next_obs, device)
            reset = torch.as_tensor(np.logical_or(term, trunc), device=device)
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
    }


@torch.inference_mode()
def record_gif(policy: ActorCritic, cfg, device: torch.device, file: str, greedy: bool = False,
               seed: int | None = None, fps: int = 8, max_steps: int = 5_000) -> dict:
    """Play one episode in an env made with render_mode="rgb_array" and save its frames as a GIF.

    Raises ValueError when the environment cannot render RGB frames.
    """
    import envs
    from PIL import Image

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

    Args:
        logger: the run's ``agents.logger.Logger`` (closed here).
        stats: the run's ``EpisodeStats`` (its last 100 training episodes go in the summary).
        wall: wall-clock seconds of the whole run (resumed parts included).
        perf_s: seconds per activity (env, inference, learn, ...).
        extra: learner-specific summary entries, appended.

    Returns:
        The summary dict (also written to ``run_dir/summary.json``).
    """
    recent_return, recent_success = stats.recent()
    final_eval = None
    if status == "finished" and cfg.eval_episodes > 0:
        final_eval = evaluate(policy, cfg, device, episodes=cfg.eval_episodes,
                              greedy=cfg.eval_greedy)
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
        **(extra or {}),
    }
    logger.write_json("summary.json", summary)
    logger.close()
    return summary
