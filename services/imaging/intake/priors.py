"""The prior fetcher: when a routed study completes, retrieve the same patient's earlier
CT/MR studies that we do not hold, so the pre-operative comparison is here for analysis.
"""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.imaging.completion.lifecycle import StudyCompleted
from services.imaging.intake.pacs import PULL_SOURCE, Pacs, study_json_value
from services.imaging.intake.store import InstanceStore
from services.imaging.models import Study


class PriorFetcher:
    """Subscriber to ``study.complete``: fetch the patient's prior CT/MR studies."""

    def __init__(
        self,
        engine: Engine,
        store: InstanceStore,
        pacs: Pacs,
        *,
        lookback_days: int,
        modalities: list[str],
    ) -> None:
        self.engine = engine
        self.store = store
        self.pacs = pacs
        self.lookback_days = lookback_days
        self.modalities = modalities

    def __call__(self, event: StudyCompleted) -> None:
        if event.source == PULL_SOURCE:
            return  # priors of a retrieved prior would cascade through the archive
        with Session(self.engine) as session:
            study = session.get(Study, event.study_instance_uid)
            if study is None or not study.patient_id:
                return
            patient_id, issuer, study_date = (
                study.patient_id,
                study.issuer_of_patient_id,
                study.study_date,
            )
        # Modalities are filtered here: PACSs differ on multi-valued ModalitiesInStudy.
        filters: dict[str, str] = {"PatientID": patient_id}
        if issuer:
            filters["IssuerOfPatientID"] = issuer
        if study_date:
            end = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
            start = end - timedelta(days=self.lookback_days)
            filters["StudyDate"] = f"{start:%Y%m%d}-{end:%Y%m%d}"
        fields = ["IssuerOfPatientID", "ModalitiesInStudy", "StudyDate"]
        for entry in self.pacs.search_studies(filters, fields):
            uid = study_json_value(entry, "0020000D")
            if uid is None or uid == event.study_instance_uid:
                continue
            if issuer and study_json_value(entry, "00100021") not in (None, issuer):
                continue  # same PatientID from another issuer: another patient
            modalities = set(entry.get("00080061", {}).get("Value", []))
            if modalities and not modalities & set(self.modalities):
                continue
            with Session(self.engine) as session:
                if session.get(Study, uid) is not None:
                    continue
            self.pacs.retrieve(uid, self.store)
