"""The study's vocabulary, declared once and imported by every service.

What is declared here, and nowhere else:

* the **imaging quantities** (name, FHIR code, unit, plausible and accepted ranges,
  per-side or per-level, the DICOM SR concept);
* the **study groups** (which modality and which quantities answer each group's question);
* the **patient-reported outcomes** (range, direction of improvement, MCID with its
  source, the questionnaire whose responses are scored into them);
* the **early post-operative results**, the **time points** with their nominal day,
  the levels, sides, techniques, complications and Clavien-Dindo grades.

Spellings: a quantity's ``name`` (snake case) is how the imaging JSON, the CSV columns,
the SR's concept value and Python spell it; its ``code`` (kebab case) is its code in
the project CodeSystem, used by FHIR. Both are fields of one entry; no code derives one
from the other. :mod:`services.common.fhir.codes` builds the FHIR CodeSystem and the
server's range checks from these tables; :mod:`services.imaging.analysis.sr` the SR
concepts; the gateway its columns, tables and plots.

Ranges: ``plausible`` is what a *measurement* may be before the analysis flags it
``needs_review`` (physiology); ``accepted`` is what the APIs accept as a value at all
(a reader's own measurement, a FHIR Observation) — wider, so that a real extreme value
can be recorded and looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

# -- code systems ----------------------------------------------------------------------
LOINC = "http://loinc.org"
PROJECT = "http://spine-outcomes.example.org/fhir/CodeSystem/spine-outcomes"
SR_SCHEME = "99SPINEOUT"  # the project's private DICOM coding scheme designator


@dataclass(frozen=True)
class Concept:
    """A coded concept of the project CodeSystem."""

    code: str
    display: str
    definition: str


# -- anatomy -----------------------------------------------------------------------------
Level = Literal["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
LEVELS: tuple[str, ...] = get_args(Level)
Side = Literal["left", "right"]
SIDES: tuple[str, ...] = get_args(Side)
Modality = Literal["CT", "MR"]


# -- reading (readers' review of the automatic values) ------------------------------------
# What a reader did with one automatic value: ``accepted`` it as measured, ``corrected`` it
# (moved the construction or typed a value), ``rejected`` it (no value; a reason below), or
# ``measured`` it without an automatic value to review (a blinded read, or the JSON API).
ReadAction = Literal["accepted", "corrected", "rejected", "measured"]
READ_ACTIONS: tuple[str, ...] = get_args(ReadAction)
# Why a reader rejects an automatic value (the workstation's short list).
RejectReason = Literal[
    "wrong-level", "wrong-structure", "image-quality", "not-visible", "implant-artefact", "other"
]
REJECT_REASONS: dict[str, str] = {
    "wrong-level": "wrong level",
    "wrong-structure": "wrong structure (edges or contour not on the anatomy)",
    "image-quality": "image quality too poor to measure",
    "not-visible": "structure not visible in the image",
    "implant-artefact": "implant artefact",
    "other": "other",
}
# Why a read was made: ``review`` (the primary reading; the cohort uses it), ``second`` (a
# blinded second reader's sample) and ``reread`` (the same reader's blinded re-read):
# these two serve the agreement statistics only.
ReadPurpose = Literal["review", "second", "reread"]
READ_PURPOSES: tuple[str, ...] = get_args(ReadPurpose)


# -- imaging quantities ------------------------------------------------------------------
class QuantityName(StrEnum):
    """The measured quantities (their ``name`` spelling)."""

    FORAMINAL_HEIGHT = "foraminal_height"
    DISC_HEIGHT = "disc_height"
    DURAL_SAC_AREA = "dural_sac_area"
    DURAL_SAC_VOLUME = "dural_sac_volume"


@dataclass(frozen=True)
class Quantity:
    """One imaging quantity and every spelling of it."""

    name: QuantityName
    code: str  # project CodeSystem / FHIR Observation.code
    display: str
    definition: str
    unit: str  # UCUM
    unit_display: str
    per_side: bool  # measured left and right (else once per level, "midline")
    modality: Modality
    geometry: Literal["line", "contour", "volume"]  # what a reader checks on the image
    plausible: tuple[float, float]
    accepted: tuple[float, float]

    @property
    def sr_concept(self) -> tuple[str, str, str]:
        """(code value, coding scheme designator, code meaning) of the SR concept name."""
        return (self.name.value, SR_SCHEME, self.display)


QUANTITIES: dict[QuantityName, Quantity] = {
    q.name: q
    for q in (
        Quantity(
            QuantityName.FORAMINAL_HEIGHT,
            "foraminal-height",
            "Foraminal height",
            "Lowest point of the upper pedicle to highest point of the lower pedicle, mm.",
            "mm",
            "millimeter",
            per_side=True,
            modality="CT",
            geometry="line",
            plausible=(3.0, 30.0),
            accepted=(0.0, 60.0),
        ),
        Quantity(
            QuantityName.DISC_HEIGHT,
            "disc-height",
            "Disc height",
            "Mid-sagittal endplate distance, mm.",
            "mm",
            "millimeter",
            per_side=False,
            modality="CT",
            geometry="line",
            plausible=(1.0, 20.0),
            accepted=(0.0, 40.0),
        ),
        Quantity(
            QuantityName.DURAL_SAC_AREA,
            "dural-sac-area",
            "Dural sac area",
            "Cross-sectional area at mid-disc, mm2.",
            "mm2",
            "square millimeter",
            per_side=False,
            modality="MR",
            geometry="contour",
            plausible=(10.0, 400.0),
            accepted=(0.0, 1000.0),
        ),
        Quantity(
            QuantityName.DURAL_SAC_VOLUME,
            "dural-sac-volume",
            "Dural sac volume",
            "Volume between the mid-heights of the level's vertebral bodies, mm3.",
            "mm3",
            "cubic millimeter",
            per_side=False,
            modality="MR",
            geometry="volume",
            plausible=(200.0, 20000.0),
            accepted=(0.0, 100000.0),
        ),
    )
}
QUANTITY_BY_CODE: dict[str, Quantity] = {q.code: q for q in QUANTITIES.values()}


# -- study groups ------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyGroup:
    """An indication group: the modality and quantities that answer its question."""

    code: GroupCode
    display: str
    definition: str
    modality: Modality
    quantities: tuple[QuantityName, ...]
    primary: QuantityName


GroupCode = Literal["foraminal-stenosis", "central-stenosis"]
GROUPS: dict[str, StudyGroup] = {
    g.code: g
    for g in (
        StudyGroup(
            "foraminal-stenosis",
            "Foraminal stenosis",
            "Indication group: success is the increase of the foraminal height on CT.",
            "CT",
            (QuantityName.FORAMINAL_HEIGHT, QuantityName.DISC_HEIGHT),
            QuantityName.FORAMINAL_HEIGHT,
        ),
        StudyGroup(
            "central-stenosis",
            "Central stenosis",
            "Indication group: success is the increase of the dural sac area and volume on MRI.",
            "MR",
            (QuantityName.DURAL_SAC_AREA, QuantityName.DURAL_SAC_VOLUME),
            QuantityName.DURAL_SAC_AREA,
        ),
    )
}


# -- time points -------------------------------------------------------------------------
@dataclass(frozen=True)
class TimePoint:
    """An assessment time point; ``day`` is its nominal day after surgery, ``window`` the
    days after surgery within which an assessment counts for it (follow-up tracking)."""

    code: str
    display: str
    day: int | None  # None: baseline (before surgery)
    window: tuple[int, int]
    early: bool = False  # the first post-operative days (early results)


TIME_POINTS: tuple[TimePoint, ...] = (
    TimePoint("baseline", "Baseline (pre-operative)", None, (-90, 0)),
    TimePoint("day-1", "Day 1", 1, (1, 2), early=True),
    TimePoint("day-2", "Day 2", 2, (2, 3), early=True),
    TimePoint("day-3", "Day 3", 3, (3, 4), early=True),
    TimePoint("week-6", "6 weeks", 42, (28, 70)),
    TimePoint("month-3", "3 months", 91, (70, 135)),
    TimePoint("month-6", "6 months", 182, (135, 270)),
    TimePoint("month-12", "12 months", 365, (270, 545)),
    TimePoint("month-24", "24 months", 730, (545, 910)),
)
TIME_POINT_CODES: tuple[str, ...] = tuple(tp.code for tp in TIME_POINTS)
EARLY_TIME_POINTS: tuple[str, ...] = tuple(tp.code for tp in TIME_POINTS if tp.early)
# Nominal days after surgery of each post-operative time point.
TIME_POINT_DAYS: dict[str, int] = {tp.code: tp.day for tp in TIME_POINTS if tp.day is not None}
EARLY_LIMIT_DAYS = 30  # complications within 30 days are early (Clavien-Dindo convention)


# -- patient-reported outcomes -----------------------------------------------------------
class PromCode(StrEnum):
    """The patient-reported outcomes (their project code)."""

    ODI = "odi"
    BACK_PAIN_NRS = "back-pain-nrs"
    LEG_PAIN_NRS = "leg-pain-nrs"
    BACK_PAIN_VAS = "back-pain-vas"
    LEG_PAIN_VAS = "leg-pain-vas"
    EQ5D_INDEX = "eq5d-index"


@dataclass(frozen=True)
class Prom:
    """A patient-reported outcome: range, direction, MCID and how it is obtained."""

    code: PromCode
    display: str
    definition: str
    unit: str  # Observation.valueQuantity.unit
    ucum: str  # Observation.valueQuantity.code
    scale: str  # how the gateway labels the scale
    low: float
    high: float
    better: Literal["lower", "higher"]
    mcid: float
    mcid_source: str
    questionnaire: str | None = None  # canonical URL whose responses are scored into it
    aliases: tuple[tuple[str, str], ...] = ()  # (system, code) of other systems meaning it


QUESTIONNAIRE_BASE = "http://spine-outcomes.example.org/fhir/Questionnaire"


def _pain(
    code: PromCode, display: str, definition: str, aliases: tuple[tuple[str, str], ...] = ()
) -> Prom:
    """A pain score on a 0-10 scale; MCID 2 points (Ostelo et al. 2008)."""
    return Prom(
        code,
        display,
        definition,
        "{score}",
        "{score}",
        "0-10",
        0,
        10,
        "lower",
        2.0,
        "Ostelo et al. 2008",
        aliases=aliases,
    )


PROMS: dict[PromCode, Prom] = {
    p.code: p
    for p in (
        Prom(
            PromCode.ODI,
            "Oswestry Disability Index",
            "ODI v2.1a score, 0 (none) to 100 (maximal).",
            "%",
            "%",
            "%",
            0,
            100,
            "lower",
            12.8,
            "Copay et al. 2008",
            questionnaire=f"{QUESTIONNAIRE_BASE}/odi",
        ),
        _pain(
            PromCode.BACK_PAIN_NRS,
            "Back pain NRS",
            "Back pain, numeric rating scale 0-10.",
            aliases=((LOINC, "72514-3"),),
        ),
        _pain(PromCode.LEG_PAIN_NRS, "Leg pain NRS", "Leg pain, numeric rating scale 0-10."),
        _pain(PromCode.BACK_PAIN_VAS, "Back pain VAS", "Back pain, visual analogue scale 0-10."),
        _pain(PromCode.LEG_PAIN_VAS, "Leg pain VAS", "Leg pain, visual analogue scale 0-10."),
        Prom(
            PromCode.EQ5D_INDEX,
            "EQ-5D index",
            "EQ-5D utility index value (-0.594 to 1).",
            "{index}",
            "1",
            "index",
            -0.594,
            1,
            "higher",
            0.08,
            "Walters & Brazier 2005",
            questionnaire=f"{QUESTIONNAIRE_BASE}/eq-5d-5l",
        ),
    )
}


# -- the study's follow-up schedule -----------------------------------------------------
@dataclass(frozen=True)
class Expected:
    """What the study expects of every operated patient, and when: a PROM (any of
    ``codes`` counts) at each of ``time_points``, or imaging (``codes`` empty) in a window
    of days around the surgery. A coordinator's follow-up list is computed from it."""

    item: str
    display: str
    codes: tuple[str, ...]
    time_points: tuple[str, ...] = ()
    window: tuple[int, int] | None = None  # imaging: days from surgery (open, close)
    due: int | None = None  # imaging: the day by which it should be there


_FULL = ("baseline", "week-6", "month-3", "month-6", "month-12", "month-24")
_PAIN = ("baseline", "day-1", "day-2", "week-6", "month-3", "month-6", "month-12", "month-24")
FOLLOW_UP: tuple[Expected, ...] = (
    Expected("odi", "ODI", (PromCode.ODI,), _FULL),
    Expected("eq5d", "EQ-5D", (PromCode.EQ5D_INDEX,), _FULL),
    Expected("back-pain", "Back pain", (PromCode.BACK_PAIN_NRS, PromCode.BACK_PAIN_VAS), _PAIN),
    Expected("leg-pain", "Leg pain", (PromCode.LEG_PAIN_NRS, PromCode.LEG_PAIN_VAS), _PAIN),
    # The imaging windows are the cohort retrieval's defaults (IMAGING_COHORT_*_DAYS).
    Expected("imaging-pre", "Pre-operative imaging", (), window=(-180, 0), due=0),
    Expected("imaging-post", "Post-operative imaging", (), window=(0, 365), due=91),
)


# -- early post-operative results --------------------------------------------------------
@dataclass(frozen=True)
class EarlyResult:
    """A quantitative early post-operative result (coded in ``system``)."""

    code: str  # our name for it
    display: str
    definition: str
    unit: str
    low: float
    high: float
    system: str = PROJECT
    system_code: str | None = None  # its code in ``system`` when that is not ours

    @property
    def coding(self) -> tuple[str, str]:
        return (self.system, self.system_code or self.code)


EARLY_RESULTS: dict[str, EarlyResult] = {
    e.code: e
    for e in (
        EarlyResult(
            "blood-loss",
            "Estimated blood loss",
            "Estimated intra-operative blood loss, mL.",
            "mL",
            0,
            20000,
            system=LOINC,
            system_code="59770-8",
        ),
        EarlyResult(
            "analgesic-mme",
            "Analgesic consumption",
            "Opioid analgesic consumption in morphine milligram equivalents per day.",
            "mg/d",
            0,
            2000,
        ),
        EarlyResult(
            "length-of-stay", "Length of stay", "Days from admission to discharge.", "d", 0, 365
        ),
    )
}


# -- surgery and complications -----------------------------------------------------------
PROCEDURE = Concept(
    "mis-lumbar-fusion",
    "Minimally invasive lumbar fusion",
    "The index surgery of the study (Procedure.code).",
)
TECHNIQUES: tuple[Concept, ...] = (
    Concept("mis-tlif", "MIS-TLIF", "Minimally invasive transforaminal interbody fusion."),
    Concept("mis-plif", "MIS-PLIF", "Minimally invasive posterior interbody fusion."),
    Concept("olif", "OLIF", "Oblique lateral interbody fusion."),
    Concept("xlif", "XLIF", "Extreme lateral interbody fusion."),
)
COMPLICATIONS: tuple[Concept, ...] = (
    Concept("dural-tear", "Dural tear", "Incidental durotomy."),
    Concept("infection", "Surgical site infection", "Superficial or deep infection."),
    Concept("haematoma", "Haematoma", "Epidural or wound haematoma."),
    Concept(
        "neurological-deficit",
        "Neurological deficit",
        "New or worsened motor or sensory deficit.",
    ),
    Concept("implant-malposition", "Implant malposition", "Screw or cage malposition."),
    Concept("re-operation", "Re-operation", "Unplanned return to theatre."),
    Concept("urinary-retention", "Urinary retention", "Post-operative retention."),
    Concept("thromboembolism", "Venous thromboembolism", "DVT or pulmonary embolism."),
    Concept("other-complication", "Other complication", "Any other complication."),
)
CLAVIEN_DINDO: tuple[Concept, ...] = tuple(
    Concept(f"CD-{g}", f"Clavien-Dindo grade {g}", f"Clavien-Dindo grade {g}.")
    for g in ("I", "II", "IIIa", "IIIb", "IVa", "IVb", "V")
)
COMPLICATION_TIMINGS: tuple[Concept, ...] = (
    Concept("early", "Early (<= 30 days)", "Onset within 30 days of surgery."),
    Concept("late", "Late (> 30 days)", "Onset more than 30 days after surgery."),
)
GROUP_CODES: tuple[str, ...] = get_args(GroupCode)
PAIN_SCORES: tuple[str, ...] = tuple(p.code.value for p in PROMS.values() if p.scale == "0-10")
COMPLICATION_CODES: tuple[str, ...] = tuple(c.code for c in COMPLICATIONS)
CLAVIEN_DINDO_GRADES: tuple[str, ...] = tuple(c.code for c in CLAVIEN_DINDO)
