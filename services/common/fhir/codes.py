"""The study's terminology: code systems, codes and the ranges they must respect.

LOINC is used where a code exists and is unambiguous; everything else lives in the
project CodeSystem published at ``/fhir/CodeSystem/spine-outcomes`` (built from
:data:`PROJECT_CONCEPTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROJECT = "http://spine-outcomes.example.org/fhir/CodeSystem/spine-outcomes"
PROJECT_CODESYSTEM_ID = "spine-outcomes"
MRN_SYSTEM_DEFAULT = "urn:oid:1.2.3.4.5.6.7.8"  # the hospital's MRN system; configurable
TIME_POINT_EXTENSION = "http://spine-outcomes.example.org/fhir/StructureDefinition/time-point"
ODI_QUESTIONNAIRE = "http://spine-outcomes.example.org/fhir/Questionnaire/odi"
IMAGING_METRIC_IDENTIFIER = (
    "http://spine-outcomes.example.org/fhir/imaging-metric"  # study/level/side/quantity
)
DICOM_UID_SYSTEM = "urn:dicom:uid"


@dataclass(frozen=True)
class Concept:
    code: str
    display: str
    definition: str
    group: str


def _c(group: str, code: str, display: str, definition: str) -> Concept:
    return Concept(code, display, definition, group)


PROJECT_CONCEPTS: tuple[Concept, ...] = (
    # Study groups (Procedure.reasonCode)
    _c(
        "group",
        "foraminal-stenosis",
        "Foraminal stenosis",
        "Indication group: success is the increase of the foraminal height on CT.",
    ),
    _c(
        "group",
        "central-stenosis",
        "Central stenosis",
        "Indication group: success is the increase of the dural sac area and volume on MRI.",
    ),
    # Procedure
    _c(
        "procedure",
        "mis-lumbar-fusion",
        "Minimally invasive lumbar fusion",
        "The index surgery of the study (Procedure.code).",
    ),
    _c("technique", "mis-tlif", "MIS-TLIF", "Minimally invasive transforaminal interbody fusion."),
    _c("technique", "mis-plif", "MIS-PLIF", "Minimally invasive posterior interbody fusion."),
    _c("technique", "olif", "OLIF", "Oblique lateral interbody fusion."),
    _c("technique", "xlif", "XLIF", "Extreme lateral interbody fusion."),
    # Operated levels (Procedure.bodySite)
    *(
        _c("level", lvl, f"Lumbar level {lvl}", f"Motion segment {lvl}.")
        for lvl in ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
    ),
    # Patient-reported outcomes
    _c("prom", "odi", "Oswestry Disability Index", "ODI v2.1a score, 0 (none) to 100 (maximal)."),
    _c("prom", "back-pain-nrs", "Back pain NRS", "Back pain, numeric rating scale 0-10."),
    _c("prom", "leg-pain-nrs", "Leg pain NRS", "Leg pain, numeric rating scale 0-10."),
    _c("prom", "back-pain-vas", "Back pain VAS", "Back pain, visual analogue scale 0-10."),
    _c("prom", "leg-pain-vas", "Leg pain VAS", "Leg pain, visual analogue scale 0-10."),
    _c("prom", "eq5d-index", "EQ-5D index", "EQ-5D utility index value (-0.594 to 1)."),
    # Early post-operative results
    _c(
        "early",
        "analgesic-mme",
        "Analgesic consumption",
        "Opioid analgesic consumption in morphine milligram equivalents per day.",
    ),
    _c("early", "length-of-stay", "Length of stay", "Days from admission to discharge."),
    # Complications (Observation.code) and their grading
    _c("complication", "dural-tear", "Dural tear", "Incidental durotomy."),
    _c("complication", "infection", "Surgical site infection", "Superficial or deep infection."),
    _c("complication", "haematoma", "Haematoma", "Epidural or wound haematoma."),
    _c(
        "complication",
        "neurological-deficit",
        "Neurological deficit",
        "New or worsened motor or sensory deficit.",
    ),
    _c("complication", "implant-malposition", "Implant malposition", "Screw or cage malposition."),
    _c("complication", "re-operation", "Re-operation", "Unplanned return to theatre."),
    _c("complication", "urinary-retention", "Urinary retention", "Post-operative retention."),
    _c("complication", "thromboembolism", "Venous thromboembolism", "DVT or pulmonary embolism."),
    _c("complication", "other-complication", "Other complication", "Any other complication."),
    *(
        _c("clavien-dindo", f"CD-{g}", f"Clavien-Dindo grade {g}", f"Clavien-Dindo grade {g}.")
        for g in ("I", "II", "IIIa", "IIIb", "IVa", "IVb", "V")
    ),
    _c("timing", "early", "Early (<= 30 days)", "Onset within 30 days of surgery."),
    _c("timing", "late", "Late (> 30 days)", "Onset more than 30 days after surgery."),
    _c("component", "complication-timing", "Complication timing", "Early or late."),
    _c("component", "clavien-dindo-grade", "Clavien-Dindo grade", "Severity grade."),
    # Time points relative to surgery
    *(
        _c("time-point", tp, disp, f"Assessment time point: {disp}.")
        for tp, disp in (
            ("baseline", "Baseline (pre-operative)"),
            ("day-1", "Day 1"),
            ("day-2", "Day 2"),
            ("day-3", "Day 3"),
            ("week-6", "6 weeks"),
            ("month-3", "3 months"),
            ("month-6", "6 months"),
            ("month-12", "12 months"),
            ("month-24", "24 months"),
        )
    ),
    # Imaging decompression metrics posted by the imaging service
    _c(
        "imaging",
        "foraminal-height",
        "Foraminal height",
        "Lowest point of the upper pedicle to highest point of the lower pedicle, mm.",
    ),
    _c("imaging", "disc-height", "Disc height", "Mid-sagittal endplate distance, mm."),
    _c("imaging", "dural-sac-area", "Dural sac area", "Cross-sectional area at mid-disc, mm2."),
    _c(
        "imaging",
        "dural-sac-volume",
        "Dural sac volume",
        "Volume between the mid-heights of the level's vertebral bodies, mm3.",
    ),
    _c("component", "side", "Side", "The patient's side the measurement belongs to."),
    _c("side", "left", "Left", "The patient's left."),
    _c("side", "right", "Right", "The patient's right."),
    _c("category", "imaging-metric", "Imaging decompression metric", "Observation category."),
    _c("category", "complication", "Complication", "Observation category of complications."),
    _c("category", "prom", "Patient-reported outcome", "Observation category of PROMs."),
    _c("category", "early-postop", "Early post-operative result", "Observation category."),
)

PROJECT_CODES = {c.code: c for c in PROJECT_CONCEPTS}
LEVELS = tuple(c.code for c in PROJECT_CONCEPTS if c.group == "level")
TIME_POINTS = tuple(c.code for c in PROJECT_CONCEPTS if c.group == "time-point")
CLAVIEN_DINDO = tuple(c.code for c in PROJECT_CONCEPTS if c.group == "clavien-dindo")
COMPLICATION_TYPES = tuple(c.code for c in PROJECT_CONCEPTS if c.group == "complication")
STUDY_GROUPS = ("foraminal-stenosis", "central-stenosis")
# Nominal days after surgery of each post-operative time point.
TIME_POINT_DAYS = {
    "day-1": 1,
    "day-2": 2,
    "day-3": 3,
    "week-6": 42,
    "month-3": 91,
    "month-6": 182,
    "month-12": 365,
    "month-24": 730,
}


@dataclass(frozen=True)
class Measure:
    """A quantitative observation: its code, unit and plausible range."""

    system: str
    code: str
    display: str
    unit: str
    ucum: str
    low: float
    high: float


MEASURES: tuple[Measure, ...] = (
    Measure(PROJECT, "odi", "Oswestry Disability Index", "%", "%", 0, 100),
    Measure(LOINC, "72514-3", "Pain severity NRS (back)", "{score}", "{score}", 0, 10),
    Measure(PROJECT, "back-pain-nrs", "Back pain NRS", "{score}", "{score}", 0, 10),
    Measure(PROJECT, "leg-pain-nrs", "Leg pain NRS", "{score}", "{score}", 0, 10),
    Measure(PROJECT, "back-pain-vas", "Back pain VAS", "{score}", "{score}", 0, 10),
    Measure(PROJECT, "leg-pain-vas", "Leg pain VAS", "{score}", "{score}", 0, 10),
    Measure(PROJECT, "eq5d-index", "EQ-5D index", "{index}", "1", -0.594, 1),
    Measure(LOINC, "59770-8", "Estimated blood loss", "mL", "mL", 0, 20000),
    Measure(PROJECT, "analgesic-mme", "Analgesic consumption", "mg/d", "mg/d", 0, 2000),
    Measure(PROJECT, "length-of-stay", "Length of stay", "d", "d", 0, 365),
    Measure(PROJECT, "foraminal-height", "Foraminal height", "mm", "mm", 0, 60),
    Measure(PROJECT, "disc-height", "Disc height", "mm", "mm", 0, 40),
    Measure(PROJECT, "dural-sac-area", "Dural sac area", "mm2", "mm2", 0, 1000),
    Measure(PROJECT, "dural-sac-volume", "Dural sac volume", "mm3", "mm3", 0, 100000),
)
MEASURE_BY_CODE = {(m.system, m.code): m for m in MEASURES}
