"""The OHIF viewer at /viewer/ on the gateway's own DICOMweb relay: who may open it, what the
relay forwards and rewrites, and the viewer itself in a real headless Chromium."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services.gateway.viewer import installed
from tests.conftest import _require
from tests.gateway.conftest import Stack
from tests.harness.browser import chromium
from tests.harness.gateway import VIEWER_DIR

pytestmark = pytest.mark.integration
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=test-boundary'
MULTIPART_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture(scope="module", autouse=True)
def viewer_installed() -> None:
    _require(installed(VIEWER_DIR) is not None, "the OHIF viewer (make viewer)")


def _study(stack: Stack, index: int, slot: str = "post") -> str:
    uid: str = stack.truth[stack.plans[index].mrn][slot]["study_instance_uid"]
    return uid


def _relay(stack: Stack, role: str | None = "clinician") -> httpx.Client:
    headers = {"Authorization": f"Bearer {stack.gateway.token(role=role)}"} if role else {}
    return httpx.Client(
        base_url=f"{stack.gateway.url}/viewer/dicomweb", headers=headers, timeout=60
    )


def test_the_relay_serves_clinicians_and_rewrites_links_to_itself(stack: Stack) -> None:
    study = _study(stack, 0)
    with _relay(stack) as relay:
        studies = relay.get("/studies", params={"StudyInstanceUID": study})
        assert studies.status_code == 200, studies.text
        assert studies.headers["content-type"].startswith("application/dicom+json")
        assert stack.imaging.url not in studies.text
        assert studies.json()[0]["00081190"]["Value"][0] == (
            f"{stack.gateway.url}/viewer/dicomweb/studies/{study}"
        )
        series = relay.get(f"/studies/{study}/series").json()
        ct = next(s for s in series if s["00080060"]["Value"] == ["CT"])
        uid = ct["0020000E"]["Value"][0]
        metadata = relay.get(f"/studies/{study}/series/{uid}/metadata").json()
        first = metadata[0]
        bulk = first["7FE00010"]["BulkDataURI"]
        assert bulk.startswith(f"{stack.gateway.url}/viewer/dicomweb/studies/{study}/")
        instance = first["00080018"]["Value"][0]
        frames = relay.get(
            f"/studies/{study}/series/{uid}/instances/{instance}/frames/1",
            headers={"Accept": MULTIPART_FRAMES},
        )
        assert frames.status_code == 200
        assert frames.headers["content-type"].startswith("multipart/related")
        with stack.imaging.client() as imaging:
            direct = imaging.get(
                f"/dicomweb/studies/{study}/series/{uid}/instances/{instance}/frames/1",
                headers={"Accept": MULTIPART_FRAMES},
            )
        body = direct.content
        boundary = direct.headers["content-type"].split("boundary=")[1]
        assert (
            frames.content.replace(
                frames.headers["content-type"].split("boundary=")[1].encode(), boundary.encode()
            )
            == body
        )  # the same bytes, relayed
        thumbnail = relay.get(f"/studies/{study}/series/{uid}/thumbnail")
        assert thumbnail.headers["content-type"] == "image/jpeg"
        assert relay.get(f"/studies/{study}/series/1.2.3/metadata").status_code == 404


def test_the_relay_refuses_researchers_strangers_and_everything_but_dicomweb(
    stack: Stack,
) -> None:
    study = _study(stack, 0)
    with _relay(stack, role="researcher") as relay:
        refused = relay.get("/studies")
        assert refused.status_code == 403
        assert "clinicians" in refused.json()["reason"]
    with _relay(stack, role="integration") as relay:
        assert relay.get("/studies").status_code == 403
    with _relay(stack, role=None) as relay:
        assert relay.get("/studies").status_code == 401
    base = f"{stack.gateway.url}/viewer/dicomweb"
    token = {"Authorization": f"Bearer {stack.gateway.token(role='clinician')}"}
    for path in (
        "/api/results",  # another imaging API, with the gateway's credentials: never
        "/studies/..%2F..%2Fapi%2Fresults",
        "/studies/%2e%2e/%2e%2e/api/results",
        "/studies/" + "1" * 200,
        "/",
        "/measurements",
    ):
        response = httpx.get(base + path, headers=token, timeout=30)
        assert response.status_code in (400, 404), (path, response.status_code)
    weird = httpx.get(base + "/studies", params={"a b": "1"}, headers=token, timeout=30)
    assert weird.status_code == 400
    stow = httpx.post(base + f"/studies/{study}", content=b"--x--", headers=token, timeout=30)
    assert stow.status_code == 405


def test_viewer_pages_need_a_signed_in_clinician(stack: Stack) -> None:
    study = _study(stack, 0)
    page = f"{stack.gateway.url}/viewer/viewer?StudyInstanceUIDs={study}"
    anonymous = httpx.get(page, timeout=30)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/dashboard/login?next=%2Fviewer%2Fviewer")
    researcher = httpx.get(
        page, cookies={"gateway_session": stack.gateway.token(role="researcher")}, timeout=30
    )
    assert researcher.status_code == 403 and "clinicians" in researcher.text
    clinician = httpx.get(
        page, cookies={"gateway_session": stack.gateway.token(role="clinician")}, timeout=30
    )
    assert clinician.status_code == 200
    assert 'src="/viewer/app.bundle.' in clinician.text
    assert "init-service-worker" not in clinician.text
    config = httpx.get(f"{stack.gateway.url}/viewer/app-config.js", timeout=30)
    assert config.headers["content-type"].startswith("text/javascript")
    assert '"routerBasename": "/viewer"' in config.text
    assert 'window.location.origin + "/viewer/dicomweb"' in config.text
    wasm = next(VIEWER_DIR.glob("*/*.wasm")).name
    code = httpx.get(f"{stack.gateway.url}/viewer/{wasm}", timeout=30)
    assert code.status_code == 200 and code.headers["content-type"] == "application/wasm"
    assert httpx.get(f"{stack.gateway.url}/viewer/nothing.js", timeout=30).status_code == 404
    escape = httpx.get(f"{stack.gateway.url}/viewer/..%2F..%2Fpyproject.toml", timeout=30)
    assert escape.status_code in (303, 404)
    for odd in ("%00", "a%00.js", "%00/x"):
        assert httpx.get(f"{stack.gateway.url}/viewer/{odd}", timeout=30).status_code in (303, 404)


def test_the_case_page_links_clinicians_to_the_viewer_and_audits_the_study_read(
    stack: Stack,
) -> None:
    case = stack.cases[stack.plans[0].mrn]
    study = _study(stack, 0)
    clinician = {"gateway_session": stack.gateway.token(role="clinician", subject="dr-reader")}
    page = httpx.get(f"{stack.gateway.url}/dashboard/cases/{case}", cookies=clinician, timeout=60)
    assert page.status_code == 200
    assert f'href="/viewer/viewer?StudyInstanceUIDs={quote(study, safe="")}"' in page.text
    # Why a value is missing or needs review, and the studies' warnings, are written on the
    # page (not only in a hover title).
    for index in (0, 1):
        mrn = stack.plans[index].mrn
        with stack.gateway.client(role="clinician") as api:
            data = api.get(f"/api/cases/{stack.cases[mrn]}").json()
        html = httpx.get(
            f"{stack.gateway.url}/dashboard/cases/{stack.cases[mrn]}", cookies=clinician, timeout=60
        ).text
        reasons = [
            v["reason"]
            for row in data["imaging"]["metrics"]
            for v in (row["pre"], *(p["value"] for p in row["post"]))
            if v["status"] in ("needs_review", "missing") and v.get("reason")
        ]
        notes = [
            w
            for s in [data["imaging"]["pre"], *data["imaging"]["post"]]
            if s
            for w in s["warnings"]
        ]
        for text in reasons + notes:
            assert text.replace("'", "&#39;") in html, text
    researcher = {"gateway_session": stack.gateway.token(role="researcher")}
    pseudonym = stack.case_id(stack.plans[0].mrn, "researcher")
    blind = httpx.get(
        f"{stack.gateway.url}/dashboard/cases/{pseudonym}", cookies=researcher, timeout=60
    )
    assert blind.status_code == 200 and "open in viewer" not in blind.text
    with _relay(stack) as relay:
        series = relay.get(f"/studies/{study}/series").json()
        uid = series[0]["0020000E"]["Value"][0]
        relay.get(f"/studies/{study}/series/{uid}/metadata").raise_for_status()
        relay.get(f"/studies/{study}/series/{uid}/thumbnail").raise_for_status()
    with stack.gateway.client(scope="gateway.read gateway.audit", role="integration") as audit:
        trail = audit.get("/api/audit", params={"limit": 1000}).json()
    paths = [r["path"] for r in trail if r["path"].startswith("/viewer/dicomweb")]
    assert f"/viewer/dicomweb/studies/{study}/series/{uid}/metadata" in paths
    # A whole series' rendering is audited; an instance's frames are not, one by one.
    assert f"/viewer/dicomweb/studies/{study}/series/{uid}/thumbnail" in paths
    assert not any("/frames/" in p for p in paths)


def test_the_relay_rewrites_only_the_imaging_services_own_links(stack: Stack) -> None:
    from tests.harness.series import SeriesSpec, make_series, multipart_body, to_bytes

    ds = make_series(SeriesSpec(slices=1, patient_id="MRN-LINKS"))[0]
    elsewhere = "https://other-pacs.example/wado/dicomweb/studies/1.2.3"
    ds.RetrieveURI = elsewhere
    with stack.imaging.client() as imaging:
        stored = imaging.post(
            "/dicomweb/studies",
            content=multipart_body([to_bytes(ds)]),
            headers={"Content-Type": STOW_TYPE},
        )
    assert stored.status_code == 200, stored.text
    with _relay(stack) as relay:
        path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        metadata = relay.get(path + "/metadata").json()[0]
        frames = relay.get(
            f"{path}/instances/{ds.SOPInstanceUID}/frames/1", headers={"Accept": MULTIPART_FRAMES}
        )
    assert metadata["0040E010"]["Value"] == [elsewhere]  # not ours to rewrite
    assert metadata["7FE00010"]["BulkDataURI"].startswith(f"{stack.gateway.url}/viewer/dicomweb/")
    with stack.gateway.client(scope="gateway.read gateway.audit", role="integration") as audit:
        trail = audit.get("/api/audit", params={"limit": 1000}).json()
    assert frames.status_code == 200
    assert not any(r["path"].endswith(f"{ds.SOPInstanceUID}/frames/1") for r in trail)


# -- OHIF in a real browser ---------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    # WebGL without a GPU (Cornerstone3D renders with it; SwiftShader is Chromium's own).
    webgl = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")
    logs = {"goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"}}
    with chromium((1400, 1000), webgl, logs) as driver:
        yield driver


def _viewport_pixels(browser: webdriver.Chrome) -> np.ndarray:
    canvas = browser.find_element(By.CSS_SELECTOR, ".cornerstone-viewport-element canvas")
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("L"), dtype=float)


def _responses(browser: webdriver.Chrome) -> list[tuple[int, str]]:
    out = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            out.append((int(response["status"]), str(response["url"])))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("patient", "images", "label"),
    [
        (1, "PHANTOM T2", "Dural sac area"),  # MR: sac contours on its axial slices
        (0, "PHANTOM CT", "height"),  # CT: height lines on the key images of their planes
    ],
)
def test_a_clinician_reads_the_measurements_over_the_images_in_ohif(
    browser: webdriver.Chrome, stack: Stack, patient: int, images: str, label: str
) -> None:
    study = _study(stack, patient)
    target = f"/viewer/viewer?StudyInstanceUIDs={study}"
    browser.delete_all_cookies()
    browser.get(f"{stack.gateway.url}{target}")
    WebDriverWait(browser, 30).until(lambda d: "/dashboard/login" in d.current_url)
    browser.find_element(By.NAME, "token").send_keys(stack.gateway.token(role="clinician"))
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(target))
    # The images: the viewport's canvas gets drawn (not blank) at its size.
    WebDriverWait(browser, 120).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".cornerstone-viewport-element canvas")
            and _viewport_pixels(d).std() > 5
        )
    )
    pixels = _viewport_pixels(browser)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    # The series panel lists the images, the key images (Secondary Capture, OT) and the SR.
    panel = WebDriverWait(browser, 60).until(
        lambda d: (
            (text := d.execute_script("return document.body.innerText"))
            and "SR" in text
            and "Key images of the decompression measurements" in text
            and text
        )
    )
    assert images in panel and "OT" in panel
    sr = browser.find_element(
        By.XPATH, "//*[contains(text(), 'measurements') and contains(text(), 'spine')]"
    )
    before = _viewport_pixels(browser)
    ActionChains(browser).double_click(sr).perform()
    # Opening the SR jumps to the first measurement and draws it with its value.
    WebDriverWait(browser, 60).until(
        lambda d: (
            label in d.execute_script("return document.body.innerText")
            or label in (d.page_source or "")
        )
    )
    time.sleep(2)
    after = _viewport_pixels(browser)
    assert np.abs(after - before).mean() > 0.5  # the slice and the drawn contour changed
    responses = _responses(browser)
    dicomweb = [(s, u) for s, u in responses if "/viewer/dicomweb/" in u]
    assert dicomweb, "the viewer made no DICOMweb request"
    assert all(s < 400 for s, _ in dicomweb), [r for r in dicomweb if r[0] >= 400][:5]
    assert any("/frames/" in u for _, u in dicomweb)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in errors if "dicomweb" in e["message"]], errors


@pytest.mark.slow
def test_a_researcher_is_refused_the_viewer(browser: webdriver.Chrome, stack: Stack) -> None:
    browser.delete_all_cookies()
    browser.get(f"{stack.gateway.url}/dashboard/login")
    browser.add_cookie(
        {"name": "gateway_session", "value": stack.gateway.token(role="researcher"), "path": "/"}
    )
    browser.get(f"{stack.gateway.url}/viewer/viewer?StudyInstanceUIDs={_study(stack, 1)}")
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "clinicians only" in text
    assert not browser.find_elements(By.CSS_SELECTOR, "canvas")
