"""Aggregation of a folder of runs: statistics, memory horizon, and report files from synthetic runs."""

import json

import numpy as np
import pytest

from agents import report
from agents.logger import write_json


def test_bootstrap_ci_brackets_the_mean_and_collapses_for_constant_data():
    assert report.bootstrap_ci([0.7, 0.7, 0.7]) == (0.7, 0.7)
    assert report.bootstrap_ci([0.3]) == (0.3, 0.3)
    lo, hi = report.bootstrap_ci([0.0, 1.0, 1.0, 0.0, 1.0])
    assert 0.0 <= lo < 0.6 < hi <= 1.0
    x = np.random.default_rng(1).normal(5.0, 1.0, size=400)
    lo, hi = report.bootstrap_ci(x)  # 95% interval of the mean: about mean +- 1.96 / sqrt(400)
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.15) and lo < x.mean() < hi


def test_iqm_cuts_a_quarter_at_each_end():
    assert report.iqm([1, 2, 3, 4, 100, 200, 300, 400]) == pytest.approx((3 + 4 + 100 + 200) / 4)
    assert report.iqm([3, 1, 2]) == 2.0  # fewer than 4 values: nothing cut
    assert report.iqm([0, 1, 1, 10]) == 1.0


def test_steps_to_threshold_and_horizon():
    steps = np.array([100, 200, 300, 400])
    assert report.steps_to(steps, np.array([0.1, 0.95, 0.5, 1.0])) == 200
    assert report.steps_to(steps, np.array([0.1, 0.2, 0.3, 0.89])) is None
    by_length = {50: [1.0, 1.0, 0.0], 100: [1.0, 0.0, 0.0], 250: [0.95, 0.92, 0.1], 500: [0.9, 0.0]}
    assert report.horizon(by_length) == 250  # 500: 1 of 2 seeds is not a majority
    assert report.horizon({50: [0.5, 0.5]}) is None


def _fake_run(folder, core, length, seed, success, curve):
    from torch.utils.tensorboard import SummaryWriter

    run_dir = folder / f"{core}__length{length}__s{seed}"
    run_dir.mkdir()
    write_json(str(run_dir / "config.json"), {"core": core, "seed": seed, "env": "urlstm/TMazePassive-v0",
                                              "env_kwargs": {"length": length}})
    write_json(str(run_dir / "summary.json"), {"status": "finished", "final_success_rate": success,
                                               "final_return": success, "sps": 1000.0 * seed,
                                               "total_steps": 400})
    with SummaryWriter(str(run_dir)) as w:
        for step, value in curve:
            w.add_scalar("charts/eval_success_rate", value, step)
        w.add_scalar("memory/timescale_mean", 10.0 * seed, 400)


def test_report_of_synthetic_runs(tmp_path):
    finals = {("lstm", 50): [1.0, 1.0, 0.9], ("lstm", 100): [0.5, 0.4, 1.0],
              ("urlstm", 50): [1.0, 1.0, 1.0], ("urlstm", 100): [1.0, 0.95, 0.2]}
    for (core, length), values in finals.items():
        for seed, final in enumerate(values, start=1):
            # reaches 0.9 at step 100 * seed when the run ends solved
            curve = [(100 * k, final if k >= seed else 0.0) for k in range(1, 5)]
            _fake_run(tmp_path, core, length, seed, final, curve)
    (tmp_path / "broken").mkdir()  # not a run folder: ignored
    md = report.write(str(tmp_path))
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["key"] == "length"  # inferred: the one env kwarg that varies
    assert data["horizon"] == {"lstm": 50, "urlstm": 100}
    cells = {(c["core"], c["length"]): c for c in data["cells"]}
    assert cells[("lstm", 100)]["mean"] == pytest.approx(np.mean([0.5, 0.4, 1.0]))
    assert cells[("lstm", 100)]["ci"] == list(report.bootstrap_ci([0.5, 0.4, 1.0]))
    assert cells[("urlstm", 50)]["ci"] == [1.0, 1.0]
    assert cells[("lstm", 50)]["steps_to_solve"] == 200 and cells[("lstm", 50)]["solved_seeds"] == 3
    assert cells[("lstm", 100)]["solved_seeds"] == 1 and cells[("lstm", 100)]["steps_to_solve"] == 300
    assert cells[("urlstm", 100)]["sps"] == pytest.approx(2000.0)
    assert cells[("urlstm", 100)]["timescale"] == pytest.approx(20.0)
    text = open(md).read()
    assert "| 100 | `urlstm` | 3 | 0.72 |" in text and "| `lstm` | 50 |" in text
    for name in ("report.png", "report.pdf"):
        assert (tmp_path / name).stat().st_size > 1000


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    import train

    assert train.main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no run folders (with config.json) in {tmp_path}"


def test_gate_grid_heatmaps_and_the_papers_claims(tmp_path):
    """Grid cells get a 4 x 3 table per family and sweep value and a verdict per claim: a clear
    success gap decides, a tie on success is decided by the steps to 0.9, cells not run say so."""
    finals = {"lstm:-R": [1.0, 1.0, 1.0], "lstm:-M": [0.0, 0.1, 0.0], "lstm:--": [1.0, 1.0, 1.0],
              "urlstm": [1.0, 1.0, 1.0], "lstm:U-": [0.5, 0.0, 1.0]}
    reach = {"lstm:-R": 1, "lstm:--": 3, "urlstm": 1, "lstm:U-": 1}  # the eval at which 0.9 is reached
    for core, values in finals.items():
        for seed, final in enumerate(values, start=1):
            first = reach.get(core, 9)
            _fake_run(tmp_path, core, 100, seed, final,
                      [(100 * k, final if k >= first else 0.0) for k in range(1, 5)])
    md = open(report.write(str(tmp_path))).read()
    verdicts = {(r["cell"], r["against"]): r["verdict"]
                for r in json.loads((tmp_path / "report.json").read_text())["gate_grid_claims"]}
    assert verdicts[("-R", "-M")] == "yes"                # 1.0 on every seed against 0.03
    assert verdicts[("-R", "--")] == "yes (faster)"       # both 1.0: 0.9 at 100 steps against 300
    assert verdicts[("UR", "-R")] == "tie"                # both 1.0 at 100 steps
    assert verdicts[("U-", "--")] == "undecided"          # 0.5 [0, 1] against 1.0 on 3 seeds
    assert verdicts[("CR", "CM")] == "missing"
    assert "| `-` | 1.00 [1.00, 1.00], 300 (3/3) | 0.03 [0.00, 0.10], - (0/3) |" in md
    assert (tmp_path / "report_grid.png").stat().st_size > 1000


def test_a_task_without_success_is_reported_by_its_return(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for seed, final in ((1, 0.95), (2, -0.45)):
        run_dir = tmp_path / f"urlstm__s{seed}"
        run_dir.mkdir()
        write_json(str(run_dir / "config.json"), {"core": "urlstm", "seed": seed,
                                                  "env": "popgym-RepeatFirstEasy-v0", "env_kwargs": {}})
        write_json(str(run_dir / "summary.json"), {"status": "finished", "final_success_rate": None,
                                                   "final_return": final, "sps": 1.0, "total_steps": 300})
        with SummaryWriter(str(run_dir)) as w:
            for step, value in ((100, -0.5), (200, final), (300, final)):
                w.add_scalar("charts/eval_return", value, step)
    text = open(report.write(str(tmp_path))).read()
    assert "| `urlstm` | 2 | 0.25 |" in text and "| core | seeds | return |" in text
    assert "gate grid" not in text  # one UR core is no grid
    assert "| 200 (1/2) |" in text  # the return curve reaches 0.9 at step 200 for one seed


def test_several_folders_give_one_table_of_every_core_on_every_task(tmp_path, capsys):
    import train

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for seed, final in enumerate([1.0, 0.5, 1.0], start=1):
        _fake_run(a, "urlstm", 100, seed, final, [(100, 0.0), (200, final)])
    _fake_run(a, "lstm", 100, 1, 0.5, [(100, 0.0), (200, 0.5)])
    _fake_run(b, "lstm", 250, 1, 1.0, [(100, 1.0)])
    write_json(str(b / "sweep.json"), {"env": "urlstm/TMazePassive-v0", "env_kwargs": {"length": 250},
                                       "sweep_key": None, "cores": ["lstm"], "seeds": [1, 2]})
    assert train.main(["report", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| core | urlstm/TMazePassive-v0 (success) | urlstm/TMazePassive-v0 length=250 (success) |" in out
    assert "| `urlstm` | 0.83 [0.50, 1.00] (2/3) | not run |" in out
    assert "| `lstm` | 0.50 [0.50, 0.50] (0/1) | 1.00 [1.00, 1.00] (1/1, 1 unfinished) |" in out
    assert (a / "report.md").exists() and (b / "report.md").exists()
    assert train.main(["report", str(a), str(tmp_path / "missing")]) == 2


def test_a_cell_with_one_seed_decides_no_claim():
    from agents import gate_grid

    one = {"success": [1.0], "steps_to_solve": 100.0}
    three = {"success": [0.0, 0.5, 0.0], "steps_to_solve": None}
    assert gate_grid.compare(three, one, 0.9) == "too few seeds"  # a point interval would say "no"
    assert gate_grid.compare({**one, "success": [1.0, 1.0, 1.0]}, three, 0.9) == "yes"
