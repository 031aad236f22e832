"""Posting a study's metrics to the outcomes FHIR store.

One FHIR transaction per measurement set, built so that re-running it changes nothing:

* the Patient is found or created by its MRN (conditional create, identifier only: the
  EHR owns the demographics);
* the ImagingStudy is found or created by its Study Instance UID (conditional create);
* each metric is an Observation identified by study/level/side/quantity and
  ``derivedFrom`` the ImagingStudy. A new one is created ``final``; one whose value
  changed (a new study version or algorithm version) is updated to ``amended``; one the
  new analysis no longer stands behind is ``amended`` with a ``dataAbsentReason``.
  Unchanged ones are not touched, so their version history stays meaningful.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from services.common import reading
from services.common.contracts import AnalysisResult, ManualMeasurement
from services.common.fhir import builders, codes
from services.common.vocabulary import QUANTITIES, QuantityName
from services.imaging.errors import DeliveryError
from services.imaging.metrics import FHIR_REQUESTS
from services.imaging.models import Instance, MeasurementSet, Series, Study, reads_of

FHIR_JSON = "application/fhir+json"
VALUE_TOLERANCE = 0.005  # values are reported to 2 decimals


@dataclass(frozen=True)
class StudyFacts:
    """What the ImagingStudy and the Observations say about the DICOM study."""

    study_instance_uid: str
    patient_id: str
    study_date: str | None
    study_time: str | None
    modality: str
    description: str | None
    series: int
    instances: int

    @property
    def started(self) -> str:
        d = self.study_date or "19000101"
        t = (self.study_time or "000000").split(".")[0].ljust(6, "0")
        return f"{d[:4]}-{d[4:6]}-{d[6:8]}T{t[:2]}:{t[2:4]}:{t[4:6]}Z"


@dataclass(frozen=True)
class PublishReport:
    imaging_study: str
    created: int
    amended: int
    unchanged: int
    withdrawn: int

    def as_json(self) -> dict[str, str | int]:
        return {
            "imaging_study": self.imaging_study,
            "created": self.created,
            "amended": self.amended,
            "unchanged": self.unchanged,
            "withdrawn": self.withdrawn,
        }


def metric_identifier(study_uid: str, level: str, side: str | None, quantity: str) -> str:
    return f"{study_uid}/{level}/{side or '-'}/{quantity}"


class FhirPublisher:
    """Posts measurement sets; ``client`` has the base URL, auth and timeouts."""

    def __init__(self, client: httpx.Client, *, mrn_system: str) -> None:
        self.http = client
        self.mrn_system = mrn_system

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            FHIR_REQUESTS.labels(status="error").inc()
            raise DeliveryError(f"FHIR store unreachable ({type(exc).__name__})") from None
        FHIR_REQUESTS.labels(status=str(response.status_code)).inc()
        if response.status_code >= 400:
            raise DeliveryError(f"FHIR store answered {response.status_code} to {method}")
        return response

    def _conditional_create(self, resource: dict[str, Any], criteria: str) -> str:
        response = self._call(
            "POST",
            resource["resourceType"],
            json=resource,
            headers={"If-None-Exist": criteria, "Content-Type": FHIR_JSON},
        )
        body = response.json() if response.content else {}
        logical_id = body.get("id")
        if not logical_id:  # Prefer: return=minimal: the id is in the Location
            location = response.headers.get("Location", "")
            logical_id = location.split("/_history")[0].rsplit("/", 1)[-1]
        return f"{resource['resourceType']}/{logical_id}"

    def publish(
        self,
        study: StudyFacts,
        result: AnalysisResult,
        reads: Sequence[ManualMeasurement] = (),
        measurement_set_id: int | None = None,
    ) -> PublishReport:
        """The study's values as Observations: the values that count once readers have
        reviewed them (:mod:`services.common.reading`), with their provenance — ``method``
        says automatic, accepted or corrected by a reader; ``performer`` names the reader;
        a corrected value is ``amended``; a rejected one is withdrawn."""
        patient = builders.placeholder_patient(study.patient_id, system=self.mrn_system)
        patient_ref = self._conditional_create(
            patient, f"identifier={self.mrn_system}|{study.patient_id}"
        )
        imaging_study = builders.imaging_study(
            patient_ref,
            study.study_instance_uid,
            started=study.started,
            modality=study.modality,
            description=study.description,
            series=study.series,
            instances=study.instances,
        )
        study_ref = self._conditional_create(
            imaging_study,
            f"identifier={codes.DICOM_UID_SYSTEM}|urn:oid:{study.study_instance_uid}",
        )
        existing = self._existing(study_ref)
        algorithm = f"{result.algorithm.name} {result.algorithm.version}"
        entries: list[dict[str, Any]] = []
        created = amended = unchanged = 0
        wanted: set[str] = set()
        decided = reading.decide(result.measurements, reads, measurement_set_id)
        for (quantity, level, side), value in decided.items():
            if value.value is None:  # needing review, rejected, outside the images
                continue
            ident = metric_identifier(study.study_instance_uid, level, side, quantity)
            wanted.add(ident)
            observation = builders.imaging_metric(
                patient_ref,
                QUANTITIES[QuantityName(quantity)].code,
                value.value,
                level=level,
                side=side,
                imaging_study_ref=study_ref,
                effective=study.started,
                algorithm=method(algorithm, value.state),
                status="amended" if value.state == "corrected" else "final",
                performer=None if value.read is None else f"reader {value.read.reader_id}",
            )
            observation["identifier"] = [
                {"system": codes.IMAGING_METRIC_IDENTIFIER, "value": ident}
            ]
            old = existing.get(ident)
            if old is None:
                entries.append(_entry("POST", "Observation", observation, ident))
                created += 1
            elif _same(old, observation):
                unchanged += 1
            else:
                observation["status"], observation["id"] = "amended", old["id"]
                entries.append(_entry("PUT", f"Observation/{old['id']}", observation))
                amended += 1
        withdrawn = 0
        for ident, old in existing.items():
            if ident in wanted or "valueQuantity" not in old:
                continue
            old = dict(old)
            old.pop("valueQuantity")
            old.pop("meta", None)
            old["status"] = "amended"
            old["dataAbsentReason"] = {"text": "not confirmed by the newest analysis"}
            entries.append(_entry("PUT", f"Observation/{old['id']}", old))
            withdrawn += 1
        if entries:
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            self._call("POST", "", json=bundle, headers={"Content-Type": FHIR_JSON})
        return PublishReport(study_ref, created, amended, unchanged, withdrawn)

    def _existing(self, study_ref: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        url: str | None = "Observation"
        params: dict[str, Any] | None = {"derived-from": study_ref, "_count": 1000}
        while url:
            bundle = self._call("GET", url, params=params).json()
            for entry in bundle.get("entry", []):
                resource = entry.get("resource", {})
                for ident in resource.get("identifier", []):
                    if ident.get("system") == codes.IMAGING_METRIC_IDENTIFIER:
                        found[ident["value"]] = resource
            url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
            params = None
        return found


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    value = old.get("valueQuantity", {}).get("value")
    return (
        value is not None
        and abs(float(value) - new["valueQuantity"]["value"]) < VALUE_TOLERANCE
        and old.get("method") == new.get("method")
        and old.get("status") in ("final", "amended")
    )


def _entry(
    method: str, url: str, resource: dict[str, Any], ident: str | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"method": method, "url": url}
    if ident is not None:  # a concurrent publisher of the same set never duplicates
        request["ifNoneExist"] = f"identifier={codes.IMAGING_METRIC_IDENTIFIER}|{ident}"
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": request}


def method(algorithm: str, state: str) -> str:
    """How a value was obtained, as Observation.method's text."""
    if state == "manual":
        return "measured by a reader"
    if state in ("accepted", "corrected"):
        return f"{algorithm}, {state} by a reader"
    return algorithm


class FhirTarget:
    """The outbox target ``fhir``: a measurement set's values as Observations."""

    name = "fhir"

    def __init__(self, engine: Engine, publisher: FhirPublisher) -> None:
        self.engine = engine
        self.publisher = publisher

    def deliver(self, measurement_set: MeasurementSet) -> dict[str, str | int]:
        uid = measurement_set.study_instance_uid
        with Session(self.engine) as session:
            study = session.get(Study, uid)
            if study is None or not study.patient_id:
                return {"skipped": "the study has no PatientID"}
            counts = session.exec(
                select(func.count(func.distinct(Instance.series_instance_uid)), func.count())
                .select_from(Instance)
                .join(Series, col(Series.series_instance_uid) == col(Instance.series_instance_uid))
                .where(Instance.study_instance_uid == uid, col(Series.modality).in_(["CT", "MR"]))
            ).one()
        result = AnalysisResult.from_json(measurement_set.result)
        facts = StudyFacts(
            study_instance_uid=uid,
            patient_id=study.patient_id,
            study_date=study.study_date,
            study_time=study.study_time,
            modality=result.modality,
            description=study.study_description,
            series=int(counts[0]),
            instances=int(counts[1]),
        )
        with Session(self.engine) as session:
            reads = reads_of(session, uid)
        return self.publisher.publish(facts, result, reads, measurement_set.id).as_json()
