"""The demo's terminal output: the cohort summary as a text table (the study report itself
comes from the gateway)."""

from __future__ import annotations

from typing import Any


def _n(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def summary_text(summary: dict[str, Any]) -> str:
    """The protocol's questions, answered in a few lines of text."""
    counts = summary["counts"]
    groups = ", ".join(f"{g}: {n}" for g, n in counts["by_group"].items())
    lines = [
        f"Cases: {counts['cases']} ({groups}); with a pre/post pair: {counts['with_pair']}",
        "",
        f"{'metric (per patient, operated levels)':<40} {'n':>3} {'pre':>15} {'post':>15} "
        f"{'change [95% CI]':>26} {'t p':>7} {'Wilcoxon p':>10}",
    ]
    for m in summary["metrics"]:
        if m["unit_of_analysis"] != "patient":
            continue
        c, pre, post = m["change"], m["pre"], m["post"]
        name = f"{m['display']} ({m['unit']})"
        before = f"{_n(pre['mean'])} ± {_n(pre['sd'])}"
        after = f"{_n(post['mean'])} ± {_n(post['sd'])}"
        change = f"{_n(c['mean_difference'], 2)} [{_n(c['ci95_low'], 2)}, {_n(c['ci95_high'], 2)}]"
        lines.append(
            f"{name:<40} {c['n']:>3} {before:>15} {after:>15} {change:>26} "
            f"{_p(c['t_p_value']):>7} {_p(c['wilcoxon_p_value']):>10}"
        )
    comp = summary["complications"]
    rate = comp["any"]
    lines += [
        "",
        f"Complications: {rate['count']}/{rate['n']} patients "
        f"({100 * (rate['rate'] or 0):.1f} %, Wilson 95 % CI "
        f"{100 * (rate['ci95_low'] or 0):.1f}-{100 * (rate['ci95_high'] or 0):.1f} %)"
        + "".join(
            f"{'; ' if i == 0 else ', '}{r['display']} {r['proportion']['count']}"
            for i, r in enumerate(comp["by_type"])
        ),
    ]
    stay = summary["early"]["length_of_stay_days"]
    lines.append(
        f"Length of stay: median {_n(stay['median'])} d [{_n(stay['q1'])}-{_n(stay['q3'])}]"
    )
    for prom in summary["proms"]:
        if prom["code"] not in ("odi", "leg-pain-nrs", "leg-pain-vas"):
            continue
        points = [
            f"{p['time_point']} {_n(p['change']['mean_difference'])} "
            f"(MCID {100 * (p['mcid']['rate'] or 0):.0f} %)"
            for p in prom["points"]
            if p["time_point"] != "baseline" and p["change"]["n"]
        ]
        lines.append(f"{prom['display']} change from baseline: " + "; ".join(points))
    if summary["missing"]:
        lines.append(
            f"Without a pre/post pair: {len(summary['missing'])} case(s), e.g. "
            f"{summary['missing'][0]['reason']}"
        )
    return "\n".join(lines)
