"""Which frames of an animation are judged (issue 21): by time on screen and distinctness, a
rule over per-frame facts (:mod:`nsfwd.intake.frames`), fed by every animated format's decoder
(APNG, WebP, GIF, AVIF).

The attack: past 32 frames, frames were spread evenly by index, so with 33 frames one (frame
16) was never judged; given a delay of 65 s, it is what viewers see.
"""

from __future__ import annotations

import itertools
import math
from io import BytesIO
from typing import Any

import pytest
from PIL import Image

from nsfwd.intake import load_views
from nsfwd.intake.frames import (
    MAX_JUDGED_FRAMES,
    FrameFacts,
    frame_budget,
    frames_to_judge,
    shown_ms,
    signature,
    spread_order,
)

SIZE = (128, 128)


def shade(level: int) -> bytes:
    """The signature of a flat grey frame."""
    return signature(Image.new("RGB", SIZE, (level, level, level)))


def facts(durations: list[float], signatures: list[bytes] | None = None) -> list[FrameFacts]:
    """Frames with these durations, each distinct unless ``signatures`` says otherwise."""
    signatures = signatures or [shade((i * 7) % 256) for i in range(len(durations))]
    return [FrameFacts(i, d, s) for i, (d, s) in enumerate(zip(durations, signatures, strict=True))]


def animation(fmt: str, colours: list[tuple[int, int, int]], durations: list[int],
              **options: Any) -> bytes:  # fmt: skip
    frames = [Image.new("RGB", SIZE, colour) for colour in colours]
    out = BytesIO()
    extra: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=durations,
                   **extra, **options)  # fmt: skip
    return out.getvalue()


def test_every_frame_within_the_budget_is_judged() -> None:
    assert frames_to_judge(facts([100.0] * 32)) == list(range(32))
    assert frames_to_judge(facts([100.0] * 5), budget=2) == [0, 4]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "AVIF"])
def test_a_frame_shown_for_a_minute_is_judged_wherever_it_is(fmt: str) -> None:
    """The attack, built as a real file: 33 light frames of 100 ms, and frame 16 black for
    65 s. The old rule spread 32 frames by index and never judged frame 16. One rule serves
    every animated format (AVIF's own decoder has a budget of 16 frames, its pictures' modes
    being known only once decoded)."""
    colours = [(200 + i, 200 + i, 200 + i) for i in range(33)]
    colours[16] = (0, 0, 0)
    durations = [100] * 33
    durations[16] = 65_000
    options: dict[str, Any] = {"quality": 90} if fmt == "AVIF" else {}
    views = load_views(animation(fmt, colours, durations, **options))
    judged = {v.frame: v.image.getpixel((64, 64)) for v in views.views if v.picture == "frame"}
    assert views.frames_judged == (16 if fmt == "AVIF" else MAX_JUDGED_FRAMES)  # AVIF: and
    assert len(judged) < 33  # its still image
    black = judged[16]
    assert isinstance(black, tuple) and max(black) < 16, black


def test_distinct_frames_come_before_near_duplicates() -> None:
    """64 frames, equally long: 60 are the same picture (with a level of noise), 4 are
    different. Whatever their positions, the 4 are judged."""
    odd = {5: 250, 23: 10, 41: 180, 59: 40}
    signatures = [shade(odd.get(i, 100 + i % 2)) for i in range(64)]
    chosen = frames_to_judge(facts([100.0] * 64, signatures), budget=8)
    assert set(odd) <= set(chosen) and len(chosen) == 8 and chosen[0] == 0


def test_the_longest_frames_come_first_then_the_rest_spread() -> None:
    durations = [40.0] * 100
    durations[77] = 3_000.0
    durations[3] = 2_000.0
    signatures = [shade(100)] * 100  # all alike: nothing is distinct
    chosen = frames_to_judge(facts(durations, signatures), budget=10)
    assert {0, 3, 77} <= set(chosen) and len(chosen) == 10
    gaps = [b - a for a, b in itertools.pairwise(chosen)]
    assert max(gaps) <= 25  # the rest spread over the whole animation


def test_the_last_frame_of_an_animation_that_stops_stays_on_screen() -> None:
    """An APNG that plays once ends on its last frame, which then stays: it is judged first,
    whatever its own delay."""
    durations = [100.0] * 40
    durations[-1] = math.inf
    chosen = frames_to_judge(facts(durations, [shade(100)] * 40), budget=2)
    assert chosen == [0, 39]
    colours = [(250 + i % 2,) * 3 for i in range(39)] + [(0, 0, 0)]  # (Pillow merges equal frames)
    once = load_views(animation("PNG", colours, [50] * 40, loop=1))
    assert once.views[-1].frame == 39 and once.views[-1].image.getpixel((0, 0)) == (0, 0, 0)


def test_browsers_show_a_frame_of_at_most_10_ms_for_100_ms() -> None:
    assert shown_ms(1) == shown_ms(0) == shown_ms(10) == 100.0
    assert shown_ms(11) == 11.0 and math.isinf(shown_ms(math.inf))


def test_spread_order_spreads_every_prefix() -> None:
    order = spread_order(9)
    assert sorted(order) == list(range(9))
    assert order[:3] == [0, 8, 4] and set(order[3:5]) == {2, 6}
    assert spread_order(0) == [] and spread_order(1) == [0]


def test_the_frame_budget_shrinks_as_each_frame_makes_more_pictures() -> None:
    assert frame_budget(1) == frame_budget(2) == frame_budget(3) == MAX_JUDGED_FRAMES
    assert frame_budget(6) == 16
    translucent = [(255, 255, 255, 128 + (i % 2)) for i in range(40)]
    frames = [Image.new("RGBA", SIZE, colour) for colour in translucent]
    out = BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:], duration=50)
    views = load_views(out.getvalue())
    assert views.frames_judged == MAX_JUDGED_FRAMES
    assert {view.backdrop for view in views.views} == {"white", "black", "grey"}
    assert len(views.views) == 3 * MAX_JUDGED_FRAMES
