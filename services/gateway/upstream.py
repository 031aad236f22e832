"""Clients of the two upstream services, over their public HTTP APIs only.

The ``httpx.AsyncClient`` of each is created in the app's lifespan with explicit
timeouts and passed in; tests use the same clients against the real services. Every
failure is translated into :mod:`services.gateway.errors` here, so the API layer sees
"unavailable", "not found" or "rejected", never an httpx exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import ValidationError

from services.common.contracts import (
    ContractError,
    ManualMeasurement,
    ResultsPage,
    StudyMeasurements,
    StudyResult,
)
from services.common.fhir import codes
from services.gateway.cases import ClinicalRecord
from services.gateway.errors import (
    Unprocessable,
    UpstreamNotFound,
    UpstreamRejected,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
PAGE = 1000  # the outcomes server's maximum _count
INCLUDES = [("_include", "Procedure:subject"), ("_include", "Procedure:performer")]
OUTCOME_CATEGORIES = ("prom", "complication", "early-postop")


async def _get(
    client: httpx.AsyncClient, service: str, url: str, params: Any = None
) -> httpx.Response:
    return _checked(service, await _send(client, service, "GET", url, params=params))


async def _send(
    client: httpx.AsyncClient, service: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    try:
        return await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise UpstreamUnavailable(service, "timed out") from None
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(service, f"unreachable ({type(exc).__name__})") from None


def _checked(service: str, response: httpx.Response) -> httpx.Response:
    """The response, or the upstream error its status means."""
    if response.status_code >= 500:
        raise UpstreamUnavailable(service, f"answered {response.status_code}")
    if response.status_code == 404:
        raise UpstreamNotFound(service, "not found")
    if response.status_code >= 400:
        raise UpstreamRejected(service, f"refused the request ({response.status_code})")
    return response


class OutcomesClient:
    """The FHIR R4 outcomes service."""

    service = "outcomes"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.http = client

    async def ping(self) -> None:
        await _get(self.http, self.service, "metadata")

    async def search(
        self, resource_type: str, params: list[tuple[str, str]]
    ) -> AsyncIterator[dict[str, Any]]:
        """Every entry of a search (matches and includes), following ``next`` links."""
        url: str | None = resource_type
        query: list[tuple[str, str]] | None = params
        while url is not None:
            bundle = (await _get(self.http, self.service, url, query)).json()
            for entry in bundle.get("entry", []):
                yield entry["resource"]
            url = next(
                (link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"),
                None,
            )
            query = None  # the next link carries the whole query

    async def procedure(self, case_id: str) -> ClinicalRecord:
        """The index surgery with its Patient and surgeon (no Observations yet)."""
        found: dict[str, dict[str, Any]] = {}
        async for resource in self.search("Procedure", [("_id", case_id), *INCLUDES]):
            found[f"{resource['resourceType']}/{resource['id']}"] = resource
        procedure = found.get(f"Procedure/{case_id}")
        if procedure is None:
            raise UpstreamNotFound(self.service, f"no Procedure/{case_id}")
        return _record(procedure, found)

    async def observations(self, patient_ref: str) -> list[dict[str, Any]]:
        return [
            r
            async for r in self.search(
                "Observation", [("subject", patient_ref), ("_count", str(PAGE))]
            )
        ]

    async def _collect(
        self, resource_type: str, params: list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        return [r async for r in self.search(resource_type, params)]

    async def cohort(self) -> tuple[list[ClinicalRecord], dict[str, list[dict[str, Any]]]]:
        """Every index surgery with patient and surgeon, and every outcome Observation.

        The searches run concurrently (one per category), so the server prepares one
        page while the gateway parses another.
        """
        count = ("_count", str(PAGE))
        surgeries, *by_category = await asyncio.gather(
            self._collect(
                "Procedure", [("code", f"{codes.PROJECT}|mis-lumbar-fusion"), *INCLUDES, count]
            ),
            *(
                self._collect("Observation", [("category", f"{codes.PROJECT}|{c}"), count])
                for c in OUTCOME_CATEGORIES
            ),
        )
        found = {f"{r['resourceType']}/{r['id']}": r for r in surgeries}
        procedures = [r for r in surgeries if r["resourceType"] == "Procedure"]
        observations: dict[str, list[dict[str, Any]]] = {}
        seen: set[str] = set()
        for resource in (r for found_in in by_category for r in found_in):
            subject = (resource.get("subject") or {}).get("reference")
            if subject and resource["id"] not in seen:  # one Observation, several categories
                seen.add(resource["id"])
                observations.setdefault(subject, []).append(resource)
        return [_record(p, found) for p in procedures], observations


def _record(procedure: dict[str, Any], found: dict[str, dict[str, Any]]) -> ClinicalRecord:
    subject = (procedure.get("subject") or {}).get("reference", "")
    performers = procedure.get("performer") or []
    surgeon_ref = (performers[0].get("actor") or {}).get("reference") if performers else None
    return ClinicalRecord(
        procedure=procedure,
        patient=found.get(subject),
        surgeon=found.get(surgeon_ref) if surgeon_ref else None,
        observations=[],
    )


class ImagingClient:
    """The imaging service's results API."""

    service = "imaging"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.http = client

    async def ping(self) -> None:
        await _get(self.http, self.service, "/healthz")

    async def results(self, patient_id: str | None = None) -> list[StudyResult]:
        """Studies with their current measurements (all, or one patient's), parsed into
        the result contract."""
        items: list[StudyResult] = []
        after: str | None = None
        while True:
            params = {"limit": str(PAGE)}
            if patient_id is not None:
                params["PatientID"] = patient_id
            if after:
                params["after"] = after
            response = await _get(self.http, self.service, "/api/results", params)
            try:
                page = ResultsPage.from_json(response.content)
            except ContractError as exc:
                page = self._salvage(response, exc)
            items.extend(page.items)
            after = page.next_after
            if not after:
                return items

    def _salvage(self, response: httpx.Response, error: ContractError) -> ResultsPage:
        """A page with an item outside the contract: keep the items that fit (one bad
        study never hides the cohort); a page that is not a page is an upstream failure."""
        try:
            raw = response.json()
            items = raw["items"]
            after = raw.get("next_after")
        except (ValueError, KeyError, TypeError):
            reason = f"answered outside the result contract ({error})"
            raise UpstreamUnavailable(self.service, reason) from None
        kept = []
        for item in items if isinstance(items, list) else []:
            try:
                kept.append(StudyResult.model_validate(item))
            except ValidationError:
                log.warning("imaging result outside the contract skipped")
        return ResultsPage(items=kept, next_after=after if isinstance(after, str) else None)

    async def retrieval(self, patient_id: str | None = None) -> dict[tuple[str, str], str]:
        """The PACS retrieval status of each cohort surgery (or one patient's), by
        (PatientID, surgery date YYYYMMDD): found, retrieving, retrieved, analysed,
        missing pre-op, ambiguous... (``/api/cohort``)."""
        params = {"PatientID": patient_id} if patient_id is not None else None
        response = await _get(self.http, self.service, "/api/cohort", params)
        try:
            rows = response.json()
            return {(str(r["patient_id"]), str(r["surgery_date"])): str(r["status"]) for r in rows}
        except (ValueError, KeyError, TypeError):
            reason = "answered an unreadable cohort status"
            raise UpstreamUnavailable(self.service, reason) from None

    async def key_image(self, study: str, name: str) -> bytes:
        url = f"/api/studies/{study}/key-images/{name}.png"
        return (await _get(self.http, self.service, url)).content

    async def measurements(self, study: str) -> StudyMeasurements | None:
        """The study's current result with every reader's reads (None: not analysed yet)."""
        response = await _get(self.http, self.service, f"/api/studies/{study}/measurements")
        if response.status_code != 200:
            return None
        try:
            return StudyMeasurements.from_json(response.content)
        except ContractError as exc:
            raise UpstreamUnavailable(
                self.service, f"answered outside the contract ({exc})"
            ) from None

    async def review_image(self, study: str, name: str) -> bytes:
        url = f"/api/studies/{study}/review-images/{name}.png"
        return (await _get(self.http, self.service, url)).content

    async def section(self, study: str, name: str, offset: float, window: str) -> bytes:
        url = f"/api/studies/{study}/review-images/{name}/section.png"
        params = {"offset": f"{offset:g}", "window": window}
        return (await _get(self.http, self.service, url, params)).content

    async def review_geometry(self, study: str, name: str) -> dict[str, Any]:
        url = f"/api/studies/{study}/review-images/{name}.json"
        geometry: dict[str, Any] = (await _get(self.http, self.service, url)).json()
        return geometry

    async def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        """POST a reader's action; :class:`Unprocessable` with the imaging service's reason
        when it does not fit the result it reviews."""
        response = await _send(self.http, self.service, "POST", url, json=body)
        if response.status_code == 422:
            try:
                reason = str(response.json().get("reason") or "the request was refused")
            except ValueError:
                reason = "the request was refused"
            raise Unprocessable(reason)
        return _checked(self.service, response)

    async def post_read(self, study: str, read: dict[str, Any]) -> ManualMeasurement:
        """Record a reader's read (kept next to the automatic value)."""
        response = await self._post(f"/api/studies/{study}/manual-measurements", read)
        return ManualMeasurement.model_validate_json(response.content)

    async def sign_review(self, study: str, reader: str) -> dict[str, Any]:
        """The reader signs the study's review: the imaging service writes the verified SR."""
        response = await self._post(f"/api/studies/{study}/review-sign", {"reader_id": reader})
        signed: dict[str, Any] = response.json()
        return signed
