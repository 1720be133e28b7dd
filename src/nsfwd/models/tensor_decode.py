"""The tensor decode path: encoded JPEGs to the classifier's uint8 input with torch ops, on its
device (:class:`TensorDecoder`), giving what :meth:`Classifier.prepare` gives from Pillow.

The intake's checks run first (:func:`nsfwd.intake.read_header`); images the decoder cannot
take go the PIL way in place. docs/ARCHITECTURE.md describes the steps; tests/test_tensor_decode.py
holds the tolerances against the PIL path.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import torch
from PIL import Image

from nsfwd.intake import (
    ImageError,
    ImageHeader,
    ImageLimits,
    load_image,
    load_prepared,
    read_header,
)
from nsfwd.intake.decode import ORIENTATION_TRANSPOSE, load_thumbnails
from nsfwd.intake.views import View, Views
from nsfwd.models.checkpoint import Prepare
from nsfwd.models.classifier import Classifier
from nsfwd.models.names import DECODE_MODES

__all__ = [
    "DECODE_MODES",
    "Geometry",
    "TensorDecodeUnavailableError",
    "TensorDecoder",
    "hide_app1",
    "orient",
    "resolve_decode",
]

_log = logging.getLogger(__name__)

AUTO_ON_CPU: Final = "tensor"
"""What ``auto`` picks on the CPU: the path that measured faster there (BENCHMARKS.md, the
pipeline suite's ``--decode pil,tensor``)."""

# Pillow modes of JPEGs that decode_jpeg turns into the RGB that load_image gives.
_TENSOR_MODES: Final = frozenset({"L", "RGB"})

# JPEG markers (ITU T.81, table B.1) that hide_app1 walks.
_APP1: Final = 0xE1
_COM: Final = 0xFE
_SOS: Final = 0xDA
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows


class TensorDecodeUnavailableError(ValueError):
    """The model's preprocessing is not one the tensor decode path can reproduce."""


@dataclass(frozen=True)
class Geometry:
    """The resize and centre crop of a checkpoint's preprocessing, as tensor ops take them."""

    size: list[int]
    """torchvision's ``Resize.size``: one number for the shorter side, or (height, width)."""
    max_size: int | None
    interpolation: Any
    """A torchvision ``InterpolationMode`` (bicubic or bilinear)."""
    crop: list[int]
    """(height, width) of the centre crop."""

    @classmethod
    def of(cls, prepare: Prepare) -> Geometry:
        """Read the geometry from a timm checkpoint's ``prepare`` (``Resize``, ``CenterCrop``,
        ``PILToTensor``); raises :class:`TensorDecodeUnavailableError` saying why not."""
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        steps = list(getattr(prepare, "transforms", None) or [])
        kinds = [type(step) for step in steps]
        if kinds != [transforms.Resize, transforms.CenterCrop, transforms.PILToTensor]:
            raise TensorDecodeUnavailableError(
                "the tensor decode path reproduces a Resize + CenterCrop preprocessing (timm's "
                f"eval transform), and this model's is {_describe(prepare, steps)}; "
                "use --decode pil"
            )
        resize, crop = steps[0], steps[1]
        interpolations = (InterpolationMode.BICUBIC, InterpolationMode.BILINEAR)
        if resize.interpolation not in interpolations or not resize.antialias:
            raise TensorDecodeUnavailableError(
                f"the tensor decode path matches Pillow's antialiased bicubic and bilinear "
                f"resizing only, not {resize}; use --decode pil"
            )
        size = resize.size
        return cls(
            size=[size] if isinstance(size, int) else list(size),
            max_size=resize.max_size,
            interpolation=resize.interpolation,
            crop=list(crop.size),
        )


@functools.cache
def _decoder_missing() -> str | None:
    """Why TorchCodec's image decoders cannot be loaded here, or ``None`` when they can. Its
    Linux wheels on PyPI are CUDA builds that need torch's CUDA libraries, so a CPU-only torch
    needs TorchCodec's CPU wheel from PyTorch's own index."""
    try:
        importlib.import_module("torchcodec.decoders")
    except (ImportError, OSError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _require_decoder() -> None:
    reason = _decoder_missing()
    if reason is not None:
        raise TensorDecodeUnavailableError(
            "the tensor decode path decodes JPEGs with TorchCodec, which did not load "
            f"({reason}); install the torchcodec build made for this torch, or use --decode pil"
        )


def _describe(prepare: Prepare, steps: list[Any]) -> str:
    if steps:
        return " + ".join(type(step).__name__ for step in steps)
    return "an image processor that works on PIL images (a transformers or ONNX model)"


def resolve_decode(mode: str, classifier: Classifier) -> str:
    """``pil`` or ``tensor`` for a ``--decode`` choice.

    ``auto`` is the tensor path on CUDA, :data:`AUTO_ON_CPU` on the CPU, and ``pil`` on other
    devices (not measured), for a model whose preprocessing the tensor path cannot reproduce,
    and where TorchCodec does not load; ``tensor`` in those two cases raises
    :class:`TensorDecodeUnavailableError`.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, not {mode!r}")
    if mode == "pil":
        return "pil"
    try:
        Geometry.of(classifier.loaded.prepare)
        _require_decoder()
    except TensorDecodeUnavailableError:
        if mode == "tensor":
            raise
        return "pil"
    if mode == "tensor" or classifier.device.type == "cuda":
        return "tensor"
    return AUTO_ON_CPU if classifier.device.type == "cpu" else "pil"


def orient(pixels: torch.Tensor, orientation: int | None) -> torch.Tensor:
    """Turn CHW (or NCHW) pixels upright by their EXIF orientation, as Pillow's transposes do."""
    method = ORIENTATION_TRANSPOSE.get(orientation or 1)
    if method is None:
        return pixels
    transpose = Image.Transpose
    if method == transpose.FLIP_LEFT_RIGHT:
        return pixels.flip(-1)
    if method == transpose.FLIP_TOP_BOTTOM:
        return pixels.flip(-2)
    if method == transpose.ROTATE_90:  # counter-clockwise
        return torch.rot90(pixels, 1, (-2, -1))
    if method == transpose.ROTATE_180:
        return pixels.flip(-2, -1)
    if method == transpose.ROTATE_270:
        return torch.rot90(pixels, -1, (-2, -1))
    if method == transpose.TRANSPOSE:
        return pixels.transpose(-2, -1)
    return pixels.transpose(-2, -1).flip(-2, -1)  # TRANSVERSE


def hide_app1(data: bytes) -> bytearray | None:
    """A copy of a JPEG whose APP1 segments (EXIF, XMP) before the first scan are retagged as
    comments, which decoders skip, so that TorchCodec finds no orientation to apply and
    :func:`orient` alone turns the pixels, by Pillow's reading.

    ``None`` when the segments cannot be walked up to the scan, or an APP1 marker may follow it
    (libjpeg would read one between a progressive JPEG's scans; any ``FF E1`` there counts,
    trailing bytes included): such a JPEG takes the PIL path.
    """
    buffer = bytearray(data)
    end = len(buffer)
    pos = 2  # after SOI, which read_header has seen
    while pos < end and buffer[pos] == 0xFF:
        while pos < end and buffer[pos] == 0xFF:  # fill bytes may pad a marker
            pos += 1
        if pos >= end:
            return None
        marker = buffer[pos]
        if marker == _SOS:
            return None if buffer.find(b"\xff\xe1", pos) != -1 else buffer
        if marker in _STANDALONE:
            pos += 1
            continue
        if pos + 2 >= end:
            return None
        length = buffer[pos + 1] << 8 | buffer[pos + 2]
        if length < 2:
            return None
        if marker == _APP1:
            buffer[pos] = _COM
        pos += 1 + length
    return None


Prepared = torch.Tensor | ImageError
"""A prepared image (uint8 CHW on the classifier's device), or why there is none."""
PreparedViews = Views[torch.Tensor] | ImageError
"""An image's prepared pictures (:mod:`nsfwd.intake.views`: every judged frame, over white and black
where transparent), or why there are none."""


class TensorDecoder:
    """Encoded images to :meth:`Classifier.prepare`'s uint8 tensors, decoded on the classifier's
    device, with the PIL path as the fallback for anything else. Thread-safe.

    ``resize_in_float`` resizes in float32 and rounds back to uint8, which is what torchvision
    does on a GPU; on the CPU it has exact uint8 kernels and uses them unless told otherwise, so
    tests can check the GPU's arithmetic on a CPU.
    """

    def __init__(
        self,
        classifier: Classifier,
        limits: ImageLimits | None = None,
        *,
        resize_in_float: bool = False,
    ) -> None:
        self.classifier = classifier
        self.limits = limits or ImageLimits()
        self.geometry = Geometry.of(classifier.loaded.prepare)
        _require_decoder()
        self.resize_in_float = resize_in_float
        self._stream: torch.cuda.Stream | None = None
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]

    @property
    def device(self) -> torch.device:
        """Where the pixels are decoded and resized."""
        return self.classifier.device

    def prepare(self, encoded: Sequence[bytes]) -> list[Prepared]:
        """Prepared pixels, or the :class:`ImageError` that refuses them, for each image in
        order. On CUDA the JPEGs among them are decoded in one ``decode_jpeg`` call.

        On CUDA the work runs on a stream of the decoder's own, so a batch decodes while the
        model runs the one before on the default stream; the call returns once its pixels are
        ready, and they are marked as used by the default stream, where they are stacked and read.
        """
        return [
            result if isinstance(result, ImageError) else result.images[0]
            for result in self.prepare_views(encoded, first_only=True)
        ]

    def prepare_views(
        self, encoded: Sequence[bytes], *, first_only: bool = False
    ) -> list[PreparedViews]:
        """What :meth:`prepare` does, for every picture a viewer may see of each image (see
        :func:`nsfwd.intake.load_views`): a JPEG taken by TorchCodec is one picture; the rest
        (animations, transparency, colour profiles) go the PIL way. ``first_only``: the first
        frame over white alone, as :meth:`prepare` gives."""
        if self._stream is None:
            return self._prepare(encoded, first_only)
        with torch.cuda.stream(self._stream):
            results = self._prepare(encoded, first_only)
        consumer = torch.cuda.default_stream(self.device)
        for result in results:
            if not isinstance(result, ImageError):
                for pixels in result.images:
                    pixels.record_stream(consumer)
        self._stream.synchronize()
        return results

    def _prepare(self, encoded: Sequence[bytes], first_only: bool) -> list[PreparedViews]:
        results: list[PreparedViews | None] = [None] * len(encoded)
        headers: dict[int, ImageHeader] = {}
        buffers: list[bytearray] = []
        for index, data in enumerate(encoded):
            try:
                header = read_header(data, self.limits)
            except ImageError as exc:
                results[index] = exc
                continue
            if (
                header.format == "JPEG"
                and header.mode in _TENSOR_MODES
                and not header.colour_managed  # TorchCodec ignores ICC profiles
            ):
                buffer = hide_app1(data)
                if buffer is not None:
                    headers[index] = header
                    buffers.append(buffer)
        decoded = self._decode(buffers)
        for (index, header), pixels in zip(headers.items(), decoded, strict=True):
            if pixels is not None and tuple(pixels.shape[-2:]) == (header.height, header.width):
                image = self._geometry(orient(pixels, header.orientation))
                results[index] = self._with_thumbnails(image, encoded[index], header, first_only)
        return [
            self._pil(data, first_only) if result is None else result
            for data, result in zip(encoded, results, strict=True)
        ]

    def _with_thumbnails(
        self, image: torch.Tensor, data: bytes, header: ImageHeader, first_only: bool
    ) -> PreparedViews:
        """The decoded image's views, and its EXIF thumbnail's (through Pillow: a few
        kilobytes) unless only the first picture is wanted."""
        if first_only or not header.thumbnails:
            return Views.single(image)
        try:
            thumbnails = load_thumbnails(data, self._to_device, self.limits)
        except ImageError as exc:
            return exc
        return Views([View(image, 0, None), *thumbnails], 1 + header.thumbnails)

    def _decode(self, encoded: list[bytearray]) -> list[torch.Tensor | None]:
        """Decode JPEGs onto the device (``None`` for those the decoder refuses): on CUDA in one
        nvjpeg call, or one by one if that fails; elsewhere one by one on the CPU, which a batch
        would not speed up."""
        if not encoded:
            return []
        from torchcodec.decoders import decode_jpeg

        cuda = self.device.type == "cuda"

        def run(data: list[torch.Tensor]) -> list[torch.Tensor]:
            out = decode_jpeg(data, mode="RGB", device=self.device if cuda else "cpu")
            return cast("list[torch.Tensor]", out)  # a list in, a list out

        buffers = [torch.frombuffer(data, dtype=torch.uint8) for data in encoded]
        if cuda:
            try:
                return list(run(buffers))
            except (RuntimeError, ValueError):
                pass
        decoded: list[torch.Tensor | None] = []
        for buffer in buffers:
            try:
                decoded.append(run([buffer])[0].to(self.device))
            except (RuntimeError, ValueError) as exc:
                _log.debug("decode_jpeg refused an image, the PIL path takes it: %s", exc)
                decoded.append(None)
        return decoded

    def _geometry(self, pixels: torch.Tensor) -> torch.Tensor:
        """The checkpoint's resize and centre crop, on the tensor's device."""
        from torchvision.transforms.v2 import functional as F

        geometry = self.geometry
        if self.resize_in_float:
            resized = F.resize(
                pixels.to(torch.float32),
                geometry.size,
                interpolation=geometry.interpolation,
                max_size=geometry.max_size,
                antialias=True,
            )
            resized = resized.clamp_(0, 255).round_().to(torch.uint8)
        else:
            resized = F.resize(
                pixels,
                geometry.size,
                interpolation=geometry.interpolation,
                max_size=geometry.max_size,
                antialias=True,
            )
        cropped: torch.Tensor = F.center_crop(resized, geometry.crop)
        return cropped

    def _pil(self, data: bytes, first_only: bool) -> PreparedViews:
        """The PIL path for one image: its prepared pictures, or the error that refuses it."""
        try:
            if first_only:
                return Views.single(self._to_device(load_image(data, self.limits)))
            return load_prepared(data, self._to_device, self.limits)
        except ImageError as exc:
            return exc

    def _to_device(self, image: Image.Image) -> torch.Tensor:
        return self.classifier.prepare(image).to(self.device)
