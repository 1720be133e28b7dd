"""`nsfwd classify --ray`: the same records as on one machine, from a Ray Data pipeline.

The stages, as Ray Data runs batch inference (docs/ARCHITECTURE.md):

1. inputs -> image names, listed in a task per input by
   :func:`~nsfwd.batch.sources.expand` (folders, URL prefixes, manifests read as a
   stream), never all in the driver;
2. :class:`Preparer`, an autoscaling pool of CPU actors: read each file's bytes (local or any
   fsspec URL), then the intake's checks and the model's preprocessing of every picture a viewer
   may see of an image (:func:`~nsfwd.batch.pipeline.prepare_image`, as ``nsfwd classify``
   judges them); with the banks of known images (the driver's snapshot, shipped once), each
   picture is hashed and a match answers for the image; a file that fails becomes its error
   message. A video becomes a row per sampled frame (its pixels and the sampled times it
   answers for), then a row that closes it (what was judged, or its error): videos spread over
   the actors as images do, their frames over the labellers;
3. :class:`Labeller`, a pool of actors each holding one classifier (``num_gpus=1`` each on a
   cluster with GPUs): the probabilities of every picture, and each image's worst picture
   under the run's policy (:func:`~nsfwd.verdict.worst`; scores that are not finite refuse the
   image, as everywhere else); a matched image skips the model and is answered as the server
   answers it (:func:`~nsfwd.verdict.certain` labels and the match);
4. the driver streams the labelled rows back and writes the records as ``nsfwd classify``
   does; a video's record once its closing row and all its frames are in, from a
   :class:`~nsfwd.timeline.Timeline` of their labels. Records are small, so the driver holds a
   batch of them at a time, the labels of the videos not yet complete, and no pixels.

Ray is the optional ``nsfwd[ray]`` extra: this module imports it only inside :meth:`RayJob.start`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nsfwd.batch import sources
from nsfwd.batch.pipeline import FileResult, VideoJob, prepare_image
from nsfwd.engine.video import decode_budget, sampling
from nsfwd.intake import ImageError, ImageLimits, UnscorableImageError
from nsfwd.intake.video import VideoReader, sniff_video
from nsfwd.intake.views import View, Views
from nsfwd.models.names import DEFAULT_CALIBRATION_IMAGES
from nsfwd.timeline import Timeline
from nsfwd.verdict import Labels, Match, Policy, certain, nonfinite_labels, worst

if TYPE_CHECKING:
    import pyarrow as pa

    from nsfwd.banks.matcher import BankSnapshot
    from nsfwd.models.classifier import Classifier
    from nsfwd.settings import Settings

log = logging.getLogger(__name__)

Pixels = NDArray[Any]
Prepared = Views[Any] | Match | str
"""An image's prepared pictures, the bank's match that answers for it, or why it cannot be
classified."""
Batch = dict[str, NDArray[Any]]
"""A batch as Ray Data hands it to a stage: a column of values per name."""

INSTALL_HINT = "pip install 'nsfwd[ray]'"
READ_THREADS = 8
"""Threads each :class:`Preparer` reads and decodes on: object storage answers each read after
tens of milliseconds, which threads overlap."""
IMAGE, FRAME, VIDEO = "image", "frame", "video"
"""What a row is: an image, one sampled frame of a video, or the row that closes a video."""
LIGHT_TASK_CPUS = 0.25
"""The CPU share booked for listing inputs and reading manifests, mostly waiting on storage, so
that they still schedule beside actors that book whole CPUs."""


class RayUnavailableError(RuntimeError):
    """Ray Data (or what it needs) is not installed, or the cluster cannot be reached."""


@dataclass(frozen=True)
class ModelOptions:
    """The classifier to load in each actor (the fields of
    :class:`~nsfwd.engine.build.ClassifierOptions`), as plain values that travel to any node."""

    model: str | None = None
    revision: str | None = None
    device: str | None = None
    dtype: str | None = None
    runtime: str | None = None
    quantize: str | None = None
    compile: str | None = None
    compile_cache_dir: Path | None = None
    calibration_dir: Path | None = None
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    data_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelOptions:
        """The loading options of ``settings``."""
        return cls(
            model=settings.model,
            revision=settings.revision,
            device=settings.device,
            dtype=settings.dtype,
            runtime=settings.runtime,
            quantize=settings.quantize,
            compile=settings.compile,
            compile_cache_dir=settings.compile_cache_dir,
            calibration_dir=settings.calibration_dir,
            calibration_images=settings.calibration_images,
            data_dir=settings.data_dir,
        )

    def on_cpu(self) -> ModelOptions:
        """The same model loaded on the CPU, in fp32 and eagerly, for its preprocessing."""
        return ModelOptions(self.model, self.revision, device="cpu")


def _load(options: ModelOptions, threads: int) -> Classifier:
    import torch

    from nsfwd.engine.build import load_classifier

    classifier = load_classifier(options)
    if classifier.device.type == "cpu":
        torch.set_num_threads(max(1, threads))  # this actor's CPU share, not the whole node
    return classifier


class Preparer:
    """Stage 2: names -> the model's input pixels for every picture a viewer may see of each
    image, or why the image cannot be classified; a video's sampled frames.

    Holds the classifier on the CPU for its preprocessing, and prepares as ``nsfwd classify
    --decode`` says on a CPU: each image through :func:`~nsfwd.batch.pipeline.prepare_image`
    (``pil``), or the batch through one :class:`~nsfwd.models.tensor_decode.TensorDecoder` call
    (``tensor``, and ``auto`` where the model allows it), so the pixels are those of a
    single-machine run on a CPU. A row's ``pixels`` stack its pictures (one for an opaque still
    or a video's frame, up to 96 for a translucent animation) and ``views`` says which picture
    each is (:func:`_views_text`). With ``banks`` holding any hash, every image takes the ``pil``
    path (its pictures are hashed as they are decoded) and a row's ``match`` is the bank's match
    that answers for it (JSON; "" when none). Rows whose path is in ``skip`` (``--resume``) are
    dropped.
    """

    def __init__(
        self,
        options: ModelOptions,
        limits: ImageLimits,
        decode: str = "auto",
        skip: Any = None,
        *,
        videos: VideoJob | None = None,
        batch_size: int = 8,
        banks: Any = None,
    ) -> None:
        import ray

        from nsfwd.models.tensor_decode import TensorDecoder, resolve_decode

        self.classifier = _load(options.on_cpu(), threads=1)
        self.limits = limits
        self.videos = videos or VideoJob()
        self.batch_size = batch_size
        largest = max(limits.max_bytes, self.videos.limits.max_bytes)
        self.read_limits = replace(limits, max_bytes=largest)  # each kind checks its own
        snapshot = ray.get(banks) if isinstance(banks, ray.ObjectRef) else banks
        self.banks: BankSnapshot | None = snapshot if snapshot and snapshot.hashes else None
        self.decoder = None
        if self.banks is None and resolve_decode(decode, self.classifier) == "tensor":
            self.decoder = TensorDecoder(self.classifier, limits)
        self.skip: frozenset[str] = frozenset(
            ray.get(skip) if isinstance(skip, ray.ObjectRef) else skip or ()
        )
        self.pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="nsfwd-read")
        self.blank = self.classifier.blank(1)[0].numpy()

    def __call__(self, batch: Batch) -> Iterator[Batch]:
        """The batch's images not skipped, as rows with ``error`` ("" when none), ``pixels`` (a
        stack of the image's pictures), ``views`` (which pictures, as JSON) and ``match``; then
        each video's frame rows, a batch at a time, and its closing row."""
        keep = [i for i, path in enumerate(batch["path"]) if str(path) not in self.skip]
        paths = [str(batch["path"][i]) for i in keep]
        reads = list(self.pool.map(self._read, [str(batch["location"][i]) for i in keep]))
        videos = {i for i, data in enumerate(reads)
                  if isinstance(data, bytes) and sniff_video(data) is not None}  # fmt: skip
        images = [i for i in range(len(paths)) if i not in videos]
        if images:
            yield self._images([paths[i] for i in images], [reads[i] for i in images])
        for i in sorted(videos):
            data = reads[i]
            assert isinstance(data, bytes)
            yield from self._video(paths[i], data)

    def _images(self, paths: list[str], reads: list[bytes | str]) -> Batch:
        if self.decoder is None:
            prepared = list(self.pool.map(self._prepare, reads))
        else:
            prepared = self._decode(reads)
        return self._rows(
            paths,
            [item if isinstance(item, str) else "" for item in prepared],
            [_stacked(item) if isinstance(item, Views) else self.blank[None] for item in prepared],
            [IMAGE] * len(paths),
            views=[_views_text(item) for item in prepared],
            matches=[_match_text(item) for item in prepared],
        )

    def _rows(
        self,
        paths: list[str],
        errors: list[str],
        stacks: list[Pixels],
        kinds: list[str],
        *,
        views: list[str] | None = None,
        matches: list[str] | None = None,
        times: list[list[float]] | None = None,
        infos: list[str] | None = None,
    ) -> Batch:
        """Rows of one schema for every kind: ``pixels`` a stack of pictures per row (ragged);
        ``views`` and ``match`` an image's, ``times`` (a frame's sampled times) and ``info`` (a
        closing row's), as JSON ("" where they do not apply)."""
        pixels = np.empty(len(stacks), dtype=object)  # ragged: pictures per image vary
        for row, stack in enumerate(stacks):
            pixels[row] = stack
        empty = [""] * len(paths)
        return {
            "path": np.array(paths, dtype=object),
            "error": np.array(errors, dtype=object),
            "pixels": pixels,
            "views": np.array(views or empty, dtype=object),
            "match": np.array(matches or empty, dtype=object),
            "kind": np.array(kinds, dtype=object),
            "times": np.array([json.dumps(t) for t in times or [[]] * len(paths)], dtype=object),
            "info": np.array(infos or empty, dtype=object),
        }

    def _video(self, path: str, data: bytes) -> Iterator[Batch]:
        """A video's sampled frames as rows, then its closing row (``info``: what was judged,
        as JSON; or its ``error``)."""
        job = self.videos
        try:
            reader = VideoReader(data, self.classifier.prepare, job.limits, sampling(job.options))
        except ImageError as exc:
            yield self._rows([path], [str(exc)], [self.blank[None]], [VIDEO])
            return
        judged = 0
        try:
            deadline = time.monotonic() + decode_budget(job.decode_timeout_s, reader.planned)
            while samples := reader.read(self.batch_size, deadline):
                judged += len(samples)
                yield self._rows(
                    [path] * len(samples),
                    [""] * len(samples),
                    [sample.image.numpy()[None] for sample in samples],
                    [FRAME] * len(samples),
                    times=[list(sample.times) for sample in samples],
                )
        except ImageError as exc:
            yield self._rows([path], [str(exc)], [self.blank[None]], [VIDEO])
            return
        finally:
            reader.close()
        info = reader.info
        closing = {"frames": info.frames, "frames_judged": judged, "duration": info.duration,
                   "incomplete": reader.incomplete}  # fmt: skip
        yield self._rows([path], [""], [self.blank[None]], [VIDEO], infos=[json.dumps(closing)])

    def _read(self, where: str) -> bytes | str:
        return sources.read(where, self.read_limits)

    def _prepare(self, data: bytes | str) -> Prepared:
        if isinstance(data, str):
            return data
        try:
            return prepare_image(data, self.classifier.prepare, self.limits, self.banks)
        except ImageError as exc:
            return str(exc)

    def _decode(self, reads: list[bytes | str]) -> list[Prepared]:
        assert self.decoder is not None
        encoded = [item for item in reads if isinstance(item, bytes)]
        decoded = iter(self.decoder.prepare_views(encoded))
        results: list[Prepared] = []
        for item in reads:
            if isinstance(item, str):
                results.append(item)
                continue
            views = next(decoded)
            results.append(str(views) if isinstance(views, ImageError) else views)
        return results


def _stacked(views: Views[Any]) -> Pixels:
    """An image's prepared pictures as one array (pictures first)."""
    return np.stack([picture.numpy() for picture in views.images])


def _views_text(item: Prepared) -> str:
    """Which picture each of a row's pixels is (frame, backdrop, colours, kind of picture) and
    the file's picture count, as JSON; "" for a row in error or matched."""
    if not isinstance(item, Views):
        return ""
    shown = [[view.frame, view.backdrop, view.colours, view.picture] for view in item.views]
    return json.dumps({"frames": item.frames, "views": shown})


def _match_text(item: Prepared) -> str:
    """A bank's match as JSON (:meth:`~nsfwd.verdict.Match.details`); "" for none."""
    return json.dumps(item.details()) if isinstance(item, Match) else ""


def _views(text: str) -> Views[None]:
    """The :class:`Views` (without pictures) :func:`_views_text` describes."""
    described = json.loads(text)
    return Views(
        [View(None, frame, backdrop, colours, picture=picture)
         for frame, backdrop, colours, picture in described["views"]],
        described["frames"],
    )  # fmt: skip


class Labeller:
    """Stage 3: prepared pictures -> each image's labels (its worst picture's under
    ``policy``) and each video frame's, by one classifier loaded once; ``batch_size`` pictures
    through the model at a time."""

    def __init__(
        self, options: ModelOptions, cpus: float, policy: Policy, batch_size: int = 8
    ) -> None:
        self.classifier = _load(options, threads=int(cpus))
        self.policy = policy
        self.batch_size = batch_size
        log.info("loaded %s on %s", self.classifier.name, self.classifier.device)

    def __call__(self, batch: Batch) -> pa.Table:
        """Rows of path, error (null when none), labels (a struct; null for an error and a
        video's closing row), judged (which picture answered, as JSON; null when only one was
        judged), match (a bank's, as JSON; null when none), and the video columns, kind, times
        and info, as they came. A frame's labels are its own, scores that are not finite
        included: the driver's timeline refuses the video for them."""
        import pyarrow as pa

        kinds = [str(kind) for kind in batch["kind"]]
        errors: list[str | None] = [str(error) or None for error in batch["error"]]
        matches: list[str | None] = [str(match) or None for match in batch["match"]]
        good = [i for i, error in enumerate(errors)
                if error is None and matches[i] is None and kinds[i] != VIDEO]  # fmt: skip
        rows = self._predict([np.asarray(batch["pixels"][i]) for i in good])
        probs = np.zeros((len(errors), len(self.classifier.labels)))
        judged: list[str | None] = [None] * len(errors)
        answer = certain(self.classifier.labels)  # a match's: the model did not run for it
        for row, match in enumerate(matches):
            if match is not None:
                probs[row] = [answer[name] for name in self.classifier.labels]
        for row, labels in zip(good, rows, strict=True):
            if kinds[row] == FRAME:
                probs[row] = [labels[0][name] for name in self.classifier.labels]
                continue
            bad = sorted({label for each in labels for label in nonfinite_labels(each)})
            if bad:  # fail closed: NaN is never flagged, and one image does not stop the run
                errors[row] = UnscorableImageError.for_labels(bad).message
                continue
            judgement = worst(_views(str(batch["views"][row])), labels, self.policy.score)
            probs[row] = [judgement.labels[name] for name in self.classifier.labels]
            judged[row] = json.dumps(judgement.details()) if judgement.chosen else None
        labels_column = pa.StructArray.from_arrays(
            [pa.array(probs[:, k]) for k in range(probs.shape[1])],
            names=list(self.classifier.labels),
            mask=pa.array(
                [errors[i] is not None or kinds[i] == VIDEO for i in range(len(errors))],
                pa.bool_(),
            ),
        )
        return pa.table(
            {
                "path": pa.array([str(path) for path in batch["path"]], pa.string()),
                "error": pa.array(errors, pa.string()),
                "labels": labels_column,
                "judged": pa.array(judged, pa.string()),
                "match": pa.array(matches, pa.string()),
                "kind": pa.array(kinds, pa.string()),
                "times": pa.array([str(times) for times in batch["times"]], pa.string()),
                "info": pa.array([str(info) for info in batch["info"]], pa.string()),
            }
        )

    def _predict(self, stacks: list[Pixels]) -> list[list[dict[str, float]]]:
        """Each row's labels, one per picture, running ``batch_size`` pictures at a time."""
        import torch

        if not stacks:
            return []
        pictures = np.concatenate(stacks)
        found: list[dict[str, float]] = []
        for start in range(0, len(pictures), self.batch_size):
            chunk = torch.from_numpy(
                np.ascontiguousarray(pictures[start : start + self.batch_size])
            )
            found += self.classifier.to_labels(self.classifier.predict(chunk))
        rows, position = [], 0
        for stack in stacks:
            rows.append(found[position : position + len(stack)])
            position += len(stack)
        return rows


@dataclass
class _VideoParts:
    """A video's rows as they arrive: its frames' sampled times and labels, and its closing
    row's error or what was judged."""

    frames: list[tuple[list[float], Labels]] = field(default_factory=list)
    closed: bool = False
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every row has arrived (rows of one video come in any order)."""
        if not self.closed:
            return False
        return self.error is not None or len(self.frames) == self.info["frames_judged"]


class _Videos:
    """The videos whose rows are arriving, judged once each is complete."""

    def __init__(self, policy: Policy, min_frames: int) -> None:
        self.policy = policy
        self.min_frames = min_frames
        self._parts: dict[str, _VideoParts] = {}
        self._done: set[str] = set()

    def add(self, row: dict[str, Any]) -> FileResult | None:
        """Take a frame or closing row; the video's result once it is complete."""
        path = str(row["path"])
        if path in self._done:  # a frame of a video that failed after it was read
            return None
        parts = self._parts.setdefault(path, _VideoParts())
        if row["kind"] == FRAME:
            parts.frames.append((json.loads(row["times"]), row["labels"]))
        else:
            parts.closed, parts.error = True, row["error"]
            parts.info = json.loads(row["info"]) if row["info"] else {}
        if not parts.complete:
            return None
        del self._parts[path]
        self._done.add(path)
        return self._judged(path, parts)

    def _judged(self, path: str, parts: _VideoParts) -> FileResult:
        if parts.error is not None:
            return FileResult(path, error=parts.error)
        timeline = Timeline(self.policy, self.min_frames)
        try:
            for times, labels in sorted(parts.frames, key=lambda frame: frame[0][0]):
                timeline.add(times, labels)
        except ValueError as exc:  # scores that are not finite: never passed as safe
            return FileResult(path, error=str(exc))
        info = parts.info
        judgement = timeline.judgement(
            frames=int(info["frames"]),
            frames_judged=int(info["frames_judged"]),
            duration=float(info["duration"]),
            incomplete=info["incomplete"],
        )
        return FileResult.of(path, judgement)


@dataclass
class Summary:
    """What a run did, for its last line."""

    classified: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        """Wall time from the start to the last record (or now)."""
        return (self.finished or time.monotonic()) - self.started

    def describe(self) -> str:
        """``N images in T s (R images/s), C classified, E errors``: the run's last line."""
        total = self.classified + self.errors
        rate = total / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{total} images in {self.seconds:.1f} s ({rate:.1f} images/s), "
            f"{self.classified} classified, {self.errors} error{'' if self.errors == 1 else 's'}"
        )


@dataclass(frozen=True)
class Plan:
    """How the actors are laid out on the cluster."""

    batch_size: int
    labellers: int
    labeller_gpus: float
    labeller_cpus: float
    preparers: tuple[int, int]
    preparer_cpus: float

    @classmethod
    def for_cluster(cls, resources: dict[str, float], batch_size: int | None) -> Plan:
        """One labeller per GPU (one GPU each) where there are GPUs, preparers on the other
        CPUs; on CPUs only, about half the CPUs classify and preparers share the rest."""
        cpus = max(1, int(resources.get("CPU", 1)))
        gpus = int(resources.get("GPU", 0))
        if gpus:
            return cls(
                batch_size=batch_size or 32,
                labellers=gpus,
                labeller_gpus=1.0,
                labeller_cpus=1.0,
                preparers=(1, max(1, cpus - gpus)),
                preparer_cpus=1.0,
            )
        half = max(1, cpus // 2)
        small = cpus < 2  # a single CPU: the stages share it
        return cls(
            batch_size=batch_size or 8,
            labellers=half,
            labeller_gpus=0.0,
            labeller_cpus=0.5 if small else 1.0,
            preparers=(1, half),
            preparer_cpus=0.25 if small else 0.5,
        )


class RayJob:
    """One ``nsfwd classify --ray`` run: connect, build the dataset, stream its records.

    Use as a context manager: leaving it disconnects from Ray (and stops the local instance
    that :meth:`start` started, if it did).
    """

    def __init__(
        self, dataset: Any, owns_ray: bool, policy: Policy | None = None, min_frames: int = 2
    ) -> None:
        """Stream ``dataset``'s records; videos are judged under ``policy`` and
        ``min_frames``, as without Ray."""
        self.summary = Summary()
        self._batches: Iterator[pa.Table] = iter(
            dataset.iter_batches(batch_format="pyarrow", batch_size=None)
        )
        self._first: pa.Table | None = None
        self._owns_ray = owns_ray
        self._videos = _Videos(policy or Policy(), min_frames)

    @classmethod
    def start(
        cls,
        inputs: Sequence[str],
        settings: Settings,
        *,
        address: str | None = None,
        batch_size: int | None = None,
        decode: str = "auto",
        skip: set[str] | frozenset[str] = frozenset(),
        progress: bool = True,
        policy: Policy | None = None,
        videos: VideoJob | None = None,
        banks: BankSnapshot | None = None,
    ) -> RayJob:
        """Connect to Ray (``address`` None: a local instance; ``auto``; ``ray://...``) and
        plan the pipeline over ``inputs``; nothing runs until records are asked for.
        ``decode``: as ``nsfwd classify --decode``; ``skip``: record paths to leave out
        (``--resume``); ``policy`` picks each image's worst picture and judges videos (default:
        moderate); ``videos``: how videos are sampled (their ``stop_on_flag`` does not apply:
        frames are decoded ahead of the model); ``banks``: the banks of known images each image
        is checked against first."""
        videos = videos or VideoJob()
        ray = _import_ray()
        owns_ray = not ray.is_initialized()
        if owns_ray:
            _connect(ray, address)
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = progress
            plan = Plan.for_cluster(ray.cluster_resources(), batch_size)
            dataset = _dataset(
                ray,
                list(inputs),
                settings,
                plan,
                decode=decode,
                skip=skip,
                policy=policy or Policy(),
                videos=videos,
                banks=banks,
            )
            return cls(dataset, owns_ray, policy, videos.options.min_frames)
        except BaseException:
            if owns_ray:
                ray.shutdown()
            raise

    def labels(self) -> tuple[str, ...]:
        """The model's label names, from the first batch of results (which this waits for);
        StopIteration when there are no results at all."""
        if self._first is None:
            self._first = next(self._nonempty())
        names: list[str] = [item.name for item in self._first.schema.field("labels").type]
        return tuple(names)

    def results(self) -> Iterator[FileResult]:
        """One result per image, in the order they finish."""
        if self._first is not None:
            yield from self._results(self._first)
            self._first = None
        for table in self._nonempty():
            yield from self._results(table)
        self.summary.finished = time.monotonic()

    def _nonempty(self) -> Iterator[pa.Table]:
        return (table for table in self._batches if table.num_rows)

    def _results(self, table: pa.Table) -> Iterator[FileResult]:
        for row in table.to_pylist():
            if row["kind"] == IMAGE:
                result: FileResult | None = _image_result(row)
            else:
                result = self._videos.add(row)
            if result is None:
                continue
            if result.error is not None:
                self.summary.errors += 1
            else:
                self.summary.classified += 1
            yield result

    def __enter__(self) -> RayJob:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()


def _image_result(row: dict[str, Any]) -> FileResult:
    """An image row's record: its labels, which picture answered and a bank's match, or its
    error."""
    if row["error"] is not None:
        return FileResult(row["path"], error=row["error"])
    judged = None if row["judged"] is None else json.loads(row["judged"])
    match = None if row["match"] is None else json.loads(row["match"])
    return FileResult(row["path"], labels=row["labels"], judged=judged, match=match)


def _import_ray() -> Any:
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailableError(
            f"--ray needs Ray Data, which is not installed ({exc.name} is missing): {INSTALL_HINT}"
        ) from exc
    return ray


def _connect(ray: Any, address: str | None) -> None:
    """``ray.init`` for an address as ``--ray`` takes it, keeping stdout for the records."""
    try:
        if address is None or address == "local":
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        elif address.startswith("ray://"):
            ray.init(address=address)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise RayUnavailableError(f"cannot reach the Ray cluster at {address}: {exc}") from exc


def _dataset(
    ray: Any,
    inputs: list[str],
    settings: Settings,
    plan: Plan,
    *,
    decode: str,
    skip: set[str] | frozenset[str],
    policy: Policy,
    videos: VideoJob,
    banks: BankSnapshot | None = None,
) -> Any:
    """The pipeline, lazily: names -> prepared pictures (or a bank's match; a video's: a row
    per sampled frame) -> labels."""
    options = ModelOptions.from_settings(settings.portable())  # actors run in other folders
    names = _names(ray, inputs)
    prepared = names.map_batches(
        Preparer,
        fn_constructor_kwargs={
            "options": options,
            "limits": settings.image_limits,
            "decode": decode,
            "skip": ray.put(frozenset(skip)) if skip else None,
            "videos": videos,
            "batch_size": plan.batch_size,
            "banks": ray.put(banks) if banks is not None and banks.hashes else None,
        },
        batch_size=plan.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=plan.preparers[0], max_size=plan.preparers[1]),
        num_cpus=plan.preparer_cpus,
    )
    return prepared.map_batches(
        Labeller,
        fn_constructor_kwargs={
            "options": options,
            "cpus": plan.labeller_cpus,
            "policy": policy,
            "batch_size": plan.batch_size,
        },
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.labellers),
        num_cpus=plan.labeller_cpus,
        num_gpus=plan.labeller_gpus or None,
    )


LISTING_ROWS = 4096
"""Rows a listing task hands on at a time: a huge folder or manifest streams in such batches."""


def _names(ray: Any, inputs: list[str]) -> Any:
    """A dataset of (path, location) rows, each image the inputs name, listed in a task per
    input (manifests checked here first, so a wrong one is refused before anything runs)."""
    cwd = str(Path.cwd())
    for name in inputs:
        if sources.is_manifest(name):
            sources.manifest_column(name, cwd)
    items = ray.data.from_items(
        [{"input": name} for name in inputs], override_num_blocks=len(inputs)
    )
    return items.map_batches(_list, batch_size=1, fn_kwargs={"cwd": cwd}, num_cpus=LIGHT_TASK_CPUS)


def _list(batch: Batch, cwd: str) -> Iterator[Batch]:
    """The rows each input of ``batch`` names, :data:`LISTING_ROWS` at a time."""
    rows: list[tuple[str, str]] = []
    for name in batch["input"]:
        for row in sources.expand(str(name), cwd):
            rows.append(row)
            if len(rows) == LISTING_ROWS:
                yield _rows(rows)
                rows = []
    if rows:
        yield _rows(rows)


def _rows(rows: list[tuple[str, str]]) -> Batch:
    return {
        "path": np.array([path for path, _ in rows], dtype=object),
        "location": np.array([where for _, where in rows], dtype=object),
    }
