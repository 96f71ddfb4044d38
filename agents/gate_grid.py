"""The gate grid in a sweep report: heatmaps of the ``lstm:XY`` / ``gru:XY`` cells and the paper's
two claims read off them (Gu et al. 2020, section 4.1).

- **refine**: for every primary gate X, the refine gate beats the master gate and no auxiliary gate
  (``XR`` against ``XM`` and ``X-``);
- **UGI**: for every auxiliary gate Y, uniform gate initialisation beats the standard one (``UY``
  against ``-Y``).

A comparison is decided by the final success of the seeds: a 95% bootstrap interval of the
difference of the means (seeds resampled within each cell) above 0 is "yes", below 0 "no"; where
both cells solve every seed (success >= 0.9) the steps to 0.9 decide (one median 20% below the
other); anything else is "undecided". ``urlstm`` and ``urgru`` count as ``lstm:UR`` and ``gru:UR``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PRIMARY = ("-", "C", "O", "U")
AUXILIARY = ("-", "M", "R")
ALIASES = {"urlstm": "lstm:UR", "urgru": "gru:UR"}
FAMILIES = ("lstm", "gru")
SOLVED = 0.9


def cells_of(agg: dict) -> dict[tuple[str, Any, str], dict]:
    """{(family, sweep value, cell XY): the aggregated cell} for every grid core of the sweep, where
    a family holds at least two cells at that value (one UR core alone is no grid)."""
    out = {}
    for (core, value), c in agg["cells"].items():
        name = ALIASES.get(core, core)
        family, _, cell = name.partition(":")
        if family in FAMILIES and len(cell) == 2 and c["seeds"]:
            out[(family, value, cell)] = c
    return {k: c for k, c in out.items() if sum(j[:2] == k[:2] for j in out) >= 2}


def compare(a: dict | None, b: dict | None, n_boot: int = 10_000, seed: int = 0) -> str:
    """Does cell ``a`` beat cell ``b``: "yes", "no", "undecided" or "missing" (see the module doc)."""
    if not a or not b or not a["success"] or not b["success"]:
        return "missing"
    xa, xb = np.asarray(a["success"], float), np.asarray(b["success"], float)
    rng = np.random.default_rng(seed)
    diff = (xa[rng.integers(0, xa.size, (n_boot, xa.size))].mean(1)
            - xb[rng.integers(0, xb.size, (n_boot, xb.size))].mean(1))
    lo, hi = np.quantile(diff, [0.025, 0.975])
    if lo > 0:
        return "yes"
    if hi < 0:
        return "no"
    solved = all(x >= SOLVED - 1e-6 for x in (*xa, *xb))
    sa, sb = a["steps_to_solve"], b["steps_to_solve"]
    if solved and sa is not None and sb is not None:
        if sa < 0.8 * sb:
            return "yes (faster)"
        if sb < 0.8 * sa:
            return "no (slower)"
        return "tie"
    return "undecided"


def claims(agg: dict) -> list[dict]:
    """One row per family, sweep value and comparison of the two claims."""
    cells = cells_of(agg)
    rows = []
    for family in FAMILIES:
        for value in agg["values"]:
            if not any((family, value, xy) in cells for xy in _all_cells()):
                continue
            for x in PRIMARY:
                for other in ("M", "-"):
                    rows.append(_row("refine", family, value, f"{x}R", f"{x}{other}", cells))
            for y in AUXILIARY:
                rows.append(_row("UGI", family, value, f"U{y}", f"-{y}", cells))
    return rows


def _row(claim: str, family: str, value: Any, a: str, b: str, cells: dict) -> dict:
    ca, cb = cells.get((family, value, a)), cells.get((family, value, b))
    return {"claim": claim, "family": family, "value": value, "cell": a, "against": b,
            "mean": None if ca is None else ca["mean"], "against_mean": None if cb is None else cb["mean"],
            "verdict": compare(ca, cb)}


def _all_cells() -> list[str]:
    return [x + y for x in PRIMARY for y in AUXILIARY]


def markdown(agg: dict, key: str | None) -> list[str]:
    """The grid tables (success and steps per cell) and the claims table; [] without grid cells."""
    cells = cells_of(agg)
    if not cells:
        return []
    lines = ["", "## The gate grid", "",
             "Rows: the primary gate X (`-` standard, `C` chrono, `O` ordered, `U` uniform "
             "initialisation); columns: the auxiliary gate Y (`-` none, `M` master, `R` refine). "
             f"Each cell: mean final success [min, max over seeds] and the median steps to {SOLVED} "
             "(k/n seeds that got there). Figure: `report_grid.png`.", ""]
    for family in FAMILIES:
        for value in agg["values"]:
            if not any((family, value, xy) in cells for xy in _all_cells()):
                continue
            lines += [f"**{family}**" + (f", {key} = {value}" if key else "") + ":", "",
                      "| X \\ Y | " + " | ".join(f"`{y}`" for y in AUXILIARY) + " |", "|---|---|---|---|"]
            for x in PRIMARY:
                row = [f"`{x}`"]
                for y in AUXILIARY:
                    c = cells.get((family, value, x + y))
                    row.append("not run" if c is None else _cell_text(c))
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines += ["**The paper's claims** (a beats b? see `agents/gate_grid.py` for the rule):", "",
              "| claim | family | " + (f"{key} | " if key else "") + "a | b | success a | success b | a beats b |",
              "|---|---|" + ("---|" if key else "") + "---|---|---|---|---|"]
    for r in claims(agg):
        lines.append(f"| {r['claim']} | {r['family']} | " + (f"{r['value']} | " if key else "")
                     + f"`{r['cell']}` | `{r['against']}` | {_f(r['mean'])} | {_f(r['against_mean'])} | "
                     f"{r['verdict']} |")
    return lines


def _cell_text(c: dict) -> str:
    s = c["success"]
    steps = "-" if c["steps_to_solve"] is None else _steps(c["steps_to_solve"])
    return f"{_f(c['mean'])} [{_f(min(s))}, {_f(max(s))}], {steps} ({c['solved_seeds']}/{c['seeds']})"


def _steps(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k" if v >= 1e3 else f"{v:.0f}"


def _f(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def figure(agg: dict, key: str | None, file_png: str) -> list[str]:
    """Heatmaps of mean final success and of steps to 0.9 per family and sweep value (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cells_of(agg)
    panels = [(f, v) for f in FAMILIES for v in agg["values"]
              if any((f, v, xy) in cells for xy in _all_cells())]
    if not panels:
        return []
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 5.6), squeeze=False)
    for j, (family, value) in enumerate(panels):
        success = np.full((4, 3), np.nan)
        steps = np.full((4, 3), np.nan)
        for i, x in enumerate(PRIMARY):
            for k, y in enumerate(AUXILIARY):
                c = cells.get((family, value, x + y))
                if c is not None:
                    success[i, k] = c["mean"]
                    steps[i, k] = np.nan if c["steps_to_solve"] is None else c["steps_to_solve"]
        title = family + (f", {key} = {value}" if key else "")
        _heatmap(axes[0, j], success, f"{title}: final success", lambda v: f"{v:.2f}", 0.0, 1.0, "viridis")
        top = np.nanmax(steps) if np.isfinite(steps).any() else 1.0
        _heatmap(axes[1, j], steps, f"{title}: steps to {SOLVED}", _steps, 0.0, top,
                 "viridis_r")
    fig.tight_layout()
    fig.savefig(file_png, dpi=130)
    plt.close(fig)
    return [file_png]


def _heatmap(ax, data: np.ndarray, title: str, fmt, vmin: float, vmax: float, cmap: str) -> None:
    ax.imshow(np.ma.masked_invalid(data), vmin=vmin, vmax=vmax, cmap=cmap)
    for (i, k), v in np.ndenumerate(data):
        ax.text(k, i, "-" if np.isnan(v) else fmt(v), ha="center", va="center", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    ax.set_xticks(range(3), [f"Y={y}" for y in AUXILIARY], fontsize=7)
    ax.set_yticks(range(4), [f"X={x}" for x in PRIMARY], fontsize=7)
    ax.set_title(title, fontsize=8)
