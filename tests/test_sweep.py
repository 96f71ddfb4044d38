"""`train.py compare`: sweep parsing, templates, bad input, and a tiny real sweep that is resumed."""

import json
import os
import shutil

import pytest

import train
from agents import sweep

TINY = ["--num-envs", "4", "--num-steps", "{length + 1}", "--seq-len", "{length + 1}",
        "--num-minibatches", "2", "--update-epochs", "1", "--hidden-size", "16", "--embed-size", "16",
        "--total-steps", "{8 * (length + 1)}", "--eval-episodes", "4", "--eval-every", "1", "--device", "cpu"]


def test_parse_sweep():
    assert sweep.parse_sweep("length=50,100, 250") == ("length", [50, 100, 250])
    assert sweep.parse_sweep("mode=a,b") == ("mode", ["a", "b"])
    assert sweep.parse_sweep(None) == (None, [None])
    for bad in ("length", "=1,2", "length=", "length=1,,2", "length=1,1", "2x=1"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_sweep(bad)


def test_render_templates():
    assert sweep.render("{length + 1}", {"length": 100}) == "101"
    assert sweep.render("{max(1_000_000, 2000 * length)}", {"length": 1000}) == "2000000"
    assert sweep.render("{length / 2}", {"length": 5}) == "2.5"
    assert sweep.render("x{length}y{length*2}", {"length": 3}) == "x3y6"
    assert sweep.render("no braces", {}) == "no braces"
    for bad in ("{__import__('os')}", "{other + 1}", "{length.real}", "{length +}"):
        with pytest.raises(sweep.SweepError):
            sweep.render(bad, {"length": 3})


@pytest.mark.parametrize("argv,message", [
    (["--sweep", "length"], "--sweep takes KEY=V1,V2"),
    (["--cores", "lstm,nope"], "unknown core 'nope'"),
    (["--cores", "lstm,stack:x"], "invalid core 'stack:x'"),
    (["--seeds", "a"], "--seeds takes a count"),
    (["--sweep", "length=4", "--", "--num-steps", "{length}", "--seq-len", "3"],
     "run lstm__length4__s1: --num-steps (4) must be a multiple of --seq-len (3)"),
    (["--sweep", "length=4", "--", "--num-steps", "{lenght}"], "only numbers, length"),
    (["--", "--seed", "3"], "set by compare itself"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_compare_input_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    assert train.main(["compare", "--cores", "lstm", "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "s" / "lstm__length4__s1")


def test_tiny_sweep_end_to_end_then_resumed(tmp_path, capsys):
    out = str(tmp_path / "sweep")
    argv = ["compare", "--cores", "lstm,mlp", "--seeds", "2", "--sweep", "length=3,5", "--jobs", "2",
            "--out", out, "--no-progress", "--", *TINY]
    # one run was stopped earlier (checkpoint, status "interrupted"): the sweep resumes it
    name = "lstm__length3__s1"
    plan = sweep.plan("urlstm/TMazePassive-v0", ["lstm"], [1], "length", [3], {}, TINY, out)
    code, summary = train.run_train(plan[0].argv, stop=lambda update: update >= 1)
    assert summary["status"] == "interrupted" and summary["total_steps"] == 16

    assert train.main(argv) == 0
    names = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
    assert names == ["lstm__length3__s1", "lstm__length3__s2", "lstm__length5__s1", "lstm__length5__s2",
                     "mlp__length3__s1", "mlp__length3__s2", "mlp__length5__s1", "mlp__length5__s2"]
    for d in names:
        s = json.loads(open(os.path.join(out, d, "summary.json")).read())
        assert s["status"] == "finished" and s["final_eval_episodes"] == 4
    assert json.loads(open(os.path.join(out, name, "summary.json")).read())["total_steps"] == 32
    assert os.path.exists(os.path.join(out, name, "config_resumed.json"))  # resumed, not redone
    data = json.loads(open(os.path.join(out, "report.json")).read())
    assert data["key"] == "length" and set(data["horizon"]) == {"lstm", "mlp"}
    assert os.path.getsize(os.path.join(out, "report.png")) > 1000
    assert "8/8 runs done" in capsys.readouterr().out
    assert "(charts/eval_success_rate) reached 0.9" in open(os.path.join(out, "report.md")).read()

    # a second invocation skips finished runs; a broken run (no summary, no checkpoint) is set aside and redone
    broken = os.path.join(out, "mlp__length5__s2")
    os.remove(os.path.join(broken, "summary.json"))
    os.remove(os.path.join(broken, "checkpoint.pt"))
    before = {d: os.path.getmtime(os.path.join(out, d, "summary.json")) for d in names if d != "mlp__length5__s2"}
    assert train.main(argv) == 0
    after = {d: os.path.getmtime(os.path.join(out, d, "summary.json")) for d in before}
    assert before == after
    assert json.loads(open(os.path.join(broken, "summary.json")).read())["status"] == "finished"
    assert len(os.listdir(os.path.join(out, "broken"))) == 1

    # the folder remembers its settings: other train flags need another --out
    assert train.main([*argv[:-len(TINY)], *TINY[:-2], "--device", "auto"]) == 2
    shutil.rmtree(out)


def test_a_second_compare_on_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    with sweep._exclusive(str(out)):  # as if another compare were running there
        assert train.main(["compare", "--cores", "mlp", "--seeds", "1", "--out", str(out)]) == 2
    assert "another 'train.py compare' is running on" in capsys.readouterr().err
    assert not any(p.is_dir() for p in out.iterdir())


def test_a_flag_may_be_rewritten_when_the_runs_already_there_keep_theirs(tmp_path):
    out = str(tmp_path)
    meta = {"env": "urlstm/TMazePassive-v0", "env_kwargs": {}, "sweep_key": "length",
            "train_flags": ["--total-steps", "{40 * length**2}"]}
    sweep._remember(out, meta, [50, 500], ["lstm"], [1], None)
    # a cap that only the new length reaches: the runs at 50 and 500 keep 100k and 10M steps
    capped = dict(meta, train_flags=["--total-steps", "{min(10_000_000, 40 * length**2)}"])
    sweep._remember(out, capped, [1000], ["lstm"], [1], None)
    saved = json.loads(open(os.path.join(out, "sweep.json")).read())
    assert saved["values"] == [50, 500, 1000] and saved["train_flags"] == capped["train_flags"]
    # a cap below 10M would change the run at 500: refused
    lower = dict(meta, train_flags=["--total-steps", "{min(5_000_000, 40 * length**2)}"])
    with pytest.raises(sweep.SweepError, match="use another --out"):
        sweep._remember(out, lower, [2000], ["lstm"], [1], None)


def test_two_commands_on_one_folder_plan_their_own_runs(tmp_path):
    from agents import report

    out = str(tmp_path)
    meta = {"env": "popgym-RepeatPreviousMedium-v0", "env_kwargs": {}, "sweep_key": None, "train_flags": []}
    first = "python train.py compare --cores urlstm,lstm --seeds 3"
    second = "python train.py compare --cores mlp,lstm --seeds 1"
    sweep._remember(out, meta, [None], ["urlstm", "lstm"], [1, 2, 3], first)
    sweep._remember(out, meta, [None], ["mlp", "lstm"], [1], second)  # one seed of a baseline
    sweep._remember(out, meta, [None], ["mlp"], [1], second)  # the same command again (a resume)
    saved = json.loads(open(os.path.join(out, "sweep.json")).read())
    assert saved["commands"] == [first, second]  # the report shows both, in order
    assert saved["cores"] == ["urlstm", "lstm", "mlp"] and saved["seeds"] == [1, 2, 3]
    assert len(saved["runs"]) == 7 and ["mlp", None, 1] in saved["runs"]
    agg = report.aggregate([], None, planned=saved)
    assert {c: agg["cells"][(c, None)]["planned"] for c in saved["cores"]} == {"urlstm": 3, "lstm": 3, "mlp": 1}
    # a folder written before "runs" existed: every core at every seed, as then
    legacy = {k: v for k, v in saved.items() if k not in ("runs", "commands")}
    assert report.aggregate([], None, planned=legacy)["cells"][("mlp", None)]["planned"] == 3
    md = report.markdown(report.aggregate([], None, planned=saved), [], out, report.asked_commands(saved))
    assert md.index(first) < md.index(second)
    # such a folder recorded only the last command
    assert report.asked_commands(dict(legacy, command=second)) == [second]


def test_the_line_after_each_run_rounds_its_figure(tmp_path):
    from agents.logger import write_json

    run = sweep.Run("urlstm", None, 2, "urlstm__s2", [])
    for summary, figure in (({"final_success_rate": 0.996}, "success 1.00"),
                            ({"final_success_rate": None, "final_return": -0.49583333373}, "return -0.50"),
                            ({"final_success_rate": None, "final_return": None}, "return None")):
        write_json(str(tmp_path / "summary.json"), {"status": "finished", "total_steps": 2_002_944, **summary})
        assert sweep._summary_line(run, None, str(tmp_path), 0, 192.0) == \
            f"urlstm seed 2: finished, {figure} (2,002,944 steps, 3.2 min)"
    assert "FAILED (exit 1" in sweep._summary_line(run, None, str(tmp_path / "none"), 1, 1.0)
