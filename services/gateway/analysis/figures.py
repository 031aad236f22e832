"""The report's own figures (matplotlib object API, thread-safe; PNG or SVG bytes).

Colours are never the only cue: groups also differ by marker and line style, and every
figure is titled and labelled.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from services.common import vocabulary
from services.gateway.analysis.dataset import SHORT, AnalysisData
from services.gateway.analysis.models import (
    GROUPS,
    LearningCurve,
    Trajectory,
    operated_first_post,
)
from services.gateway.analysis.plan import ASSOCIATION_PROM, ASSOCIATION_TIME_POINT, MEASURES
from services.gateway.plots import GROUP_COLOURS, GROUP_LABELS, Format, _empty, _render

MARKERS = {"foraminal-stenosis": "o", "central-stenosis": "s"}
STYLES = {"foraminal-stenosis": "-", "central-stenosis": "--"}
RANGES = {"odi": (0.0, 100.0), "back_pain": (0.0, 10.0), "leg_pain": (0.0, 10.0)}
RANGES["eq5d_index"] = (-0.594, 1.0)


def waterfall(data: AnalysisData, fmt: Format) -> bytes:
    """Per operated level (and side), the change of the group's primary quantity, sorted."""
    figure = Figure(figsize=(9, 4))
    levels = operated_first_post(data)
    axes_list = figure.subplots(1, 2)
    for axes, group in zip(axes_list, GROUPS, strict=True):
        quantity = vocabulary.GROUPS[group].primary
        spec = vocabulary.QUANTITIES[quantity]
        rows = levels[
            (levels["study_group"] == group)
            & (levels["quantity"] == quantity.value)
            & levels["change"].notna()
        ]
        if rows.empty:
            _empty(axes, f"No {spec.display.lower()} change")
            continue
        values = np.sort(rows["change"].astype(float).to_numpy())[::-1]
        colours = [GROUP_COLOURS[group] if v > 0 else "#7f7f7f" for v in values]
        hatches = ["" if v > 0 else "//" for v in values]
        bars = axes.bar(range(len(values)), values, color=colours, edgecolor="black", linewidth=0.3)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        axes.axhline(0, color="black", linewidth=0.8)
        axes.set_title(f"{GROUP_LABELS[group]}: {spec.display.lower()}, n = {len(values)} sites")
        axes.set_xlabel("operated level (and side), sorted")
        axes.set_ylabel(f"change ({spec.unit})")
        axes.set_xticks([])
        axes.grid(axis="y", alpha=0.3)
    return _render(figure, fmt)


def trajectories(items: list[Trajectory], measure: str, fmt: Format) -> bytes:
    """Model-estimated change from baseline with 95 % CIs, per group, on the instrument's
    scale (the baseline mean plus the change), clipped to the instrument's range."""
    figure = Figure(figsize=(6.5, 4))
    axes = figure.add_subplot()
    order = {tp: i for i, tp in enumerate(vocabulary.TIME_POINT_CODES)}
    low_limit, high_limit = RANGES[measure]
    drawn = False
    for trajectory in (t for t in items if t.measure == measure):
        if trajectory.baseline_mean is None:
            continue
        base = trajectory.baseline_mean
        points = [p for p in trajectory.points if p.estimate is not None]
        tps = ["baseline", *[p.time_point for p in points]]
        x = [order[tp] for tp in tps]
        y = [base, *[base + (p.estimate or 0) for p in points]]
        low = [base, *[base + (p.ci_low or 0) for p in points]]
        high = [base, *[base + (p.ci_high or 0) for p in points]]
        colour = GROUP_COLOURS[trajectory.group]
        axes.plot(
            x,
            y,
            STYLES[trajectory.group],
            marker=MARKERS[trajectory.group],
            color=colour,
            label=f"{GROUP_LABELS[trajectory.group]} (n = {trajectory.patients})",
        )
        axes.fill_between(
            x,
            np.clip(low, low_limit, high_limit),
            np.clip(high, low_limit, high_limit),
            color=colour,
            alpha=0.15,
        )
        drawn = True
    if not drawn:
        _empty(axes, f"No {MEASURES[measure].lower()} to model")
        return _render(figure, fmt)
    used = sorted({order[p.time_point] for t in items for p in t.points} | {0})
    axes.set_xticks(used, [vocabulary.TIME_POINT_CODES[i] for i in used], rotation=30)
    axes.set_ylim(low_limit, high_limit)
    axes.set_ylabel(MEASURES[measure])
    axes.set_title(f"{MEASURES[measure]}: mixed-model estimates, 95 % CI")
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    return _render(figure, fmt)


def learning_curves(curves: list[LearningCurve], fmt: Format) -> bytes:
    figure = Figure(figsize=(6.5, 4))
    axes = figure.add_subplot()
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    shown = [c for c in curves if c.case_numbers]
    if not shown:
        _empty(axes, "No surgeon with cases")
        return _render(figure, fmt)
    for i, curve in enumerate(shown):
        axes.plot(
            curve.case_numbers,
            curve.cusum,
            styles[i % len(styles)],
            marker=markers[i % len(markers)],
            markersize=3,
            label=f"{curve.surgeon} (n = {len(curve.case_numbers)})",
        )
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel("surgeon's case number (chronological)")
    axes.set_ylabel("CUSUM of failures - cohort rate")
    axes.set_title("Learning curves: rising = worse than the cohort")
    axes.legend(loc="best", fontsize=8)
    axes.grid(alpha=0.3)
    return _render(figure, fmt)


def imaging_vs_clinical(data: AnalysisData, fmt: Format) -> bytes:
    """Per patient: the primary imaging change against the association PROM's change."""
    figure = Figure(figsize=(9, 4))
    proms = data.proms
    outcome = proms[
        (proms["measure"] == ASSOCIATION_PROM)
        & (proms["time_point"] == ASSOCIATION_TIME_POINT)
        & proms["change"].notna()
    ][["case_id", "change"]]
    for axes, group in zip(figure.subplots(1, 2), GROUPS, strict=True):
        quantity = vocabulary.GROUPS[group].primary
        spec = vocabulary.QUANTITIES[quantity]
        column = f"{SHORT[quantity.value]}_change"
        patients = data.patients[data.patients["study_group"] == group][["case_id", column]]
        joined = pd.merge(patients, outcome, on="case_id").dropna()
        if joined.empty:
            _empty(axes, "No patient with both changes")
            continue
        axes.scatter(
            joined[column].astype(float),
            joined["change"].astype(float),
            color=GROUP_COLOURS[group],
            marker=MARKERS[group],
        )
        axes.axhline(0, color="black", linewidth=0.6)
        axes.set_xlabel(f"{spec.display} change ({spec.unit})")
        axes.set_ylabel(f"{MEASURES[ASSOCIATION_PROM]} change, {ASSOCIATION_TIME_POINT}")
        axes.set_title(f"{GROUP_LABELS[group]}, n = {len(joined)}")
        axes.grid(alpha=0.3)
    return _render(figure, fmt)
