"""Presets: matching (exact id > pattern > fallback), expressions of env kwargs, explicit flags win,
--preset none / NAME / unknown, config.json records them, every preset passes the config's checks,
`train.py presets`, and the first line of a real run."""

import json
import os
import subprocess
import sys

import pytest

import train
from agents import presets
from agents.config import TrainConfig
from agents.sweep import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--env-kwargs", "length=3", "--num-envs", "4", "--num-steps", "8", "--seq-len", "8",
        "--num-minibatches", "2", "--update-epochs", "1", "--hidden-size", "16", "--embed-size", "16",
        "--no-progress", "--device", "cpu"]
# ids that each pattern preset is meant for (every pattern preset needs an entry: see the last test)
SAMPLES = {
    "minigrid-memory": ["MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS13Random-v0", "MiniGrid-MemoryS17Random-v0"],
    "minigrid": ["MiniGrid-Empty-5x5-v0", "MiniGrid-DoorKey-8x8-v0", "BabyAI-GoToLocal-v0"],
    "popgym": ["popgym-RepeatPreviousEasy-v0", "popgym-CountRecallHard-v0"],
    "gymnasium": ["LunarLander-v3", "my/Env-v0"],
}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_the_most_specific_match_wins():
    """Exact id beats pattern beats the fallback; a longer literal start beats a shorter one."""
    assert presets.find("MiniGrid-MemoryS7-v0", "ppo").name == "minigrid-memory"
    assert presets.find("MiniGrid-MemoryS11-v0", "impala").name == "minigrid-memory-impala"
    assert presets.find("MiniGrid-DoorKey-5x5-v0", "ppo").name == "minigrid"
    assert presets.find("popgym-RepeatFirstEasy-v0", "ppo").name == "popgym"
    assert presets.find("popgym-PositionOnlyPendulumEasy-v0", "ppo").name == "popgym-pendulum"
    assert presets.find("popgym-PositionOnlyPendulumEasy-v0", "impala").name == "popgym-impala"
    assert presets.find("CartPole-v1", "ppo").name == "classic-control"
    assert presets.find("Some/Other-v0", "ppo").name == "gymnasium"
    assert presets.find("Some/Other-v0", "impala").name == "gymnasium-impala"
    assert presets.find("tmaze-passive", "ppo").name == "tmaze-passive"  # aliases are the native id
    own = [presets.Preset("fallback", "ppo", (), ".*", "", {}),
           presets.Preset("family", "ppo", (), "MiniGrid-.*", "", {}),
           presets.Preset("exact", "ppo", ("MiniGrid-MemoryS7-v0",), None, "", {}),
           presets.Preset("other-algo", "impala", ("CartPole-v1",), None, "", {})]
    assert presets.find("MiniGrid-MemoryS7-v0", "ppo", own).name == "exact"
    assert presets.find("MiniGrid-Empty-5x5-v0", "ppo", own).name == "family"
    assert presets.find("CartPole-v1", "ppo", own).name == "fallback"
    assert presets.find("CartPole-v1", "impala", own).name == "other-algo"
    assert presets.find("Pong-v5", "impala", own) is None


def test_settings_scale_with_the_task():
    """Rollouts a multiple of the episode; the Memory family sized by the grid; defaults from the env."""
    tmaze = presets.by_name("tmaze-passive")
    default = presets.resolve(tmaze, "urlstm/TMazePassive-v0", {})
    assert default["env_kwargs"] == {"length": 50}
    assert (default["num_envs"], default["num_steps"], default["seq_len"], default["gamma"]) == (
        TrainConfig().num_envs, TrainConfig.num_steps, TrainConfig.seq_len, TrainConfig.gamma)  # the default run
    for length in (1, 10, 20, 100, 250, 1000):
        s = presets.resolve(tmaze, "urlstm/TMazePassive-v0", {"length": length})
        assert s["num_steps"] % (length + 1) == 0 and s["seq_len"] == s["num_steps"]
        assert isinstance(s["num_steps"], int) and isinstance(s["gamma"], float)
    long = presets.resolve(tmaze, "urlstm/TMazePassive-v0", {"length": 250})
    assert (long["num_steps"], long["num_envs"], long["gamma"], long["total_steps"]) == (251, 16, 0.9, 2_500_000)
    chain = presets.resolve(presets.by_name("memory-chain"), "urlstm/MemoryChain-v0", {"num_bits": 3})
    assert chain["env_kwargs"] == {"length": 50, "num_bits": 3} and chain["num_steps"] == 102
    active = presets.resolve(presets.by_name("tmaze-active"), "urlstm/TMazeActive-v0", {"length": 30})
    assert active["num_steps"] % 33 == 0
    memory = presets.by_name("minigrid-memory")
    s7 = presets.resolve(memory, "MiniGrid-MemoryS7-v0", {})
    assert (s7["num_steps"], s7["seq_len"], s7["total_steps"]) == (128, 128, 1_000_000)
    assert presets.resolve(memory, "MiniGrid-MemoryS11Random-v0", {})["num_steps"] == 192


def test_explicit_flags_override_the_preset_and_env_kwargs_merge():
    cfg, supplied, _ = train.parse_train(["--env", "MiniGrid-MemoryS7-v0", "--num-envs", "8",
                                                "--env-kwargs", "max_steps=50"])
    assert cfg.preset == "minigrid-memory" and cfg.num_envs == 8 and "num_envs" not in supplied
    assert (cfg.num_steps, cfg.learning_rate, cfg.anneal_lr, cfg.policy_head_gain) == (128, 2e-3, False, 1.0)
    assert cfg.env_kwargs == {"vectorization": "sync", "max_steps": 50}
    assert supplied["env_kwargs"] == {"vectorization": "sync"} and supplied["num_steps"] == 128
    cfg = train.parse_train(["--env", "MiniGrid-MemoryS7-v0", "--env-kwargs", "vectorization='async'"])[0]
    assert cfg.env_kwargs == {"vectorization": "async"}
    cfg = train.parse_train(["--env", "MiniGrid-MemoryS7-v0", "--env-kwargs"])[0]  # nothing after it: none
    assert cfg.env_kwargs == {} and cfg.num_steps == 128
    cfg, supplied, _ = train.parse_train(["--env-kwargs", "length=100", "--gamma", "0.95"])
    assert (cfg.num_steps, cfg.num_envs, cfg.gamma) == (101, 16, 0.95) and "gamma" not in supplied
    line = presets.line(cfg, supplied)
    assert line.startswith("preset tmaze-passive") and "--num-steps 101" in line and "--gamma" not in line


def test_preset_none_and_by_name():
    cfg, supplied, _ = train.parse_train(["--env", "MiniGrid-MemoryS7-v0", "--preset", "none"])
    assert cfg.preset == "none" and supplied == {}
    assert (cfg.num_envs, cfg.num_steps, cfg.env_kwargs) == (TrainConfig().num_envs, TrainConfig.num_steps, {})
    assert presets.line(cfg, supplied).startswith("preset: none")
    cfg = train.parse_train(["--env", "MiniGrid-MemoryS9-v0", "--preset", "minigrid"])[0]
    assert cfg.preset == "minigrid" and cfg.num_steps == 128  # not the Memory family's 160


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--algo", "impala", "--env", "MiniGrid-MemoryS7-v0", "--preset", "minigrid-memory"], "is for --algo ppo"),
])
def test_a_bad_preset_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert train.main([*argv, "--logdir", str(tmp_path)]) == 2
    assert message in one_error_line(capsys)
    assert not os.listdir(tmp_path)


def test_config_json_records_the_preset_and_its_settings(tmp_path):
    code, _ = train.run_train([*TINY, "--total-steps", "32", "--eval-episodes", "2",
                                     "--logdir", str(tmp_path), "--run-name", "r"])
    assert code == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["preset"] == "tmaze-passive"
    assert config["preset_settings"] == {"gamma": 0.99}  # every other setting of it was given as a flag
    assert TrainConfig.from_dict({k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__})


def _ids(p: presets.Preset) -> list[str]:
    return list(p.ids) if p.ids else SAMPLES[p.name.removesuffix("-impala")]


def test_every_preset_passes_the_config_validation():
    """Each preset, for every id it names (or samples of its pattern) and several task sizes."""
    every = presets.load()
    assert {p.name for p in every if p.pattern} <= {n + s for n in SAMPLES for s in ("", "-impala")}
    for p in every:
        for env in _ids(p):
            sizes = [{}]
            if "length" in presets.env_defaults(env):
                sizes += [{"length": n} for n in (1, 20, 100, 1000)]
            if "distractor_steps" in presets.env_defaults(env):
                sizes += [{"distractor_steps": n} for n in (0, 15, 200)]
            for kwargs in sizes:
                settings = presets.resolve(p, env, kwargs)
                TrainConfig(env=env, algo=p.algo, **settings)  # raises ConfigError if invalid
                assert presets.find(env, p.algo) is not None
                cfg = train.parse_train(["--env", env, "--algo", p.algo, "--preset", p.name])[0]
                assert cfg.preset == p.name


def test_load_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('[[preset]]\nname = "x"\nalgo = "ppo"\nids = ["A-v0"]\n[preset.settings]\nnum_envz = 3\n')
    with pytest.raises(presets.PresetError, match="unknown settings"):
        presets.load(str(bad))
    bad.write_text('[[preset]]\nname = "x"\nalgo = "ppo"\nids = ["A-v0"]\npattern = "A.*"\n')
    with pytest.raises(presets.PresetError, match="either ids"):
        presets.load(str(bad))
    bad.write_text('[[preset]]\nname = "x"\nalgo = "ppo"\nids = ["A-v0"]\n[preset.settings]\nnum_steps = "{lenght}"\n')
    with pytest.raises(presets.PresetError, match="cannot evaluate num_steps"):
        presets.resolve(presets.load(str(bad))[0], "A-v0", {})


def test_train_py_presets_lists_them(capsys):
    assert train.main(["presets"]) == 0
    out = capsys.readouterr().out
    for p in presets.load():
        assert f"{p.name}  [{p.algo}]" in out and p.evidence in out
    assert train.main(["presets", "--env", "MiniGrid-MemoryS9-v0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("minigrid-memory [ppo]: --env-kwargs vectorization='sync' --num-envs 16 --num-steps 160")


def test_compare_gives_every_core_the_same_preset(tmp_path):
    runs = plan("urlstm/MemoryChain-v0", ["lstm", "urlstm", "mlp"], [1], "length", [10, 30], {}, [],
                str(tmp_path))
    for length in (10, 30):
        parsed = [train.parse_train(r.argv) for r in runs if r.value == length]
        assert {cfg.preset for cfg, _, _ in parsed} == {"memory-chain"}
        assert all(s == parsed[0][1] for _, s, _ in parsed) and parsed[0][0].num_steps % (length + 1) == 0


def test_the_first_line_of_a_real_run_names_the_preset(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--env", "urlstm/MemoryChain-v0",
                        *TINY[2:], "--total-steps", "32", "--eval-episodes", "1", "--logdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr
    first = p.stderr.splitlines()[0]
    assert first.startswith("preset memory-chain (ppo on urlstm/MemoryChain-v0") and "--env-kwargs length=50 num_bits=1" in first


def test_the_pendulum_preset_trains_a_gaussian_head(tmp_path):
    """The position-only pendulum's preset (Box actions) wins over the POPGym pattern and runs."""
    assert presets.find("popgym-PositionOnlyPendulumHard-v0", "ppo").name == "popgym-pendulum"
    assert presets.find("popgym-PositionOnlyCartPoleEasy-v0", "ppo").name == "popgym"
    code, s = train.run_train(["--env", "popgym-PositionOnlyPendulumEasy-v0", "--num-envs", "2",
                               "--num-steps", "20", "--seq-len", "20", "--update-epochs", "1",
                               "--num-minibatches", "1", "--total-steps", "80", "--eval-episodes", "1",
                               "--hidden-size", "8", "--embed-size", "8", "--no-progress",
                               "--device", "cpu", "--logdir", str(tmp_path)])
    assert code == 0 and s["status"] == "finished", s
    cfg = json.load(open(os.path.join(s["run_dir"], "config.json")))
    assert cfg["preset"] == "popgym-pendulum" and cfg["update_epochs"] == 1 and cfg["ent_coef"] == 0.0
    assert -1.0 <= s["final_return"] <= 1.0
