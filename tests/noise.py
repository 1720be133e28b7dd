"""Random-pixel test images: distinct for each seed, the same bytes on every call."""

from __future__ import annotations

import io

import torch
from PIL import Image


def noise_png(seed: int, size: tuple[int, int] = (160, 140)) -> bytes:
    """A PNG of ``size`` whose RGB pixels are random, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "PNG")
    return buffer.getvalue()
