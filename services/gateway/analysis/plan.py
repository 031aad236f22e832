"""The statistical analysis plan's decisions, declared once: the report's methods
paragraph is written from them and ``docs/statistical-analysis-plan.md`` cites them."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import vocabulary

ALPHA = 0.05
PLAN_VERSION = "1.0"


@dataclass(frozen=True)
class Threshold:
    """A published threshold of adequate decompression, applied per operated level."""

    code: str
    quantity: str
    label: str
    kind: str  # "post_at_least" (the post-operative value) | "increase_percent_at_least"
    value: float
    source: str


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold(
        "fh_post_15",
        "foraminal_height",
        "post-operative foraminal height >= 15 mm",
        "post_at_least",
        15.0,
        "Hasegawa et al., J Bone Joint Surg Am 1995 (nerve root compression in 80 % of "
        "foramina of 15 mm or less)",
    ),
    Threshold(
        "dsa_post_100",
        "dural_sac_area",
        "post-operative dural sac area > 100 mm2",
        "post_at_least",
        100.0,
        "Schonstrom et al., Spine 1985 (relative stenosis below 100 mm2)",
    ),
    Threshold(
        "dsa_gain_50",
        "dural_sac_area",
        "dural sac area increase >= 50 %",
        "increase_percent_at_least",
        50.0,
        "a study convention for adequate central decompression",
    ),
)

# The clinical outcome the imaging change is set against, and when.
ASSOCIATION_PROM = "leg_pain"
ASSOCIATION_TIME_POINT = "month-12"
# The outcome of the learning curve: a "failure" is a complication within 30 days or the
# ODI MCID not reached at this time point.
LEARNING_TIME_POINT = "month-12"
# PROMs analysed longitudinally (the dataset's measures; pain: NRS where recorded, else VAS).
MEASURES: dict[str, str] = {
    "odi": "Oswestry Disability Index (%)",
    "back_pain": "Back pain (0-10)",
    "leg_pain": "Leg pain (0-10)",
    "eq5d_index": "EQ-5D index",
}
MEASURE_CODES: dict[str, tuple[str, ...]] = {
    "odi": (vocabulary.PromCode.ODI,),
    "back_pain": (vocabulary.PromCode.BACK_PAIN_NRS, vocabulary.PromCode.BACK_PAIN_VAS),
    "leg_pain": (vocabulary.PromCode.LEG_PAIN_NRS, vocabulary.PromCode.LEG_PAIN_VAS),
    "eq5d_index": (vocabulary.PromCode.EQ5D_INDEX,),
}


def methods() -> list[str]:
    """The methods paragraphs of the report, from the plan's decisions."""
    thresholds = "; ".join(f"{t.label} ({t.source})" for t in THRESHOLDS)
    proms = ", ".join(MEASURES.values())
    return [
        "Retrospective, single-centre, consecutive, multi-operator series. The unit of the "
        "primary analysis is the operated level (and side, for the foraminal height), "
        "clustered within patients. Imaging values are the automatic measurements with "
        "status ok unless the primary reader's review decided otherwise: an accepted value "
        "is kept, a corrected one replaced, a rejected one excluded; values flagged "
        "needs_review and not reviewed carry no number and are counted as not measurable. "
        "The pre-operative "
        "study is the latest of the group's modality (CT for foraminal, MR for central "
        "stenosis) before surgery; the comparison is with the first post-operative study.",
        "Baseline characteristics are described by group (mean and SD, or median and IQR "
        "for skewed variables; counts and percentages) and compared with Welch's t-test, "
        "the Kruskal-Wallis test or the chi-squared test (tableone); missing values are "
        "counted, not imputed.",
        "Primary endpoint: the change (post minus pre) of the foraminal height (foraminal "
        "group) and of the dural sac area and volume (central group) at the operated levels, "
        "estimated by generalised estimating equations with an exchangeable working "
        "correlation within patients (statsmodels GEE, robust standard errors); the "
        "per-patient analysis (mean of the operated levels, paired t-test and Wilcoxon "
        "signed-rank test, Cohen's dz) is reported beside it. Proportions of levels reaching "
        f"published thresholds of adequate decompression ({thresholds}) are given with "
        "Wilson 95 % confidence intervals (levels, descriptive).",
        f"Patient-reported outcomes ({proms}; pain on the numeric rating scale where "
        "recorded, else the visual analogue scale, both 0-10) are analysed with linear mixed "
        "models per group: the time point as a fixed factor (reference: baseline) and a "
        "random intercept per patient (statsmodels MixedLM, REML); the estimated change from "
        "baseline at each time point is reported with its 95 % CI, with the proportion of "
        "patients reaching the minimal clinically important difference (ODI 12.8 points, pain "
        "2 points, EQ-5D index 0.08). The association between the imaging change and the "
        f"change in {MEASURES[ASSOCIATION_PROM].lower()} at {ASSOCIATION_TIME_POINT} is "
        "Spearman's rank correlation, per group.",
        "Complications are counted per patient by type, Clavien-Dindo grade and timing "
        "(early: within 30 days), compared between groups with Fisher's exact test; early "
        "results (length of stay, blood loss, opioid consumption in morphine milligram "
        "equivalents, pain on days 1-2) with the Mann-Whitney U test.",
        "Surgeons are described separately (pseudonymised); the learning curve plots, for "
        "each surgeon, the CUSUM of failures (a complication within 30 days, or the ODI MCID "
        f"not reached at {LEARNING_TIME_POINT}) minus the cohort's failure rate against the "
        "surgeon's chronological case number, and the Spearman correlation between the case "
        "number and the primary imaging change (standardised within group).",
        f"Two-sided tests at alpha = {ALPHA}; no adjustment for multiplicity (secondary "
        "analyses are exploratory). Rows marked descriptive carry no test.",
    ]
