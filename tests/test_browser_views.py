"""What Chromium shows of each hostile file is among the pictures nsfwd judges (issue 21).

Each file of :mod:`hostile_pngs` is shown in headless Chromium on a white, a black and a
mid-grey page; the screenshot of the image must match (within a few levels) one of the views
``load_views`` gives for that page. Where the issue's account of browsers differs from what
Chromium does, the test pins what Chromium does (``test_chromium_applies_iccp_over_srgb``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms

import hostile_pngs as h
from browser import CHROMIUM_ARGS, chromium_driver
from nsfwd.intake import load_views

WAIT_MS = 30_000
PAGES = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
MIME = {b"\x89P": "image/png", b"\xff\xd8": "image/jpeg", b"RI": "image/webp"}
WASH = h.whitening_profile()
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
RED = h.square((235, 235, 235), (200, 30, 30))
FILES = {
    "16-bit colour key": h.low_byte_picture(),
    "iCCP that whitens": h.tagged(h.iccp(WASH)),
    "sRGB, then an iCCP that whitens": h.tagged(h.SRGB_CHUNK, h.iccp(WASH)),
    "an iCCP that whitens, then sRGB": h.tagged(h.iccp(WASH), h.SRGB_CHUNK),
    "cICP and an iCCP that whitens": h.tagged(h.CICP_SRGB, h.iccp(WASH)),
    "two iCCP, the whitening first": h.tagged(h.iccp(WASH), h.iccp(SRGB)),
    "two iCCP, the whitening last": h.tagged(h.iccp(SRGB), h.iccp(WASH)),
    "a grey iCCP on colour": h.tagged(h.iccp(h.gray_profile())),
    "an iCCP after the image data": h.png(h.dark_square_rgb(), after=[h.iccp(WASH)]),
    "gAMA 1.0": h.tagged(h.gama(1.0)),
    "sRGB and gAMA 1.0": h.tagged(h.SRGB_CHUNK, h.gama(1.0)),
    "gAMA and swapped cHRM": h.png(RED, before=[h.gama(1 / 2.2), h.chrm(h.SWAPPED_PRIMARIES)]),
    "swapped cHRM alone": h.png(RED, before=[h.chrm(h.SWAPPED_PRIMARIES)]),
    "PNG eXIf before IDAT": h.png_exif(before_idat=True),
    "PNG eXIf after IDAT": h.png_exif(before_idat=False),
    "JPEG EXIF": h.jpeg_exif_orientation(),
    "JPEG XMP": h.jpeg_xmp_orientation(),
    "PNG XMP": h.png_xmp_orientation(),
    "WebP EXIF": h.webp_exif_orientation(),
    "mid-tones over grey only": h.midtones_over_grey_only(),
}

ALL_OR_NOTHING = {"16-bit colour key"}
"""Files whose alpha is 0 or 255 everywhere: nsfwd judges them over white and black only."""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with chromium_driver()() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, timeout=WAIT_MS
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def shown(page: Any, data: bytes, colour: tuple[int, int, int]) -> np.ndarray:
    """The pixels Chromium shows of ``data`` on a page of ``colour``."""
    url = f"data:{MIME[data[:2]]};base64,{base64.b64encode(data).decode()}"
    background = "rgb({},{},{})".format(*colour)
    page.set_content(
        f'<html><body style="margin:0;background:{background}"><img id="i" src="{url}">'
        "</body></html>"
    )
    page.wait_for_function("document.getElementById('i').complete", timeout=WAIT_MS)
    shot = page.locator("#i").screenshot(timeout=WAIT_MS)
    return np.asarray(Image.open(BytesIO(shot)).convert("RGB"), dtype=np.int16)


def difference(a: np.ndarray, b: Image.Image) -> float:
    other = np.asarray(b.convert("RGB"), dtype=np.int16)
    return float("inf") if a.shape != other.shape else float(np.abs(a - other).mean())


@pytest.mark.parametrize("name", sorted(FILES))
def test_what_chromium_shows_is_judged(page: Any, name: str) -> None:
    data = FILES[name]
    views = load_views(data).views
    for backdrop, colour in PAGES.items():
        seen = shown(page, data, colour)
        candidates = [v for v in views if v.backdrop in (backdrop, None)]
        if backdrop == "grey" and name in ALL_OR_NOTHING:
            continue  # no blend: a grey page shows nothing the white and black ones do not
        best = min(difference(seen, v.image) for v in candidates)
        assert best < 3.0, (name, backdrop, best, [(v.backdrop, v.colours) for v in views])


def test_chromium_applies_iccp_over_srgb(page: Any) -> None:
    """The issue says Chromium prefers sRGB to iCCP (and libpng drops both). Chromium 156
    applies the iCCP whichever comes first; nsfwd judges both (converted and stored)."""
    for data in (
        FILES["sRGB, then an iCCP that whitens"],
        FILES["an iCCP that whitens, then sRGB"],
    ):
        seen = shown(page, data, PAGES["white"])
        assert tuple(seen[h.CENTRE[1], h.CENTRE[0]]) == (254, 254, 254)  # washed out


def test_chromium_turns_no_webp_by_its_exif(page: Any) -> None:
    seen = shown(page, FILES["WebP EXIF"], PAGES["white"])
    assert seen[20, 80, 0] < 128  # the dark half stays on top: not turned
