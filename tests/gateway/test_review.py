"""The readers' review workstation, in a real Chromium and through the real services: a
reader corrects a height by dragging an end point, accepts the next value with the
keyboard; a blinded second reader never receives another reader's values nor, when so
assigned, the automatic ones; the cohort uses the primary review's values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.gateway.conftest import Stack, basic_user, running_stack
from tests.harness.browser import chromium

pytestmark = pytest.mark.integration
PASSWORD = "reader password for tests"
COORDINATOR = "gateway.read gateway.assign"


@pytest.fixture(scope="module")
def review_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One foraminal-stenosis patient with a pre- and a post-operative CT (its own stack:
    the readers' values change what the cohort uses)."""
    users = {
        "rita": basic_user(PASSWORD, "reader"),
        "sam": basic_user(PASSWORD, "reader"),
        "ada": basic_user(PASSWORD, "researcher"),
    }
    with running_stack(tmp_path_factory.mktemp("review"), 1, users) as built:
        yield built


def _reader(stack: Stack, name: str) -> httpx.Client:
    return stack.gateway.client(subject=name, role="reader")


def _numbers(document: Any) -> set[float]:
    """Every number in a JSON document."""
    if isinstance(document, dict):
        return {n for v in document.values() for n in _numbers(v)}
    if isinstance(document, list):
        return {n for v in document for n in _numbers(v)}
    if isinstance(document, (int, float)) and not isinstance(document, bool):
        return {float(document)}
    return set()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with chromium((1600, 1300), ("--disable-gpu",)) as driver:
        yield driver


def test_a_reader_corrects_by_dragging_and_accepts_with_the_keyboard(
    review_stack: Stack, browser: webdriver.Chrome
) -> None:
    stack = review_stack
    with _reader(stack, "rita") as rita:
        worklist = rita.get("/api/review/worklist").json()
        assert worklist["total"] > 0 and worklist["reviewed"] == 0
        study = worklist["items"][0]["study_instance_uid"]
        shown = rita.get(f"/api/review/studies/{study}").json()
    items = shown["items"]
    heights = [
        i for i, it in enumerate(items) if it["quantity"] == "foraminal_height" and it["key_image"]
    ]
    flagged = [i for i in heights if items[i]["status"] == "needs_review"]
    first = (flagged or heights)[0]
    assert first + 1 < len(items)
    name = items[first]["key_image"]
    with _reader(stack, "rita") as rita:
        geometry = rita.get(f"/api/review/studies/{study}/images/{name}.json").json()
    (ax, ay), (bx, by) = geometry["points"]
    expected = math.hypot(bx - ax, by + 40 - ay) * geometry["mm_per_pixel"] * geometry["scale"]

    browser.get(f"{stack.gateway.url}/dashboard/login?next=/dashboard/review")
    browser.find_element(By.NAME, "username").send_keys("rita")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "worklist"))
    assert "0 / " in browser.find_element(By.ID, "progress").text
    assert stack.plans[0].family in browser.page_source  # readers read identified images

    browser.get(f"{stack.gateway.url}/dashboard/review/{study}?item={first}")
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.getElementById('canvas').dataset.ready") == name
    )
    handle = browser.find_element(By.ID, "handle-1")
    ActionChains(browser).click_and_hold(handle).move_by_offset(0, 40).release().perform()
    live = browser.find_element(By.ID, "value").text
    assert live == f"{expected:.1f} mm", (live, expected)
    browser.find_element(By.TAG_NAME, "body").send_keys("s")  # save the correction
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-saved") == "1"
    )
    # The workstation moved on to the next value: accept it with the keyboard.
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, f"item-{first + 1}").get_attribute("aria-current") == "true"
    )
    browser.find_element(By.TAG_NAME, "body").send_keys("a")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-saved") == "2"
    )

    with stack.imaging.client() as imaging:
        reads = imaging.get(f"/api/studies/{study}/manual-measurements").json()
    corrected, accepted = reads[-2:]
    assert corrected["reader_id"] == "rita" and corrected["action"] == "corrected"
    assert corrected["purpose"] == "review" and corrected["key_image"] == name
    assert abs(corrected["value"] - expected) < 0.1, (corrected["value"], expected)
    assert corrected["automatic_value"] == items[first]["value"]
    nxt = items[first + 1]
    assert accepted["action"] == "accepted"
    assert (accepted["quantity"], accepted["level"], accepted["side"]) == (
        nxt["quantity"],
        nxt["level"],
        nxt["side"],
    )
    assert accepted["value"] == nxt["value"]
    browser.get(f"{stack.gateway.url}/dashboard/review")
    assert "2 / " in browser.find_element(By.ID, "progress").text


def test_researchers_and_clinicians_cannot_open_the_workstation(review_stack: Stack) -> None:
    stack = review_stack
    for role in ("researcher", "clinician"):
        with stack.gateway.client(role=role) as other:
            answer = other.get("/api/review/worklist")
            assert answer.status_code == 403 and "reader" in answer.json()["reason"]
        page = httpx.get(
            f"{stack.gateway.url}/dashboard/review",
            cookies={"gateway_session": stack.gateway.token(role=role)},
            timeout=60,
        )
        assert page.status_code == 403
        assert stack.plans[0].family not in page.text and stack.plans[0].mrn not in page.text


def test_a_blinded_second_reader_never_receives_another_readers_values(
    review_stack: Stack,
) -> None:
    stack = review_stack
    with _reader(stack, "rita") as rita:
        study = rita.get("/api/review/worklist").json()["items"][0]["study_instance_uid"]
        items = rita.get(f"/api/review/studies/{study}").json()["items"]
        heights = [it for it in items if it["quantity"] == "foraminal_height" and it["value"]]
        automatic = {it["value"] for it in items if it["value"] is not None}
        typed, rejected = heights[-1], heights[-2]
        where = {k: typed[k] for k in ("quantity", "level", "side")}
        answer = rita.post(
            f"/api/review/studies/{study}/reads",
            json={**where, "action": "corrected", "value": 17.77},
        )
        assert answer.status_code == 201, answer.text
        answer = rita.post(
            f"/api/review/studies/{study}/reads",
            json={
                **{k: rejected[k] for k in ("quantity", "level", "side")},
                "action": "rejected",
                "reason": "wrong-structure",
            },
        )
        assert answer.status_code == 201, answer.text
        # A reader cannot assign blinded reads; the coordinator can.
        refused = rita.post(
            "/api/review/assignments",
            json={"reader": "sam", "purpose": "second", "fraction": 1, "seed": 7},
        )
        assert refused.status_code == 403
    with stack.gateway.client(scope=COORDINATOR, role="integration") as coordinator:
        drawn = coordinator.post(
            "/api/review/assignments",
            json={"reader": "sam", "purpose": "second", "fraction": 1.0, "seed": 7},
        )
        assert drawn.status_code == 201, drawn.text
        assert study in {a["study_instance_uid"] for a in drawn.json()}
        again = coordinator.post(
            "/api/review/assignments",
            json={"reader": "sam", "purpose": "second", "fraction": 1.0, "seed": 7},
        )
        assert again.status_code == 201 and again.json() == []  # not drawn twice
        bad = coordinator.post(
            "/api/review/assignments",
            json={"reader": "sam", "purpose": "review", "fraction": 2, "seed": -1},
        )
        assert bad.status_code == 422

    seen: list[Any] = []
    with _reader(stack, "sam") as sam:
        worklist = sam.get("/api/review/worklist").json()
        seen.append(worklist)
        mine = next(w for w in worklist["items"] if w["study_instance_uid"] == study)
        assert mine["purpose"] == "second" and mine["blind_automatic"] is True
        assert worklist["items"][0]["purpose"] == "second"  # assigned reads first
        shown = sam.get(f"/api/review/studies/{study}").json()
        seen.append(shown)
        assert shown["purpose"] == "second" and shown["warnings"] == []
        assert all(
            it["value"] is None and it["status"] is None and it["reason"] is None
            for it in shown["items"]
        )
        assert all(it["read"] is None for it in shown["items"])
        name = next(it["key_image"] for it in shown["items"] if it["key_image"])
        geometry = sam.get(f"/api/review/studies/{study}/images/{name}.json").json()
        seen.append(geometry)
        assert geometry["points"] == []
        png = sam.get(f"/api/review/studies/{study}/images/{name}.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        # Not a number, not a point: a clear 422, never a 500.
        start = json.dumps({**where, "action": "measured"})[:-1]
        for geometry in ("[[NaN, 1], [2, 3]]", "[[1e400, 1], [2, 3]]", "[[1, 1], [1, 1]]"):
            odd = sam.post(
                f"/api/review/studies/{study}/reads",
                content=f'{start}, "geometry": {geometry}}}',
                headers={"Content-Type": "application/json"},
            )
            assert odd.status_code == 422, (geometry, odd.status_code, odd.text)
        # Blinded: accepting is not possible, measuring is.
        refused = sam.post(
            f"/api/review/studies/{study}/reads", json={**where, "action": "accepted"}
        )
        assert refused.status_code == 422
        measured = sam.post(
            f"/api/review/studies/{study}/reads",
            json={**where, "action": "measured", "value": 12.5},
        )
        assert measured.status_code == 201, measured.text
        seen.append(measured.json())
        after = sam.get(f"/api/review/studies/{study}").json()
        seen.append(after)
        read = next(it["read"] for it in after["items"] if {k: it[k] for k in where} == where)
        assert read["value"] == 12.5 and read["action"] == "measured"
        # The views that show other readers' values are closed to a reader.
        for path in (
            "/api/export/agreement.csv",
            "/api/cases",
            "/api/cohort/summary",
            "/api/agreement",
            "/api/export/cases.csv",
        ):
            answer = sam.get(path)
            assert answer.status_code == 403, path
            seen.append(answer.json())
    numbers = set().union(*(_numbers(doc) for doc in seen))
    assert 17.77 not in numbers  # the first reader's value
    assert not automatic & numbers, automatic & numbers  # the automatic values
    assert "rita" not in json.dumps(seen)
    # The first reader does not see the second reader's value either.
    with _reader(stack, "rita") as rita:
        hers = rita.get(f"/api/review/studies/{study}").json()
    assert 12.5 not in _numbers(hers)
    page = httpx.get(
        f"{stack.gateway.url}/dashboard/cases",
        cookies={"gateway_session": stack.gateway.token(subject="sam", role="reader")},
        timeout=60,
    )
    assert page.status_code == 403

    # The cohort uses the primary review: corrected replaces, rejected excludes.
    with stack.gateway.client(role="clinician") as clinician:
        case = clinician.get(f"/api/cases/{stack.cases[stack.plans[0].mrn]}").json()
        answer = clinician.get("/api/cohort/summary", params={"refresh": "true"})
        if answer.status_code == 503:  # an upstream timed out reloading on a busy machine
            answer = clinician.get("/api/cohort/summary", params={"refresh": "true"})
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        reviewed = clinician.get("/api/cohort/summary", params={"reviewed": "true"}).json()
        agreement = clinician.get(
            "/api/agreement", params={"quantity": "foraminal_height", "refresh": "true"}
        ).json()
        bundle = clinician.get(f"/api/cases/{stack.cases[stack.plans[0].mrn]}/bundle").json()
        exported = clinician.get("/api/export/agreement.csv").text.splitlines()
    with stack.gateway.client(role="researcher") as researcher:
        pseudonymised = researcher.get("/api/export/agreement.csv").text
    assert exported[0].startswith("quantity,kind,rater_a,rater_b,n,icc2")
    assert any(",reader-reader,rita,sam," in line for line in exported)
    assert "rita" not in pseudonymised and ",reader-reader,RD-" in pseudonymised
    values = [
        v
        for row in case["imaging"]["metrics"]
        for v in (row["pre"], *(p["value"] for p in row["post"]))
    ]
    statuses = {v["status"] for v in values}
    assert {"corrected", "rejected"} <= statuses
    assert any(v["status"] == "corrected" and v["value"] == 17.77 for v in values)
    assert all(v["value"] is None for v in values if v["status"] == "rejected")
    assert sum(summary["summary"]["review"].values()) > 0
    assert reviewed["summary"]["reviewed_only"] is True and reviewed["filters"]["reviewed"]
    kinds = {(r["kind"], r["rater_a"], r["rater_b"]) for r in agreement["agreement"]}
    assert ("reader-reader", "rita", "sam") in kinds
    methods = {
        e["resource"].get("method", {}).get("text")
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    }
    assert "automatic, corrected by a reader" in methods
    assert any(
        e["resource"].get("status") == "amended"
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    )


def test_the_signed_review_is_a_verified_sr_that_supersedes_the_automatic_one(
    review_stack: Stack,
) -> None:
    from io import BytesIO

    from pydicom import dcmread

    from tests.harness.series import sr_items

    stack = review_stack
    with _reader(stack, "rita") as rita:
        study = rita.get("/api/review/worklist").json()["items"][0]["study_instance_uid"]
        shown = rita.get(f"/api/review/studies/{study}").json()
        unread = [it for it in shown["items"] if it["read"] is None]
        if unread:  # not every value read yet: nothing to sign
            early = rita.post(f"/api/review/studies/{study}/sign")
            assert early.status_code == 422 and "not read" in early.json()["reason"]
        for item in unread:
            body = (
                {"action": "accepted"}
                if item["value"] is not None
                else {"action": "rejected", "reason": "not-visible"}
            )
            where = {k: item[k] for k in ("quantity", "level", "side")}
            assert (
                rita.post(f"/api/review/studies/{study}/reads", json={**where, **body}).status_code
                == 201
            )
        signed = rita.post(f"/api/review/studies/{study}/sign")
        assert signed.status_code == 201, signed.text
        uid = signed.json()["sop_instance_uid"]
    with _reader(stack, "sam") as sam:  # a blinded read is never signed
        assert sam.post(f"/api/review/studies/{study}/sign").status_code == 422
    with stack.imaging.client() as imaging:
        found = imaging.get(
            f"/dicomweb/studies/{study}/instances", params={"SOPInstanceUID": uid}
        ).json()
        series = found[0]["0020000E"]["Value"][0]
        part = imaging.get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
    sr = dcmread(BytesIO(part.content[part.content.index(b"DICM") - 128 :]))
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName.family_name == "rita"
    assert sr.PredecessorDocumentsSequence  # supersedes the automatic SR
    items = list(sr_items(sr))
    observers = [i.PersonName.family_name for i in items if i.ValueType == "PNAME"]
    assert "rita" in observers  # the person observer of the observation context
    methods = {i.ConceptCodeSequence[0].CodeValue for i in items if i.ValueType == "CODE"}
    assert "READER-CORRECTED" in methods and "READER-ACCEPTED" in methods
    values = [float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"]
    assert 17.77 in values  # the reader's corrected value, not the automatic one
    lines = [i for i in items if i.ValueType == "SCOORD"]
    assert lines  # the constructions, on the key images
