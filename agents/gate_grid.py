"""The gate grid in a sweep report: the ``lstm:XY`` / ``gru:XY`` cells and the paper's two claims
read off them (Gu et al. 2020, section 4.1).

- **refine**: for every primary gate X, the refine gate beats the master gate and no auxiliary gate
  (``XR`` against ``XM`` and ``X-``);
- **UGI**: for every auxiliary gate Y, uniform gate initialisation beats the standard one (``UY``
  against ``-Y``).

A comparison is decided by the final success of the seeds: a 95% bootstrap interval of the
difference of the means (seeds resampled within each cell) above 0 is "yes", below 0 "no"; where
both cells solve every seed (success >= 0.9) the steps to 0.9 decide (one median 20% below the
other); anything else is "undecided". A cell with fewer than ``MIN_SEEDS`` finished seeds decides
nothing ("too few seeds"): one seed has no spread, so its bootstrap interval would be a point.
``urlstm`` and ``urgru`` count as ``lstm:UR`` and ``gru:UR``.
The threshold is the report's (``agg["threshold"]``); ``agents/report.py`` draws the tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.cores.gates import AUXILIARY, PRIMARY
from policies.cores.registry import ALIASES, GRID_CELLS

FAMILIES = ("lstm", "gru")
MIN_SEEDS = 3


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


def panels(agg: dict) -> list[tuple[str, Any]]:
    """(family, sweep value) of every grid the sweep holds, in order."""
    cells = cells_of(agg)
    return [(f, v) for f in FAMILIES for v in agg["values"] if any((f, v, xy) in cells for xy in GRID_CELLS)]


def compare(a: dict | None, b: dict | None, threshold: float, n_boot: int = 10_000, seed: int = 0) -> str:
    """Does cell ``a`` beat cell ``b``: "yes", "no", "undecided", "too few seeds" or "missing" (see the
    module doc)."""
    if not a or not b or not a["success"] or not b["success"]:
        return "missing"
    if min(len(a["success"]), len(b["success"])) < MIN_SEEDS:
        return "too few seeds"
    xa, xb = np.asarray(a["success"], float), np.asarray(b["success"], float)
    rng = np.random.default_rng(seed)
    diff = (xa[rng.integers(0, xa.size, (n_boot, xa.size))].mean(1)
            - xb[rng.integers(0, xb.size, (n_boot, xb.size))].mean(1))
    lo, hi = np.quantile(diff, [0.025, 0.975])
    if lo > 0:
        return "yes"
    if hi < 0:
        return "no"
    solved = all(x >= threshold - 1e-6 for x in (*xa, *xb))
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
    for family, value in panels(agg):
        pairs = [("refine", f"{x}R", f"{x}{other}") for x in PRIMARY for other in ("M", "-")]
        pairs += [("UGI", f"U{y}", f"-{y}") for y in AUXILIARY]
        for claim, a, b in pairs:
            ca, cb = cells.get((family, value, a)), cells.get((family, value, b))
            rows.append({"claim": claim, "family": family, "value": value, "cell": a, "against": b,
                         "mean": None if ca is None else ca["mean"],
                         "against_mean": None if cb is None else cb["mean"],
                         "verdict": compare(ca, cb, agg["threshold"])})
    return rows
