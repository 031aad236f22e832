"""Figures for the cohort and for one case (pure matplotlib, object API: no pyplot state,
so figures can be drawn in worker threads). Each function returns PNG or SVG bytes."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from services.common import vocabulary
from services.common.vocabulary import GROUPS, PROMS, QUANTITIES, PromCode, QuantityName
from services.gateway.cases import Case
from services.gateway.cohort import ComplicationSummary, patient_pair
from services.gateway.stats import mean_ci

Format = Literal["png", "svg"]
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
GROUP_COLOURS = {"foraminal-stenosis": "#1f77b4", "central-stenosis": "#d62728"}
GROUP_LABELS = {"foraminal-stenosis": "Foraminal stenosis", "central-stenosis": "Central stenosis"}
COHORT_KINDS = ("paired", "changes", "complications", "proms")
CASE_KINDS = ("metrics", "proms")


def _render(figure: Figure, fmt: Format) -> bytes:
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {}
    figure.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight", metadata=metadata)
    return buffer.getvalue()


def _empty(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)
    axes.set_axis_off()


def paired(cases: list[Case], quantity: str, fmt: Format) -> bytes:
    """One line per patient from pre to first post (mean at the operated levels)."""
    spec = QUANTITIES[QuantityName(quantity)]
    unit, display = spec.unit, spec.display
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.add_subplot()
    pairs = [patient_pair(c, quantity) for c in cases]
    pairs_ok = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs_ok:
        _empty(axes, f"No pre/post pairs of {display.lower()}")
        return _render(figure, fmt)
    for a, b in pairs_ok:
        colour = "#2ca02c" if b > a else "#7f7f7f"
        axes.plot([0, 1], [a, b], color=colour, alpha=0.35, linewidth=1, marker="o", markersize=3)
    means = np.mean(np.asarray(pairs_ok), axis=0)
    axes.plot([0, 1], means, color="black", linewidth=3, marker="s", label="mean")
    axes.set_xticks([0, 1], ["Pre-operative", "First post-operative"])
    axes.set_xlim(-0.3, 1.3)
    axes.set_ylabel(f"{display} ({unit})")
    axes.set_title(f"{display} at the operated levels, n = {len(pairs_ok)} patients")
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    return _render(figure, fmt)


def changes(cases: list[Case], fmt: Format) -> bytes:
    """The distribution of the primary metric's change, one panel per group."""
    groups = [g for g in GROUPS if any(c.surgery.group == g for c in cases)]
    figure = Figure(figsize=(4.2 * max(1, len(groups)), 4.5))
    if not groups:
        _empty(figure.add_subplot(), "No cases")
        return _render(figure, fmt)
    rng = np.random.default_rng(0)  # fixed jitter: the same data draws the same figure
    for index, group in enumerate(groups, start=1):
        axes = figure.add_subplot(1, len(groups), index)
        quantity = GROUPS[group].primary
        spec = QUANTITIES[QuantityName(quantity)]
        unit, display = spec.unit, spec.display
        deltas = []
        for case in cases:
            if case.surgery.group == group:
                a, b = patient_pair(case, quantity)
                if a is not None and b is not None:
                    deltas.append(b - a)
        if not deltas:
            _empty(axes, f"{GROUP_LABELS[group]}: no pairs")
            continue
        axes.boxplot([deltas], widths=0.5, showfliers=False)
        axes.scatter(
            1 + rng.uniform(-0.12, 0.12, len(deltas)),
            deltas,
            s=10,
            alpha=0.6,
            color=GROUP_COLOURS[group],
        )
        axes.axhline(0, color="black", linewidth=0.8)
        axes.set_xticks([1], [f"{GROUP_LABELS[group]}\nn = {len(deltas)}"])
        axes.set_ylabel(f"Change in {display.lower()} ({unit})")
        axes.grid(alpha=0.3, axis="y")
    figure.suptitle("Post - pre at the operated levels (per patient)")
    return _render(figure, fmt)


def complications(summary: ComplicationSummary, n: int, fmt: Format) -> bytes:
    """Rate per complication type with Wilson 95 % intervals."""
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    rates = summary.by_type
    if not rates:
        _empty(axes, f"No complications in {n} cases")
        return _render(figure, fmt)
    labels = [r.display for r in rates]
    values = np.asarray([100 * (r.proportion.rate or 0) for r in rates])
    low = np.asarray([100 * (r.proportion.ci95_low or 0) for r in rates])
    high = np.asarray([100 * (r.proportion.ci95_high or 0) for r in rates])
    y = np.arange(len(rates))
    axes.barh(y, values, color="#9467bd", alpha=0.8)
    axes.errorbar(values, y, xerr=[values - low, high - values], fmt="none", ecolor="black")
    axes.set_yticks(y, labels)
    axes.invert_yaxis()
    axes.set_xlabel("Patients with the complication (%), Wilson 95 % CI")
    axes.set_title(f"Complications, n = {n} cases")
    axes.grid(alpha=0.3, axis="x")
    return _render(figure, fmt)


def proms(cases: list[Case], code: str, fmt: Format) -> bytes:
    """Mean PROM per time point with a 95 % confidence band, one line per group."""
    prom = PROMS[PromCode(code)]
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    drawn = False
    for group in (*GROUPS, None):
        members = [c for c in cases if c.surgery.group == group]
        by_tp: dict[str, list[float | None]] = {}
        for case in members:
            for series in case.proms:
                if series.code == code:
                    for point in series.points:
                        by_tp.setdefault(point.time_point, []).append(point.value)
        tps = [tp for tp in vocabulary.TIME_POINT_CODES if tp in by_tp]
        if not tps:
            continue
        stats = [mean_ci(by_tp[tp]) for tp in tps]
        x = np.arange(len(vocabulary.TIME_POINT_CODES))[
            [vocabulary.TIME_POINT_CODES.index(tp) for tp in tps]
        ]
        mean = np.asarray([s[0] for s in stats], dtype=float)
        # The band stays within the instrument's range (ODI 0-100, EQ-5D at most 1).
        low = np.clip(
            np.asarray([s[1] if s[1] is not None else s[0] for s in stats], dtype=float),
            prom.low,
            prom.high,
        )
        high = np.clip(
            np.asarray([s[2] if s[2] is not None else s[0] for s in stats], dtype=float),
            prom.low,
            prom.high,
        )
        colour = GROUP_COLOURS.get(group or "", "#7f7f7f")
        label = GROUP_LABELS.get(group or "", "No group")
        axes.plot(
            x,
            mean,
            linestyle="-" if group != "central-stenosis" else "--",
            marker="o" if group != "central-stenosis" else "s",
            color=colour,
            label=f"{label} (n = {len(members)})",
        )
        axes.fill_between(x, low, high, color=colour, alpha=0.2)
        drawn = True
    if not drawn:
        _empty(axes, f"No {prom.display} values")
        return _render(figure, fmt)
    axes.set_xticks(
        np.arange(len(vocabulary.TIME_POINT_CODES)), vocabulary.TIME_POINT_CODES, rotation=45
    )
    axes.set_ylabel(f"{prom.display} ({prom.scale}); {prom.better} is better")
    axes.set_title(f"{prom.display}: mean and 95 % CI by time point")
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    return _render(figure, fmt)


def case_metrics(case: Case, fmt: Format) -> bytes:
    """One case: each level (and side) of its group's metrics across its studies."""
    group = case.surgery.group
    quantities = GROUPS[group].quantities if group in GROUPS else ()
    figure = Figure(figsize=(5.0 * max(1, len(quantities)), 4.5))
    if not quantities or (case.imaging.pre is None and not case.imaging.post):
        _empty(figure.add_subplot(), "No imaging to plot")
        return _render(figure, fmt)
    slots = ([case.imaging.pre.slot] if case.imaging.pre else []) + [
        p.slot for p in case.imaging.post
    ]
    labels = (["pre"] if case.imaging.pre else []) + [p.label for p in case.imaging.post]
    for index, quantity in enumerate(quantities, start=1):
        axes = figure.add_subplot(1, len(quantities), index)
        spec = QUANTITIES[QuantityName(quantity)]
        unit, display = spec.unit, spec.display
        for row in case.imaging.metrics:
            if row.quantity != quantity:
                continue
            values = {"pre": row.pre.value} | {p.slot: p.value.value for p in row.post}
            y = [values.get(s) for s in slots]
            x = [i for i, v in enumerate(y) if v is not None]
            if not x:
                continue
            name = row.level + (f" {row.side[0].upper()}" if row.side else "")
            style = "-" if row.operated else ":"
            axes.plot(x, [float(y[i] or 0) for i in x], style, marker="o", label=name)
        axes.set_xticks(range(len(slots)), labels)
        axes.set_ylabel(f"{display} ({unit})")
        axes.set_title(f"{display} (solid: operated)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    return _render(figure, fmt)


def case_proms(case: Case, fmt: Format) -> bytes:
    """One case: every PROM over time, with its baseline and MCID line."""
    series = case.proms
    figure = Figure(figsize=(4.0 * max(1, len(series)), 3.8))
    if not series:
        _empty(figure.add_subplot(), "No patient-reported outcomes")
        return _render(figure, fmt)
    for index, s in enumerate(series, start=1):
        axes = figure.add_subplot(1, len(series), index)
        x = [vocabulary.TIME_POINT_CODES.index(p.time_point) for p in s.points]
        axes.plot(x, [p.value for p in s.points], marker="o")
        if s.baseline is not None:
            target = s.baseline - s.mcid if s.better == "lower" else s.baseline + s.mcid
            axes.axhline(s.baseline, color="black", linewidth=0.8, label="baseline")
            axes.axhline(target, color="#2ca02c", linestyle="--", linewidth=0.8, label="MCID")
            axes.legend(fontsize=7)
        axes.set_xticks(x, [p.time_point for p in s.points], rotation=45, fontsize=7)
        axes.set_title(s.display, fontsize=9)
        axes.grid(alpha=0.3)
    return _render(figure, fmt)


def bland_altman(
    a: np.ndarray, b: np.ndarray, *, rater_a: str, rater_b: str, quantity: str, fmt: Format
) -> bytes:
    """Bland-Altman plot of ``b`` against ``a`` (statsmodels' mean-difference plot)."""
    from statsmodels.graphics.agreement import mean_diff_plot

    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    mean_diff_plot(b, a, ax=axes)
    spec = QUANTITIES[QuantityName(quantity)]
    axes.set_xlabel(f"mean of the two ({spec.unit_display})")
    axes.set_ylabel(f"{rater_b} - {rater_a} ({spec.unit_display})")
    axes.set_title(f"{spec.display}: {rater_b} vs {rater_a} (n = {len(a)})")
    return _render(figure, fmt)
