"""The built-in ``nudenet`` detector: our own pre- and post-processing against the ``nudenet``
package's ``NudeDetector().detect`` on the test photographs (same classes, scores within 1e-3,
boxes within 1 px), OpenCV's bilinear arithmetic reproduced, and the overlap suppression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwd.intake import load_image_file
from nsfwd.models import nudenet as nudenet_model
from nsfwd.models.detector import Detector
from nsfwd.models.model import is_detector, load_model
from nsfwd.models.names import NUDENET
from nsfwd.models.nudenet import suppress_overlaps
from photos import DATA_DIR, PHOTOS, photo, with_exif_orientation

cv2 = pytest.importorskip("cv2")
nudenet = pytest.importorskip("nudenet")


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(NUDENET)


@pytest.fixture(scope="module")
def reference() -> object:
    return nudenet.NudeDetector()


def _variants(folder: Path) -> list[Path]:
    """The photographs, and shapes that exercise the padding, the upscaling and EXIF: the
    astronaut (two faces' worth of detections between the set) wide, tall, small, turned by
    EXIF, and mirrored."""
    files = [DATA_DIR / name for name in PHOTOS.values()]
    astronaut = photo("astronaut")
    made = {
        "wide.png": astronaut.resize((900, 400)),
        "tall.png": astronaut.resize((300, 700)),
        "small.png": astronaut.resize((200, 200)),  # under 320: the network's input grows
        "mirrored.png": astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "camera-crop.png": photo("camera").convert("RGB").crop((100, 60, 400, 300)),
    }
    for name, image in made.items():
        image.save(folder / name)
        files.append(folder / name)
    turned = folder / "turned.jpg"
    turned.write_bytes(with_exif_orientation(astronaut, 6))
    return [*files, turned]


def test_detections_equal_the_packages_on_photographs(
    tmp_path: Path, detector: Detector, reference: object
) -> None:
    """One batch through the engine's path (intake, prepare, stack, one session call) against
    the package reading each file itself."""
    files = _variants(tmp_path)
    ours = detector.detect([load_image_file(path) for path in files])
    found = 0
    for path, regions in zip(files, ours, strict=True):
        theirs = reference.detect(str(path))  # type: ignore[attr-defined]
        assert [r.label for r in regions] == [t["class"] for t in theirs], path.name
        for region, want in zip(regions, theirs, strict=True):
            assert region.score == pytest.approx(want["score"], abs=1e-3), path.name
            assert np.abs(np.subtract(region.box, want["box"])).max() <= 1, (path.name, region)
        found += len(regions)
    assert found >= 6  # faces in most of them: the comparison is not vacuous


def test_the_networks_input_is_the_packages(tmp_path: Path) -> None:
    """Bit for bit from a PNG; from a JPEG, as near as two decoders come."""
    from nudenet.nudenet import _read_image  # type: ignore[import-untyped]  # the reference's

    for path in _variants(tmp_path):
        want = _read_image(str(path), 320)[0][0]
        got = nudenet_model.normalize(nudenet_model.prepare(load_image_file(path))[None])[0]
        if path.suffix == ".png":
            assert np.array_equal(got.numpy(), want), path.name
        else:  # two JPEG decoders differ, and the intake applies its ICC profile, OpenCV not
            assert np.abs(got.numpy() - want).mean() * 255 < 5, path.name


def test_overlaps_are_suppressed_across_classes_best_first() -> None:
    corners = np.array(
        [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]], dtype=np.float64
    )
    scores = np.array([0.5, 0.9, 0.6, 0.5])
    # 1 beats 0 and 3 (IoU 0.81); 2 overlaps nothing; ties keep input order.
    assert suppress_overlaps(corners, scores, 0.45) == [1, 2]
    assert suppress_overlaps(corners, scores, 0.95) == [1, 2, 0]


def test_it_loads_by_name_and_refuses_torch_options() -> None:
    assert is_detector(NUDENET)
    loaded = load_model(NUDENET)
    assert isinstance(loaded, Detector) and loaded.kind == "detector"
    assert (
        loaded.labels[:2] == ("FEMALE_GENITALIA_COVERED", "FACE_FEMALE")
        and len(loaded.labels) == 18
    )
    for options, refused in (
        ({"dtype": "bfloat16"}, "--dtype"),
        ({"quantize": "int8"}, "--quantize"),
        ({"compile": "on"}, "--compile"),
    ):
        with pytest.raises(ValueError, match=refused):
            load_model(NUDENET, **options)
    with pytest.raises(ValueError, match="--device"):
        load_model(NUDENET, device="cuda")
