"""The dashboard's text colours reach WCAG AA contrast (4.5:1) on its backgrounds, and
statuses never rely on colour alone."""

from __future__ import annotations

import re
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "services" / "gateway" / "templates"


def _luminance(colour: str) -> float:
    colour = colour.lstrip("#")
    if len(colour) == 3:
        colour = "".join(c * 2 for c in colour)
    channels = [int(colour[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_every_text_colour_reaches_aa_on_the_page_and_table_backgrounds() -> None:
    css = (TEMPLATES / "base.html").read_text()
    colours = set(re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{3,6})", css))
    assert colours
    header = re.search(r"header \{[^}]*background:\s*(#[0-9a-fA-F]{3,6})", css)
    assert header is not None
    for colour in colours:
        if colour.lower() in ("#fff", "#ffffff"):
            assert contrast(colour, header.group(1)) >= 4.5
            continue
        for background in ("#fafafa", "#ffffff", "#e8eef3"):
            assert contrast(colour, background) >= 4.5, (colour, background)


def test_follow_up_statuses_have_a_symbol_besides_their_colour() -> None:
    grid = (TEMPLATES / "followup.html").read_text()
    for status in ("present", "overdue", "missing", "due", "upcoming", "unknown"):
        assert f'"{status}": "' in grid
