"""Simulated readers for the demo (``--simulated-reads``): they exercise the review
workstation's API as two readers would, so the agreement tables have data. They are a
simulation, not readers: their disagreement is the noise chosen here, and the agreement
figures it yields say nothing about human readers.

- ``reader-1`` (primary review) goes through the worklist: moves one end point of each
  height by a few pixels (accepts it when the move is under a pixel), scales each sac
  contour by a few per cent, accepts values without an image, rejects flagged values
  without a number;
- the coordinator draws a seeded blinded sample (30 %) of reader-1's studies for
  ``reader-2``, who measures each value blind: the simulation starts from the automatic
  construction (read from the imaging service, which a real blinded reader never sees)
  and adds larger noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

PRIMARY, SECOND = "reader-1", "reader-2"


@dataclass
class Tally:
    actions: dict[str, int] = field(default_factory=dict)
    studies: int = 0

    def add(self, action: str) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1


def _moved(geometry: dict[str, Any], rng: np.random.Generator, sd_px: float) -> list[list[float]]:
    points = np.asarray(geometry["points"], dtype=float)
    if geometry["kind"] == "line":
        points[1, 1] += rng.normal(0, sd_px)
    else:
        centre = points.mean(axis=0)
        points = centre + (points - centre) * rng.normal(1.0, sd_px / 100)
    return [[round(float(x), 2), round(float(y), 2)] for x, y in points]


def _post(client: httpx.Client, study: str, item: dict[str, Any], body: dict[str, Any]) -> str:
    where = {k: item[k] for k in ("quantity", "level", "side") if item[k] is not None}
    answer = client.post(f"/api/review/studies/{study}/reads", json={**where, **body})
    answer.raise_for_status()
    return str(answer.json()["action"])


def primary(client: httpx.Client, rng: np.random.Generator) -> Tally:
    tally = Tally()
    for entry in client.get("/api/review/worklist").json()["items"]:
        study = entry["study_instance_uid"]
        tally.studies += 1
        shown = client.get(f"/api/review/studies/{study}").json()
        for item in shown["items"]:
            if item["value"] is None:
                body: dict[str, Any] = {"action": "rejected", "reason": "not-visible"}
            elif item["key_image"] is None:
                body = {"action": "accepted"}
            else:
                name = item["key_image"]
                geometry = client.get(f"/api/review/studies/{study}/images/{name}.json").json()
                moved = _moved(geometry, rng, 4.0)
                unchanged = np.abs(np.subtract(moved, geometry["points"])).max() < 1.0
                body = (
                    {"action": "accepted"}
                    if unchanged
                    else {"action": "corrected", "geometry": moved}
                )
            tally.add(_post(client, study, item, body))
    return tally


def second(client: httpx.Client, imaging: httpx.Client, rng: np.random.Generator) -> Tally:
    tally = Tally()
    for entry in client.get("/api/review/worklist", params={"purpose": "second"}).json()["items"]:
        study = entry["study_instance_uid"]
        tally.studies += 1
        for item in client.get(f"/api/review/studies/{study}").json()["items"]:
            if item["key_image"] is None:
                continue
            name = item["key_image"]
            automatic = imaging.get(f"/api/studies/{study}/review-images/{name}.json").json()
            body = {"action": "measured", "geometry": _moved(automatic, rng, 8.0)}
            tally.add(_post(client, study, item, body))
    return tally


def simulate(
    gateway: httpx.Client,
    imaging: httpx.Client,
    token: Any,
    *,
    seed: int = 2026,
    fraction: float = 0.3,
) -> str:
    """Both readers' reads through the gateway; a line per reader for the terminal."""
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {token(PRIMARY, 'gateway.read', 'reader')}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=120) as reader:
        first = primary(reader, rng)
    coordinator = {
        "Authorization": f"Bearer {token('demo', 'gateway.read gateway.assign', 'integration')}"
    }
    drawn = gateway.post(
        "/api/review/assignments",
        headers=coordinator,
        json={"reader": SECOND, "purpose": "second", "fraction": fraction, "seed": seed},
    )
    drawn.raise_for_status()
    headers = {"Authorization": f"Bearer {token(SECOND, 'gateway.read', 'reader')}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=120) as reader:
        blind = second(reader, imaging, rng)
    return (
        f"simulated reading: {PRIMARY} reviewed {first.studies} studies "
        f"({', '.join(f'{n} {a}' for a, n in sorted(first.actions.items()))}); "
        f"{SECOND} read a blinded {fraction:.0%} sample ({len(drawn.json())} studies, "
        f"{sum(blind.actions.values())} values)"
    )
