"""Training configuration: one frozen dataclass; ``train.py`` builds its flags with tyro.

The string literal under each field is its help text. Defaults that depend on other settings
(``None`` below: the number of envs and steps per learner, the minibatch counts) are resolved in
``__post_init__``, so ``TrainConfig(algo="impala")`` in Python and ``--algo impala`` on the command
line give the same run. Invalid values fail there with a ``ConfigError`` whose message says what to
change; a default never makes a plain combination of other settings invalid.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Annotated, Any

from tyro.conf import arg
from tyro.constructors import PrimitiveConstructorSpec


class ConfigError(Exception):
    """An invalid configuration; the message names the flag and what to change."""


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    """["length=100", "name=abc"] -> {"length": 100, "name": "abc"} (values as Python literals)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--env-kwargs takes key=value pairs, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def kwargs_flags(kwargs: dict[str, Any]) -> list[str]:
    """{"length": 100, "name": "abc"} -> ["length=100", "name='abc'"] (parse_kwargs's inverse)."""
    return [f"{k}={v!r}" for k, v in kwargs.items()]


# flag types: key=value pairs, and optional numbers that also accept none/null
Kwargs = Annotated[dict[str, Any], PrimitiveConstructorSpec(
    nargs="*", metavar="KEY=VALUE", instance_from_str=parse_kwargs,
    is_instance=lambda x: isinstance(x, dict), str_from_instance=kwargs_flags)]


def _optional(kind: type) -> Any:
    def parse(args: list[str]) -> Any:
        return None if args[0].lower() in ("none", "null", "") else kind(args[0])
    return Annotated[kind | None, PrimitiveConstructorSpec(
        nargs=1, metavar=f"{kind.__name__.upper()}|none", instance_from_str=parse,
        is_instance=lambda x: x is None or isinstance(x, kind), str_from_instance=lambda x: [str(x)])]


OptInt, OptFloat, OptStr = _optional(int), _optional(float), _optional(str)
Derived = Annotated[OptInt, arg(help_behavior_hint="(default: derived, as above)")]  # None: resolved

# fields that --resume lets a person change (the resume flag's help is written from this list)
RESUMABLE_OVERRIDES = ("total_steps", "device", "tf32", "torch_threads", "eval_episodes", "eval_every",
                       "eval_greedy", "save_every", "log_every", "progress", "actors", "ray_address")
RESUME_HELP = ("Continue a stopped run: a checkpoint file or a run folder. The run's saved "
               "configuration is used; only " + ", ".join("--" + n.replace("_", "-") for n in
                                                          RESUMABLE_OVERRIDES) + " may be changed.")
PPO_MINIBATCHES = 4      # num_minibatches' default: at most this many, the largest that divides
APPO_MINIBATCHES = 4     # learner_minibatches' default with --pg-loss clipped (1 with vtrace)
IMPALA_ENVS_PER_ACTOR = 4
PPO_DEFAULTS = {"num_envs": 32, "total_steps": 1_000_000}
IMPALA_DEFAULTS = {"total_steps": 2_000_000}  # and IMPALA_ENVS_PER_ACTOR envs per actor


@dataclass(frozen=True)
class TrainConfig:
    """Everything a PPO run needs. Defaults: UR-LSTM on the passive T-maze of length 50."""

    # --- task and agent -------------------------------------------------------------------------
    env: str = "urlstm/TMazePassive-v0"
    """Environment id: a native task (urlstm/TMazePassive-v0, urlstm/TMazeActive-v0,
    urlstm/MemoryChain-v0, urlstm/VisualMatchPassive-v0, ...), MiniGrid-MemoryS7-v0, a POPGym id, or
    any Gymnasium id."""
    env_kwargs: Kwargs = field(default_factory=dict)
    """Keyword arguments of the environment as key=value pairs, e.g. --env-kwargs length=100
    (values are parsed as Python literals). They are merged key by key over the preset's; pass
    --env-kwargs with nothing after it for none at all."""
    preset: str = "auto"
    """Settings preset from agents/presets.toml (python train.py presets lists them): auto applies
    the most specific one for --env and --algo, NAME another one, none no preset. Flags given on
    the command line override its settings; config.json records the preset used (here its name)
    and the settings it supplied (preset_settings)."""
    core: str = "urlstm"
    """Memory core: lstm, gru, urlstm, urgru, mlp (no memory), stack:K (no memory beyond a window
    of the last K observations), or a gate-grid variant such as lstm:UR."""
    hidden_size: int = 128
    """Width of the memory core (its output and recurrent state)."""
    num_layers: int = 1
    """Number of stacked core layers."""
    embed_size: int = 128
    """Width of the observation encoder's output, the core's input."""
    prev_action_reward: bool = True
    """Feed the previous action and reward to the core next to the observation."""
    learn_initial_state: bool = False
    """Start every episode from a learned core state (a parameter per layer and state tensor,
    zeros at first) instead of zeros; it is checkpointed and exported with the weights."""
    policy_head_gain: float = 0.01
    """Orthogonal-init gain of the policy head's weights. 0.01 (CleanRL's) starts from a
    near-uniform policy; with it, PPO and IMPALA stay at chance on MiniGrid-MemoryS7, where 1.0
    learns (the tiny head keeps the first updates from telling the cue images apart)."""

    # --- PPO (CleanRL's names) ------------------------------------------------------------------
    total_steps: Derived = None
    """Environment steps to train for, all envs together (default: 1M; with --algo impala 2M)."""
    num_envs: Derived = None
    """Environments stepped in parallel (default: 32; with --algo impala 4 per actor: IMPALA takes
    one gradient step per batch and needs small batches)."""
    num_steps: int = 102
    """Rollout length per env per update. For memory length L use a multiple of the episode length
    (L+1 for the passive T-maze) so that episodes never straddle two rollouts."""
    seq_len: int = 102
    """Length of the training sequences (a divisor of num_steps): gradients flow through at most
    seq_len steps. seq_len = num_steps back-propagates through the whole rollout."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: Derived = None
    """Minibatches per epoch; they split the num_envs * num_steps / seq_len sequences (default:
    the largest divisor of that number up to 4)."""
    update_epochs: int = 4
    """Passes over the rollout per update."""
    norm_adv: bool = True
    """Normalise advantages in each minibatch."""
    norm_reward: bool = False
    """Divide the rewards the learner sees by the running standard deviation of the discounted
    return (as Gymnasium's NormalizeReward), for tasks whose returns are far from 1 in size; the
    logged returns stay the environment's. PPO only."""
    clip_coef: float = 0.2
    """PPO ratio clipping coefficient."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    uniform_kl_coef: float = 0.02
    """Coefficient of KL(uniform || policy) in the loss, a log-barrier on every action's probability
    (discrete actions). Unlike the entropy bonus its pull does not fade as an action becomes unlikely,
    so states that are reached only once the rest of the policy is nearly deterministic (the T-maze
    junction) still get explored; it keeps each action's probability near coef^2 / num_actions
    where advantages oppose it. 0: plain CleanRL PPO."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient norm clip."""
    target_kl: OptFloat = None
    """Stop the update's epochs early when the approximate KL exceeds this (none: never)."""
    refresh_states: bool = False
    """Before each epoch after the first, recompute the start state of every training sequence by
    re-running the whole rollout with the current weights (no gradient), so that later epochs start
    from the memory the current policy would have (the stored states are those of the acting
    policy). Costs about one forward pass over the rollout per extra epoch, logged as
    perf/refresh_states_s (part of perf/learn_s). A no-op when seq_len = num_steps (one sequence per
    rollout, whose start state is the rollout's own)."""

    # --- IMPALA (--algo impala) -------------------------------------------------------------------
    algo: str = "ppo"
    """Learner: ppo (synchronous rollouts) or impala (actor processes, V-trace, agents/impala.py)."""
    num_actors: int = 2
    """IMPALA: actor processes; each steps num_envs / num_actors environments."""
    unroll_length: int = 102
    """IMPALA: steps per actor unroll; gradients flow through a whole unroll, which starts from the
    recurrent state the actor had (use a multiple of the episode length, as for --num-steps)."""
    learner_batch: int = 1
    """IMPALA: unrolls per learner update (an update trains on learner_batch * num_envs / num_actors
    sequences of unroll_length steps). The learner takes one gradient step per update (PPO takes
    update_epochs * num_minibatches): keep updates small, e.g. 1 unroll of 4 envs per actor."""
    learner_epochs: int = 1
    """IMPALA: passes the learner makes over each batch (1: the paper's IMPALA; more reuse the batch
    as PPO's epochs do, each step recomputing V-trace for the moved policy)."""
    learner_minibatches: Derived = None
    """IMPALA: minibatches per pass; they split the batch's learner_batch * num_envs / num_actors
    unrolls, so the learner takes learner_epochs * learner_minibatches gradient steps per batch
    (default: 1 with --pg-loss vtrace; with clipped the largest divisor of the unrolls up to 4)."""
    pg_loss: str = "vtrace"
    """IMPALA: policy-gradient loss. vtrace: the paper's, rho_s A_s log pi(a_s) with A_s the V-trace
    advantage. clipped (APPO): PPO's clipped surrogate (--clip-coef) of the ratio of pi to the
    learner's policy before the update, on the same advantage weighted by min(rho-bar, that policy
    / the behaviour policy) (decoupled PPO: the actors' lag does not shrink the trust region); it
    keeps several passes over a batch (--learner-epochs, --learner-minibatches) near the policy the
    update started from."""
    max_policy_lag: OptInt = 20
    """IMPALA: drop unrolls acted by a policy more than this many updates older than the learner's
    (none: keep all)."""
    vtrace_rho_bar: float = 1.0
    """IMPALA: V-trace clip of the importance weights (rho-bar)."""
    vtrace_c_bar: float = 1.0
    """IMPALA: V-trace clip of the trace coefficients (c-bar)."""
    vtrace_lambda: float = 0.95
    """IMPALA: V-trace's lambda, a factor on the trace coefficients (0.95: TD(lambda) targets and
    advantages, as GAE's lambda in PPO; 1: the paper's n-step targets, with more variance)."""
    actors: str = "local"
    """IMPALA: how the actors run. local: processes on this machine writing unrolls into shared
    memory. ray: Ray actors returning unrolls through Ray's object store, restarted by Ray when
    they die, on this machine or across a cluster (--ray-address; needs pip install -e ".[ray]")."""
    ray_address: OptStr = None
    """With --actors ray: the Ray cluster to join, auto or HOST:PORT of `ray start --head` (none:
    start a private Ray instance with this machine's CPUs, stopped at the end of the run)."""

    # --- run --------------------------------------------------------------------------------------
    seed: int = 1
    """Seed of torch, numpy and the environments."""
    device: str = "auto"
    """Learner device: auto (CUDA when available), cpu or cuda. Environments run on the CPU."""
    tf32: bool = False
    """On CUDA: float32 matrix products on TF32 tensor cores (torch.set_float32_matmul_precision
    'high'), as cuDNN's LSTM and GRU run by default. The Triton scans of the UR and grid cores are
    then about 3x faster on an H200 (docs/gpu.md); off, they compute in IEEE float32."""
    torch_threads: int = 1
    """torch.set_num_threads for the run (0: torch's default, one per core). One thread is fastest for
    these small networks and leaves the other cores to the environments; on a busy machine torch's
    multi-threaded ops can be 100x slower, as their threads wait for each other."""
    logdir: str = "runs"
    """Parent folder of the run folders."""
    run_name: OptStr = None
    """Run folder name (default: <env>__<core>__s<seed>__<timestamp>)."""
    resume: Annotated[OptStr, arg(help=RESUME_HELP)] = None
    eval_episodes: int = 100
    """Episodes of the final evaluation (0: skip it)."""
    eval_every: int = 0
    """Also evaluate every this many updates (32 episodes, most likely action), logged as
    charts/eval_success_rate and charts/eval_return: a learning curve without the exploration noise
    of the training episodes (0: only the final evaluation)."""
    eval_greedy: bool = True
    """Evaluate with the most likely action (--no-eval-greedy: sample from the policy, exploration
    floor included, as in training)."""
    save_every: int = 50
    """Write a checkpoint every this many updates (also at the end and on Ctrl-C)."""
    log_every: int = 1
    """Write scalars to TensorBoard every this many updates (histograms 10x rarer)."""
    exact_resume: bool = True
    """Record the actions sent to the environments so that --resume can replay them and continue
    bit-for-bit; off: a resumed run re-seeds the environments."""
    progress: bool = True
    """Show a live progress bar."""

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        def resolve(name: str, value: Any) -> None:  # a default that depends on other settings
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

        need(self.algo in ("ppo", "impala"), f"--algo must be ppo or impala, got {self.algo!r}")
        impala = self.algo == "impala"
        need(isinstance(self.num_actors, int) and self.num_actors > 0,
             f"--num-actors must be a positive integer, got {self.num_actors!r}")
        resolve("num_envs", IMPALA_ENVS_PER_ACTOR * self.num_actors if impala else PPO_DEFAULTS["num_envs"])
        resolve("total_steps", (IMPALA_DEFAULTS if impala else PPO_DEFAULTS)["total_steps"])
        if isinstance(self.num_envs, int) and isinstance(self.num_steps, int) and isinstance(
                self.seq_len, int) and self.seq_len > 0:
            resolve("num_minibatches", largest_divisor(self.num_sequences, PPO_MINIBATCHES))
            if isinstance(self.learner_batch, int) and self.num_actors:
                unrolls = self.learner_batch * (self.num_envs // self.num_actors)
                resolve("learner_minibatches", largest_divisor(
                    unrolls, APPO_MINIBATCHES if self.pg_loss == "clipped" else 1))

        for name in ("hidden_size", "num_layers", "embed_size", "num_envs", "num_steps", "seq_len",
                     "num_minibatches", "update_epochs", "save_every", "log_every"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0,
                 f"--{_flag(name)} must be a positive integer, got {value!r}")
        need(self.total_steps > 0, f"--total-steps must be positive, got {self.total_steps}")
        need(self.eval_every >= 0, f"--eval-every must be >= 0, got {self.eval_every}")
        need(self.eval_episodes >= 0, f"--eval-episodes must be >= 0, got {self.eval_episodes}")
        need(self.torch_threads >= 0, f"--torch-threads must be >= 0, got {self.torch_threads}")
        need(not (self.tf32 and self.device == "cpu"), "--tf32 is for CUDA: --device cpu computes float32 "
             "products in full precision")
        need(self.num_steps % self.seq_len == 0,
             f"--num-steps ({self.num_steps}) must be a multiple of --seq-len ({self.seq_len}): "
             f"use a divisor of {self.num_steps} for --seq-len, e.g. {self.num_steps}")
        need(self.algo == "impala" or self.num_sequences % self.num_minibatches == 0,
             f"--num-minibatches ({self.num_minibatches}) must divide the number of training "
             f"sequences, num_envs * num_steps / seq_len = {self.num_sequences}: "
             f"use one of {_divisors(self.num_sequences)}")
        need(self.policy_head_gain > 0, f"--policy-head-gain must be positive, got {self.policy_head_gain}")
        need(self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}")
        need(0.0 <= self.gamma <= 1.0, f"--gamma must be in [0, 1], got {self.gamma}")
        need(0.0 <= self.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1], got {self.gae_lambda}")
        need(self.clip_coef > 0, f"--clip-coef must be positive, got {self.clip_coef}")
        need(self.ent_coef >= 0, f"--ent-coef must be >= 0, got {self.ent_coef}")
        need(self.uniform_kl_coef >= 0, f"--uniform-kl-coef must be >= 0, got {self.uniform_kl_coef}")
        need(self.vf_coef > 0, f"--vf-coef must be positive, got {self.vf_coef}")
        need(self.max_grad_norm > 0, f"--max-grad-norm must be positive, got {self.max_grad_norm}")
        need(self.target_kl is None or self.target_kl > 0,
             f"--target-kl must be positive, got {self.target_kl}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"--device must be auto, cpu or cuda, got {self.device!r}")
        need(isinstance(self.env_kwargs, dict), "--env-kwargs must be key=value pairs")
        need(bool(self.env) and bool(self.core), "--env and --core must not be empty")
        need(isinstance(self.preset, str) and bool(self.preset), "--preset must be auto, a name or none")
        for name in ("num_actors", "unroll_length", "learner_batch", "learner_epochs",
                     "learner_minibatches"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0,
                 f"--{_flag(name)} must be a positive integer, got {value!r}")
        need(self.algo != "impala" or self.num_envs % self.num_actors == 0,
             f"--num-envs ({self.num_envs}) must be a multiple of --num-actors ({self.num_actors})")
        need(self.pg_loss in ("vtrace", "clipped"),
             f"--pg-loss must be vtrace or clipped, got {self.pg_loss!r}")
        unrolls = self.learner_batch * (self.num_envs // self.num_actors)
        need(self.algo != "impala" or unrolls % self.learner_minibatches == 0,
             f"--learner-minibatches ({self.learner_minibatches}) must divide the unrolls of a "
             f"batch, learner_batch * num_envs / num_actors = {unrolls}: use one of "
             f"{_divisors(unrolls)}")
        need(self.max_policy_lag is None or self.max_policy_lag >= 0,
             f"--max-policy-lag must be >= 0 (or none), got {self.max_policy_lag}")
        need(self.vtrace_rho_bar > 0 and self.vtrace_c_bar > 0,
             "--vtrace-rho-bar and --vtrace-c-bar must be positive")
        need(0.0 <= self.vtrace_lambda <= 1.0,
             f"--vtrace-lambda must be in [0, 1], got {self.vtrace_lambda}")
        need(self.actors in ("local", "ray"), f"--actors must be local or ray, got {self.actors!r}")
        need(not self.norm_reward or self.algo == "ppo",
             "--norm-reward needs --algo ppo (IMPALA's unrolls arrive out of order: no env's "
             "return can be followed across them)")
        need(self.actors == "local" or self.algo == "impala",
             "--actors ray needs --algo impala (PPO scales out with torchrun: docs/distributed.md)")
        need(self.ray_address is None or self.actors == "ray", "--ray-address needs --actors ray")
        need(self.actors != "ray" or importlib.util.find_spec("ray") is not None,
             "--actors ray needs Ray: pip install -e \".[ray]\"")

    @property
    def num_sequences(self) -> int:
        """Training sequences per rollout: num_envs * num_steps / seq_len."""
        return self.num_envs * (self.num_steps // self.seq_len)

    @property
    def batch_size(self) -> int:
        """Environment steps per update."""
        if self.algo == "impala":
            return self.learner_batch * (self.num_envs // self.num_actors) * self.unroll_length
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Updates in the run (total_steps rounded up to whole rollouts)."""
        return -(-self.total_steps // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        return cls(**data)




def _flag(name: str) -> str:
    return name.replace("_", "-")


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (1 when n < 1)."""
    return max((d for d in range(1, min(n, at_most) + 1) if n % d == 0), default=1)


def _divisors(n: int) -> str:
    ds = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, ds[:8])) + (", ..." if len(ds) > 8 else "")
