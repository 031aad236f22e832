"""The study's FHIR terminology: code systems, the project CodeSystem and the range each
quantitative Observation must respect — all built from the vocabulary
(:mod:`services.common.vocabulary`), so FHIR spells every concept the way the other
services do.

LOINC is used where a code exists and is unambiguous; everything else lives in the
project CodeSystem published at ``/fhir/CodeSystem/spine-outcomes`` (built from
:data:`PROJECT_CONCEPTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common import vocabulary as v

LOINC = v.LOINC
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROJECT = v.PROJECT
PROJECT_CODESYSTEM_ID = "spine-outcomes"
MRN_SYSTEM_DEFAULT = "urn:oid:1.2.3.4.5.6.7.8"  # the hospital's MRN system; configurable
TIME_POINT_EXTENSION = "http://spine-outcomes.example.org/fhir/StructureDefinition/time-point"
ODI_QUESTIONNAIRE = str(v.PROMS[v.PromCode.ODI].questionnaire)
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


def _group(group: str, concepts: tuple[v.Concept, ...]) -> tuple[Concept, ...]:
    return tuple(Concept(c.code, c.display, c.definition, group) for c in concepts)


PROJECT_CONCEPTS: tuple[Concept, ...] = (
    # Study groups (Procedure.reasonCode)
    *(Concept(g.code, g.display, g.definition, "group") for g in v.GROUPS.values()),
    # Procedure and techniques
    *_group("procedure", (v.PROCEDURE,)),
    *_group("technique", v.TECHNIQUES),
    # Operated levels (Procedure.bodySite)
    *(Concept(lvl, f"Lumbar level {lvl}", f"Motion segment {lvl}.", "level") for lvl in v.LEVELS),
    # Patient-reported outcomes
    *(Concept(p.code, p.display, p.definition, "prom") for p in v.PROMS.values()),
    # Early post-operative results coded here (blood loss is LOINC)
    *(
        Concept(e.code, e.display, e.definition, "early")
        for e in v.EARLY_RESULTS.values()
        if e.system == v.PROJECT
    ),
    # Complications (Observation.code) and their grading
    *_group("complication", v.COMPLICATIONS),
    *_group("clavien-dindo", v.CLAVIEN_DINDO),
    *_group("timing", v.COMPLICATION_TIMINGS),
    Concept("complication-timing", "Complication timing", "Early or late.", "component"),
    Concept("clavien-dindo-grade", "Clavien-Dindo grade", "Severity grade.", "component"),
    # Time points relative to surgery
    *(
        Concept(tp.code, tp.display, f"Assessment time point: {tp.display}.", "time-point")
        for tp in v.TIME_POINTS
    ),
    # Imaging decompression metrics posted by the imaging service
    *(Concept(q.code, q.display, q.definition, "imaging") for q in v.QUANTITIES.values()),
    Concept("side", "Side", "The patient's side the measurement belongs to.", "component"),
    Concept("left", "Left", "The patient's left.", "side"),
    Concept("right", "Right", "The patient's right.", "side"),
    Concept("imaging-metric", "Imaging decompression metric", "Observation category.", "category"),
    Concept("complication", "Complication", "Observation category of complications.", "category"),
    Concept("prom", "Patient-reported outcome", "Observation category of PROMs.", "category"),
    Concept("early-postop", "Early post-operative result", "Observation category.", "category"),
)
PROJECT_CODES = {c.code: c for c in PROJECT_CONCEPTS}


@dataclass(frozen=True)
class Measure:
    """A quantitative observation: its code, unit and accepted range."""

    system: str
    code: str
    display: str
    unit: str
    ucum: str
    low: float
    high: float


MEASURES: tuple[Measure, ...] = (
    *(
        Measure(system, code, p.display, p.unit, p.ucum, p.low, p.high)
        for p in v.PROMS.values()
        for system, code in ((PROJECT, p.code), *p.aliases)
    ),
    *(
        Measure(*e.coding, e.display, e.unit, e.unit, e.low, e.high)
        for e in v.EARLY_RESULTS.values()
    ),
    *(
        Measure(PROJECT, q.code, q.display, q.unit, q.unit, *q.accepted)
        for q in v.QUANTITIES.values()
    ),
)
MEASURE_BY_CODE = {(m.system, m.code): m for m in MEASURES}
