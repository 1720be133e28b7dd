"""Judging what viewers see (issue 11, item 1): every frame of an animation (and an APNG's
default image), transparency over white and over black, colours by the ICC profile or gAMA, and
a pixel budget for animations. Each attack is built here with Pillow.

Random-weight models say nothing about content, so the end-to-end tests use
:class:`RedlessClassifier`, whose "high" probability is the mean lack of red in the picture:
white and red pictures are "safe", black and blue ones "explicit". What is tested is the
mechanism: which pictures reach the model, and that the worst one answers on every surface.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

import hostile_pngs
from eachlabs_calls import create, created_id, eachlabs_server, poll
from nsfwd.api import create_app
from nsfwd.batch.pipeline import classify_files
from nsfwd.engine.batcher import Engine
from nsfwd.intake import (
    CorruptImageError,
    ImageDimensionsError,
    ImageLimits,
    load_image,
    load_views,
    read_header,
)
from nsfwd.intake.frames import MAX_JUDGED_FRAMES
from nsfwd.intake.views import View, Views
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from nsfwd.verdict import Policy, worst
from prodia_jobs import MODEL, TOKEN
from servers import serve_app
from test_worker import image_host

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SIZE = (160, 160)
WHITE, BLACK, RED, BLUE = (255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 0, 255)


# --- the hostile files --------------------------------------------------------------------


def solid(colour: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    return Image.new(mode, SIZE, colour)


def animated(fmt: str, colours: list[tuple[int, int, int]], durations: list[int]) -> bytes:
    """An animation of solid frames; WebP lossless, so the colours survive exactly."""
    frames = [solid(colour) for colour in colours]
    out = BytesIO()
    options: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=durations, **options)
    return out.getvalue()


def webp_benign_for_one_ms() -> bytes:
    """The attack: a white first frame shown for 1 ms, then black frames for seconds."""
    return animated("WEBP", [WHITE, BLACK, (10, 10, 10)], [1, 5000, 5000])


def apng_with_benign_default_image() -> bytes:
    """An APNG whose default image (shown by programs that do not animate) is white, while the
    animation, all that browsers show, is black."""
    out = BytesIO()
    solid(WHITE).save(
        out,
        "PNG",
        save_all=True,
        append_images=[solid(BLACK), solid((20, 20, 20))],
        default_image=True,
        duration=[1000, 1000],
    )
    return out.getvalue()


def alpha_carries_the_picture() -> bytes:
    """White RGB whose alpha is the picture's brightness: blank on a white page, the picture
    (here a black square on white) on a dark one."""
    picture = np.full((*SIZE, 4), 255, dtype=np.uint8)
    picture[..., 3] = 0
    picture[20:140, 20:140, 3] = 255  # only the square is opaque, and it is white
    out = BytesIO()
    Image.fromarray(picture).save(out, "PNG")
    return out.getvalue()


def swapped_red_blue_profile() -> bytes:
    """Pillow's sRGB profile with its red and blue colorants swapped: red pixels show blue."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack_from(">I", data, 128)[0]
    entries = {bytes(data[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    data[red + 4 : red + 12], data[blue + 4 : blue + 12] = (
        data[blue + 4 : blue + 12],
        data[red + 4 : red + 12],
    )
    data[84:100] = bytes(16)  # the profile id no longer matches; zero means "not computed"
    return bytes(data)


def red_tagged_blue(fmt: str = "PNG") -> bytes:
    """Stored red, displayed blue by its embedded profile."""
    out = BytesIO()
    solid(RED).save(out, fmt, icc_profile=swapped_red_blue_profile())
    return out.getvalue()


def over_budget_apng(frames: int = 1000) -> bytes:
    """A 2048x2048 APNG that says it has ``frames`` frames (two are stored: refused from the
    header, nothing need follow)."""
    big = Image.new("RGB", (2048, 2048), WHITE)
    out = BytesIO()
    big.save(out, "PNG", save_all=True, append_images=[Image.new("RGB", (2048, 2048), BLACK)])
    data = bytearray(out.getvalue())
    at = data.index(b"acTL")
    struct.pack_into(">I", data, at + 4, frames)
    struct.pack_into(">I", data, at + 12, zlib.crc32(data[at : at + 12]))
    return bytes(data)


# --- a classifier whose verdict follows the pixels ----------------------------------------


class RedlessClassifier(Classifier):
    """The tiny model's plumbing, but P(high) is the picture's mean lack of red (0..1) and
    P(neutral) the rest; it records the size of every batch it runs."""

    batches: list[int]

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(batch.shape[0]))
        redless = 1.0 - batch[:, 0].float().mean(dim=(1, 2)) / 255.0
        probs = torch.zeros((batch.shape[0], len(self.labels)))
        probs[:, self.labels.index("high")] = redless
        probs[:, self.labels.index("neutral")] = 1.0 - redless
        return probs


@pytest.fixture
def redless(classifier: Classifier) -> RedlessClassifier:
    judge = RedlessClassifier(classifier.loaded, classifier.device, classifier.dtype, "redless")
    judge.batches = []
    return judge


# --- the intake: which pictures are judged ------------------------------------------------


def colours(views: Views[Image.Image]) -> list[tuple[int, str | None, Any]]:
    return [(view.frame, view.backdrop, view.image.getpixel((80, 80))) for view in views.views]


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_every_frame_of_an_animation_is_judged(fmt: str) -> None:
    data = animated(fmt, [WHITE, BLACK, RED], [1, 5000, 5000])
    views = load_views(data)
    assert views.frames == 3 and views.frames_judged == 3
    assert colours(views) == [(0, None, WHITE), (1, None, BLACK), (2, None, RED)]
    assert read_header(data).frames == 3
    assert load_image(data).getpixel((80, 80)) == WHITE  # load_image: still the first frame


def test_an_apngs_default_image_is_judged_with_its_frames() -> None:
    views = load_views(apng_with_benign_default_image())
    assert views.frames == 3
    assert colours(views) == [(0, None, WHITE), (1, None, BLACK), (2, None, (20, 20, 20))]


def test_long_animations_are_sampled_first_frame_included() -> None:
    shades = [(i * 6, i * 6, i * 6) for i in range(40)]
    views = load_views(animated("PNG", shades, [10] * 40))
    assert views.frames == 40 and views.frames_judged == MAX_JUDGED_FRAMES
    judged = [view.frame for view in views.views]
    assert judged[0] == 0 and judged == sorted(judged)


def test_transparency_is_judged_over_white_and_over_black() -> None:
    data = alpha_carries_the_picture()
    views = load_views(data)
    assert [(v.backdrop, v.image.getpixel((5, 5)), v.image.getpixel((80, 80))) for v in
            views.views] == [("white", WHITE, WHITE), ("black", BLACK, WHITE)]  # fmt: skip
    assert load_image(data).getpixel((5, 5)) == WHITE  # load_image: over white, as before
    opaque = BytesIO()
    solid((1, 2, 3, 255), "RGBA").save(opaque, "PNG")
    assert colours(load_views(opaque.getvalue())) == [(0, None, (1, 2, 3))]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_colours_follow_the_embedded_icc_profile(fmt: str) -> None:
    data = red_tagged_blue(fmt)
    converted, stored = load_views(data).views  # viewers that ignore profiles: stored
    pixel = converted.image.getpixel((80, 80))
    assert isinstance(pixel, tuple) and pixel[0] < 40 and pixel[2] > 200, pixel
    assert (converted.colours, stored.colours) == ("converted", "stored")
    stored_pixel = stored.image.getpixel((80, 80))
    assert isinstance(stored_pixel, tuple) and stored_pixel[0] > 200, stored_pixel
    assert read_header(data).colour_managed  # so the tensor path leaves it to Pillow


def test_an_srgb_profile_changes_nothing() -> None:
    out = BytesIO()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    solid((12, 150, 230)).save(out, "JPEG", icc_profile=srgb, quality=100)
    assert not read_header(out.getvalue()).colour_managed


def test_png_gamma_is_applied_unless_srgb() -> None:
    info = PngInfo()
    info.add(b"gAMA", struct.pack(">I", 100000))  # linear samples: mid-gray shows light
    out = BytesIO()
    solid((128, 128, 128)).save(out, "PNG", pnginfo=info)
    converted, stored = load_views(out.getvalue()).views
    assert converted.image.getpixel((0, 0)) == (188, 188, 188)
    assert stored.image.getpixel((0, 0)) == (128, 128, 128)
    info = PngInfo()
    info.add(b"gAMA", struct.pack(">I", 45455))  # sRGB's own: nothing changes
    out = BytesIO()
    solid((128, 128, 128)).save(out, "PNG", pnginfo=info)
    assert load_views(out.getvalue()).views[0].image.getpixel((0, 0)) == (128, 128, 128)


def test_unusable_and_oversized_profiles_are_refused() -> None:
    out = BytesIO()
    solid(RED).save(out, "PNG", icc_profile=b"not a profile" * 40)
    with pytest.raises(CorruptImageError, match=r"ICC profile cannot be read"):
        load_views(out.getvalue())
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = BytesIO()
    solid(RED).save(out, "JPEG", icc_profile=srgb + bytes(1_100_000))
    with pytest.raises(CorruptImageError, match=r"ICC profile is 1,100,.* the limit is 1,048,576"):
        read_header(out.getvalue())


def test_an_animation_over_the_pixel_budget_is_refused_before_decoding() -> None:
    data = over_budget_apng()
    started = time.perf_counter()
    with pytest.raises(ImageDimensionsError) as refused:
        load_views(data)
    assert time.perf_counter() - started < 1
    message = str(refused.value)
    assert "2048x2048 px x 1,000 frames = 4,194,304,000 pixels" in message
    assert "limit of 134,217,728 pixels (width x height x frames)" in message
    with pytest.raises(ImageDimensionsError):
        load_image(data)  # the first frame alone is not judged either
    small = animated("WEBP", [WHITE, BLACK, RED], [1, 1, 1])
    with pytest.raises(ImageDimensionsError, match="3 frames"):
        load_views(small, ImageLimits(max_animation_pixels=2 * SIZE[0] * SIZE[1]))


def test_the_worst_picture_under_the_policy_answers() -> None:
    views = Views([View(None, 0, None), View(None, 1, "white"), View(None, 1, "black")], 5)
    labels = [
        {"neutral": 0.1, "low": 0.0, "medium": 0.9, "high": 0.0},
        {"neutral": 0.3, "low": 0.0, "medium": 0.0, "high": 0.7},
        {"neutral": 0.3, "low": 0.0, "medium": 0.0, "high": 0.7},
    ]
    moderate = worst(views, labels, Policy("moderate").score)
    assert (moderate.frame, moderate.backdrop, moderate.labels) == (0, None, labels[0])
    strict = worst(views, labels, Policy("strict").score)  # the earliest of a tie
    assert (strict.frame, strict.backdrop) == (1, "white")
    assert strict.details() == {
        "frame": 1, "frames": 5, "frames_judged": 2, "backdrop": "white", "colours": None
    }  # fmt: skip


# --- end to end: the engine, Prodia, Eachlabs, nsfwd classify -----------------------------


def test_an_images_pictures_go_through_the_model_as_one_batch(
    redless: RedlessClassifier,
) -> None:
    async def main() -> None:
        engine = Engine(redless, max_batch_size=4, limits=ImageLimits())
        await engine.start()
        try:
            redless.batches.clear()
            judged = await engine.judge(webp_benign_for_one_ms())
            assert redless.batches == [3]
            assert (judged.frame, judged.frames, judged.frames_judged) == (1, 3, 3)
            assert judged.labels["high"] == pytest.approx(1.0)
            redless.batches.clear()
            shades = [(i * 6, 255, 255) for i in range(10)]  # frame 0 is the least red
            many = await engine.judge(animated("PNG", shades, [10] * 10))
            assert redless.batches == [4, 4, 2] and many.frame == 0 and many.frames_judged == 10
        finally:
            await engine.stop()

    asyncio.run(main())


@contextmanager
def prodia_server(classifier: Classifier) -> Iterator[str]:
    settings = Settings(model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN])
    engine = Engine(classifier, max_batch_size=8, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as url:
        yield url


def post_job(
    url: str, image: bytes, version: str = "v1", accept: str = "application/json"
) -> requests.Response:
    job = json.dumps({"type": f"inference.vit.img2label.{version}", "config": {"model": MODEL}})
    return requests.post(
        f"{url}/v2/job",
        headers={**AUTH, "Accept": accept},
        files=[
            ("job", ("job.json", job.encode(), "application/json")),
            ("input", ("upload.bin", image, "application/octet-stream")),
        ],
        timeout=60,
    )


def test_prodia_jobs_answer_with_the_worst_picture_and_say_which(
    redless: RedlessClassifier,
) -> None:
    with prodia_server(redless) as url:
        cases = {
            "webp": (webp_benign_for_one_ms(), 1, 3, None),
            "apng": (apng_with_benign_default_image(), 1, 3, None),
            "alpha": (alpha_carries_the_picture(), 0, 1, "black"),
        }
        for name, (image, frame, frames, backdrop) in cases.items():
            res = post_job(url, image)
            assert res.status_code == 200, (name, res.text)
            config = res.json()["config"]
            assert config["labels"]["high"] > 0.25, (name, config)
            assert config["judged"] == {
                "frame": frame, "frames": frames, "frames_judged": frames, "backdrop": backdrop,
                "colours": None,
            }, name  # fmt: skip
        tagged = post_job(url, red_tagged_blue()).json()["config"]
        assert tagged["labels"]["high"] > 0.9 and tagged["judged"]["colours"] == "converted"
        refused = post_job(url, over_budget_apng())
        assert refused.status_code == 400
        assert "limit of 134,217,728 pixels (width x height x frames)" in refused.json()["error"]


def test_openai_moderations_flag_the_worst_picture(redless: RedlessClassifier) -> None:
    from openai import OpenAI

    with prodia_server(redless) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
        for image in (webp_benign_for_one_ms(), apng_with_benign_default_image()):
            uri = "data:image/png;base64," + base64.b64encode(image).decode()
            picture: Any = {"type": "image_url", "image_url": {"url": uri}}
            response = client.moderations.create(model=MODEL, input=[picture])
            (result,) = response.results
            assert result.flagged and result.category_scores.sexual > 0.5


def test_eachlabs_predictions_flag_the_worst_frame_and_say_which(
    redless: RedlessClassifier, tmp_path: Path
) -> None:
    octets = "application/octet-stream"
    files = {
        "/anim.webp": (webp_benign_for_one_ms(), octets),
        "/alpha.png": (alpha_carries_the_picture(), octets),
    }
    with image_host(files) as images, eachlabs_server(redless, tmp_path) as (url, _):
        anim = poll(url, created_id(create(url, f"{images}/anim.webp")))
        assert anim["status"] == "success" and anim["output"] == "nsfw", anim
        assert anim["judged"] == {
            "frame": 1,
            "frames": 3,
            "frames_judged": 3,
            "backdrop": None,
            "colours": None,
        }
        alpha = poll(url, created_id(create(url, f"{images}/alpha.png")))
        assert alpha["judged"]["backdrop"] == "black", alpha


def test_nsfwd_classify_records_the_worst_picture(
    redless: RedlessClassifier, tmp_path: Path
) -> None:
    (tmp_path / "anim.webp").write_bytes(webp_benign_for_one_ms())
    (tmp_path / "default.png").write_bytes(apng_with_benign_default_image())
    (tmp_path / "tagged.png").write_bytes(red_tagged_blue())
    paths = [tmp_path / name for name in ("anim.webp", "default.png", "tagged.png")]
    anim, default, tagged = classify_files(redless, paths, batch_size=2, decode="pil")
    assert anim.labels is not None and anim.labels["high"] == pytest.approx(1.0)
    assert anim.judged == {
        "frame": 1,
        "frames": 3,
        "frames_judged": 3,
        "backdrop": None,
        "colours": None,
    }
    assert default.judged is not None and default.judged["frame"] == 1
    assert tagged.labels is not None and tagged.labels["high"] > 0.9
    assert tagged.judged is not None and tagged.judged["colours"] == "converted"
    assert max(redless.batches) <= 2  # pictures run batch_size at a time


def test_nsfwd_classify_command_writes_judged(
    timm_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nsfwd.cli import main

    (tmp_path / "anim.webp").write_bytes(webp_benign_for_one_ms())
    solid(RED).save(tmp_path / "still.png")
    code = main(["classify", "--model", str(timm_checkpoint), "--dtype", "float32",
                 "--decode", "pil", str(tmp_path)])  # fmt: skip
    assert code == 0
    records = {
        Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert records["anim.webp"]["judged"]["frames_judged"] == 3
    assert "judged" not in records["still.png"]


def test_the_tensor_path_leaves_animations_and_colour_profiles_to_pillow(
    classifier: Classifier,
) -> None:
    from nsfwd.models.tensor_decode import TensorDecoder

    decoder = TensorDecoder(classifier)
    anim, tagged = decoder.prepare_views([webp_benign_for_one_ms(), red_tagged_blue("JPEG")])
    assert isinstance(anim, Views) and [view.frame for view in anim.views] == [0, 1, 2]
    assert isinstance(tagged, Views) and [v.colours for v in tagged.views] == [
        "converted",
        "stored",
    ]
    red, _, blue = tagged.images[0].float().mean(dim=(1, 2)).tolist()
    assert red < 40 and blue > 200  # converted by its profile, as Pillow does
    [first] = decoder.prepare([webp_benign_for_one_ms()])  # prepare: the first frame, as before
    assert isinstance(first, torch.Tensor) and int(first.float().mean()) == 255


def test_which_picture_answered_crosses_the_inference_socket(
    redless: RedlessClassifier, tmp_path: Path
) -> None:
    """``serve --http-workers``: the worker's RemoteEngine gets the judgement, and sends the
    request's policy, which decides the worst picture."""
    from nsfwd.engine.remote import InferenceServer, RemoteEngine

    async def main() -> None:
        engine = Engine(redless, max_batch_size=8, limits=ImageLimits())
        await engine.start()
        server = InferenceServer(engine, tmp_path / "inference.sock")
        await server.start()
        client = RemoteEngine(
            server.path, model_name="redless", max_batch_size=8, max_queue=8, limits=engine.limits
        )
        await client.start()
        try:
            judged = await client.judge(webp_benign_for_one_ms(), Policy("strict", 0.3))
            assert judged.details() == {
                "frame": 1, "frames": 3, "frames_judged": 3, "backdrop": None, "colours": None
            }  # fmt: skip
            assert judged.labels["high"] == pytest.approx(1.0)
            alpha = await client.judge(alpha_carries_the_picture())
            assert alpha.backdrop == "black"
            with pytest.raises(ImageDimensionsError, match="width x height x frames"):
                await client.judge(over_budget_apng())
        finally:
            await client.stop()
            await server.stop()
            await engine.stop()

    asyncio.run(main())


# --- issue 21: what a browser shows (checked against Chromium in test_browser_views.py) -----


def centres(data: bytes) -> list[tuple[str | None, str | None, Any]]:
    """Each view's colours, backdrop and centre pixel."""
    return [
        (v.colours, v.backdrop, v.image.getpixel(hostile_pngs.CENTRE))
        for v in load_views(data).views
    ]


def test_a_16_bit_colour_key_is_compared_at_16_bits() -> None:
    """The field is the key (transparent); the square differs from it in the low byte only.
    Reduced to 8 bits first, every pixel matched the key and the picture was blank."""
    data = hostile_pngs.low_byte_picture()
    over_white, over_black = load_views(data).views
    assert over_white.image.getpixel(hostile_pngs.CORNER) == WHITE  # the key: transparent
    assert over_white.image.getpixel(hostile_pngs.CENTRE) == (32, 32, 32)  # the square shows
    assert over_black.image.getpixel(hostile_pngs.CORNER) == BLACK


WASH = hostile_pngs.whitening_profile()
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
DARK, LIGHT, WASHED = (40, 40, 40), (235, 235, 235), (254, 254, 254)
COLOUR_CASES = {
    # what Chromium shows first, then the stored colours where those differ
    "cICP wins over iCCP": (
        hostile_pngs.tagged(hostile_pngs.CICP_SRGB, hostile_pngs.iccp(WASH)),
        [(None, DARK)],
    ),
    "a grey profile on a colour image is ignored": (
        hostile_pngs.tagged(hostile_pngs.iccp(hostile_pngs.gray_profile())),
        [(None, DARK)],
    ),
    "the first iCCP counts, not the last": (
        hostile_pngs.tagged(hostile_pngs.iccp(SRGB), hostile_pngs.iccp(WASH)),
        [(None, DARK)],
    ),
    "an iCCP after the image data is ignored": (
        hostile_pngs.png(hostile_pngs.dark_square_rgb(), after=[hostile_pngs.iccp(WASH)]),
        [(None, DARK)],
    ),
    "sRGB and iCCP: both judged": (
        hostile_pngs.tagged(hostile_pngs.SRGB_CHUNK, hostile_pngs.iccp(WASH)),
        [("converted", WASHED), ("stored", DARK)],
    ),
}


@pytest.mark.parametrize("case", sorted(COLOUR_CASES))
def test_colour_tags_are_followed_as_chromium_follows_them(case: str) -> None:
    data, expected = COLOUR_CASES[case]
    assert [(colours, centre) for colours, _, centre in centres(data)] == expected


def test_gama_with_chrm_primaries_is_applied() -> None:
    """cHRM with red and blue swapped, beside a gAMA: Chromium shows red as blue; nsfwd ignored
    cHRM and judged red."""
    red = hostile_pngs.square((235, 235, 235), (200, 30, 30))
    data = hostile_pngs.png(
        red,
        before=[hostile_pngs.gama(1 / 2.2), hostile_pngs.chrm(hostile_pngs.SWAPPED_PRIMARIES)],
    )
    (converted, _, shown), (stored, _, kept) = centres(data)
    assert (converted, stored) == ("converted", "stored")
    assert shown[2] > 190 and shown[0] < 40, shown  # blue, as Chromium shows it
    assert kept == (200, 30, 30)
    alone = hostile_pngs.png(red, before=[hostile_pngs.chrm(hostile_pngs.SWAPPED_PRIMARIES)])
    assert centres(alone) == [(None, None, (200, 30, 30))]  # cHRM alone: ignored


TOP = (80, 20)
ORIENTATION_CASES = {
    # file, whether browsers turn it (the dark half then shows at the bottom)
    "PNG eXIf before the image data": (hostile_pngs.png_exif(before_idat=True), True),
    "PNG eXIf after the image data": (hostile_pngs.png_exif(before_idat=False), False),
    "JPEG EXIF": (hostile_pngs.jpeg_exif_orientation(), True),
    "JPEG XMP only": (hostile_pngs.jpeg_xmp_orientation(), False),
    "PNG XMP only": (hostile_pngs.png_xmp_orientation(), False),
    "WebP EXIF": (hostile_pngs.webp_exif_orientation(), False),
}


@pytest.mark.parametrize("case", sorted(ORIENTATION_CASES))
def test_orientation_is_followed_as_browsers_follow_it(case: str) -> None:
    data, turned = ORIENTATION_CASES[case]
    [view] = load_views(data).views
    top = view.image.getpixel(TOP)
    assert isinstance(top, tuple)
    assert (top[0] > 128) == turned, top
    assert read_header(data).orientation == (3 if turned else 1)


def test_partial_transparency_is_judged_over_mid_grey_as_well() -> None:
    """Over white the square shows 191, over black 64: only a grey page shows it in mid-tones."""
    assert [(backdrop, centre) for _, backdrop, centre in
            centres(hostile_pngs.midtones_over_grey_only())] == [
        ("white", (191, 191, 191)), ("black", (64, 64, 64)), ("grey", (128, 128, 128))
    ]  # fmt: skip
    binary = [backdrop for _, backdrop, _ in centres(alpha_carries_the_picture())]
    assert binary == ["white", "black"]  # all-or-nothing alpha: no blend to see


class MidtoneClassifier(RedlessClassifier):
    """P(high) is the share of pixels in mid-tones (100..156): a judge for which a blend is
    not the average of its parts, as for a real model."""

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(batch.shape[0]))
        grey = batch.float().mean(dim=1)
        midtones = ((grey >= 100) & (grey <= 156)).float().mean(dim=(1, 2))
        probs = torch.zeros((batch.shape[0], len(self.labels)))
        probs[:, self.labels.index("high")] = midtones
        probs[:, self.labels.index("neutral")] = 1.0 - midtones
        return probs


def test_the_grey_page_can_answer(classifier: Classifier) -> None:
    judge = MidtoneClassifier(classifier.loaded, classifier.device, classifier.dtype, "midtone")
    judge.batches = []

    async def main() -> None:
        engine = Engine(judge, max_batch_size=4, limits=ImageLimits())
        await engine.start()
        try:
            judged = await engine.judge(hostile_pngs.midtones_over_grey_only())
        finally:
            await engine.stop()
        assert judged.backdrop == "grey" and judged.labels["high"] > 0.2  # white, black: ~0

    asyncio.run(main())
