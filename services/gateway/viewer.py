"""The OHIF viewer the gateway serves at ``/viewer/``: a pinned build, installed and checked.

``install`` fetches the ``@ohif/app`` package of the npm registry at the pinned version,
refuses it unless its SHA-512 matches the pin (npm's own ``integrity``), and unpacks its
prebuilt ``dist/`` under ``<dir>/<version>/``. The build assumes it is served at ``/``; it
is re-based on ``/viewer/`` once at install (the ``PUBLIC_URL`` of the page and the webpack
public path of each bundle), and the service worker and its CDN import are left out (the
hospital network reaches no CDN). ``app_config`` writes the ``window.config`` OHIF reads:
one DICOMweb data source, the gateway's own ``/viewer/dicomweb`` (same origin, the
session cookie), so the browser needs one origin and one sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
OHIF_TARBALL = "https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz"
# npm's "integrity" of that tarball (sha512, base64), as the registry publishes it.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PP"
    "e6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
MOUNT = "/viewer/"
DICOMWEB_PATH = "/viewer/dicomweb"
MARKER = ".installed"


class ViewerInstallError(RuntimeError):
    """The viewer package could not be fetched, verified or unpacked."""


@dataclass(frozen=True)
class ViewerBuild:
    """An installed, re-based OHIF build."""

    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    def file(self, relative: str) -> Path | None:
        """The build's file at ``relative``, or None (never a path outside the build)."""
        if not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative:
            return None
        try:
            candidate = (self.root / relative).resolve()
            candidate.relative_to(self.root.resolve())
            return candidate if candidate.is_file() else None
        except (ValueError, OSError):
            return None


def installed(directory: Path, version: str = OHIF_VERSION) -> ViewerBuild | None:
    root = directory / version
    return (
        ViewerBuild(root) if (root / MARKER).is_file() and (root / "index.html").is_file() else None
    )


def verify(data: bytes, integrity: str = OHIF_INTEGRITY) -> None:
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise ViewerInstallError(f"unsupported integrity algorithm {algorithm!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise ViewerInstallError(
            f"{OHIF_PACKAGE}@{OHIF_VERSION}: checksum mismatch (got sha512-{actual[:16]}…); "
            "refusing to install it"
        )


def _rebase(root: Path) -> None:
    """Serve the build under MOUNT instead of ``/``."""
    index = root / "index.html"
    html = index.read_text(encoding="utf-8")
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{MOUNT}"')
    html = html.replace('href="/', f'href="{MOUNT}').replace('src="/', f'src="{MOUNT}')
    html = html.replace(
        f'<script rel="preload" as="script" type="module" src="{MOUNT}init-service-worker.js">'
        "</script>",
        "",
    )
    if f'window.PUBLIC_URL="{MOUNT}"' not in html:
        raise ViewerInstallError("index.html does not set PUBLIC_URL as expected")
    index.write_text(html, encoding="utf-8")
    rebased = 0
    for bundle in root.glob("*.js"):
        text = bundle.read_text(encoding="utf-8", errors="surrogateescape")
        if '__webpack_require__.p = "/";' in text:
            text = text.replace(
                '__webpack_require__.p = "/";', f'__webpack_require__.p = "{MOUNT}";'
            )
            bundle.write_text(text, encoding="utf-8", errors="surrogateescape")
            rebased += 1
    if not rebased:
        raise ViewerInstallError("no bundle sets the webpack public path; unknown build layout")
    for sheet in root.glob("*.css"):
        text = sheet.read_text(encoding="utf-8")
        sheet.write_text(text.replace("url(/", f"url({MOUNT}"), encoding="utf-8")
    manifest = root / "manifest.json"
    if manifest.is_file():
        text = manifest.read_text(encoding="utf-8")
        manifest.write_text(text.replace('"/assets/', f'"{MOUNT}assets/'), encoding="utf-8")
    for unwanted in ("init-service-worker.js", "sw.js", "app-config.js"):
        (root / unwanted).unlink(missing_ok=True)


def unpack(data: bytes, directory: Path, version: str = OHIF_VERSION) -> ViewerBuild:
    """Unpack a verified package's ``dist/`` into ``directory/version`` and re-base it."""
    target = directory / version
    staging = directory / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
        for member in members:
            member.name = member.name.removeprefix("package/dist/")
        archive.extractall(staging, members=members, filter="data")
    _rebase(staging)
    (staging / MARKER).write_text(json.dumps({"package": OHIF_PACKAGE, "version": version}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return ViewerBuild(target)


def install(directory: Path, *, tarball: Path | None = None) -> ViewerBuild:
    """Install the pinned OHIF build (from the registry, or a downloaded ``tarball``)."""
    build = installed(directory)
    if build is not None:
        return build
    if tarball is not None:
        data = tarball.read_bytes()
    else:
        try:
            with urllib.request.urlopen(OHIF_TARBALL, timeout=300) as response:
                data = response.read()
        except OSError as exc:
            raise ViewerInstallError(f"cannot download {OHIF_TARBALL}: {exc}") from None
    verify(data)
    return unpack(data, directory)


# OHIF 3.13 fails on a TID 1500 measurement that has no spatial coordinates (our dural
# sac volume: a value over a range of slices, valid DICOM): it reads coords[0] of an empty
# list. The guard gives such a measurement one empty coordinate, which OHIF then skips.
NO_COORDS_GUARD = (
    "({ measurement }) => (measurement.coords && measurement.coords.length"
    " ? measurement : Object.assign({}, measurement, { coords: [{}] }))"
)


def app_config(*, study_list: bool = True) -> str:
    """The ``app-config.js`` of the build: the gateway's DICOMweb as the one data source."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "spine",
        "configuration": {
            "friendlyName": "Spine imaging service",
            "name": "spine",
            "qidoRoot": "__ROOT__",
            "wadoRoot": "__ROOT__",
            "wadoUriRoot": "__ROOT__",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
            "requestOptions": {"requestCredentials": "same-origin"},
        },
    }
    config = {
        "routerBasename": MOUNT.rstrip("/"),
        "extensions": [],
        "modes": [],
        # No onboarding tour over the images of a reader who checks a measurement.
        "customizationService": {
            "ohif.tours": {"$set": []},
            "onBeforeSRAddMeasurement": {"$set": "__NO_COORDS__"},
        },
        "showStudyList": study_list,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": "spine",
        "dataSources": [source],
    }
    root = f'window.location.origin + "{DICOMWEB_PATH}"'
    body = (
        json.dumps(config, indent=2)
        .replace('"__ROOT__"', root)
        .replace('"__NO_COORDS__"', NO_COORDS_GUARD)
    )
    header = f"/* Generated by the gateway: OHIF {OHIF_VERSION} on its own DICOMweb. */"
    return f"{header}\nwindow.config = {body};\n"
