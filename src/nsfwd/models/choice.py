"""Which runtime and precision a model runs in on a CPU: measured at its first start on a
machine, then remembered.

A CPU's flags say which instructions exist, not which path is fast (bf16 on a CPU with
AVX512_BF16 ran at half fp32's speed on one machine and 1.6x on another), so when nothing is
asked for, every candidate route (:func:`candidate_routes`: torch and OpenVINO, in fp32 and,
where the CPU has native bf16, in bf16) classifies the same images, interleaved batch by batch,
beside the exact mode (torch, fp32). A route is acceptable when it agrees with the exact mode
within :data:`MAX_ABS_DP` on every probability and changes no moderate-policy decision; the
fastest acceptable one wins (:func:`pick`). The choice is kept in the data directory
(:data:`CHOICES_FILE`) per machine (CPU model, flags, cores, package versions:
:func:`~nsfwd.models.identity.machine`) and model, so later starts skip the measurement.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from filelock import FileLock, Timeout
from PIL import Image

from nsfwd.models.agreement import compare
from nsfwd.models.routes import EXACT, Route
from nsfwd.verdict import Labels

log = logging.getLogger(__name__)

MAX_ABS_DP = 3e-3
"""The agreement bound: the exact mode's bf16 agreement on the parity photographs."""
MARGIN = 0.05
"""How much faster a route must be than one before it in :func:`candidate_routes`' order to
be preferred: within it, measurement noise decides, and the earlier (simpler) route stays."""
CHOICES_FILE = "runtime-choices.json"
AGREEMENT_SIZE = (1024, 768)
"""The size the agreement photographs are fitted to before the model's own preprocessing."""


class Runnable(Protocol):
    """What the measurement needs of a classifier."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names by output index."""

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch of prepared pixels."""

    def warm_up(self, max_batch_size: int, buckets: Sequence[int] | None = None) -> None:
        """Ready the classifier for batches of up to ``max_batch_size``."""


@dataclass
class Trial:
    """One route as measured: its speed and its agreement with the exact mode."""

    route: Route
    s_per_image: float
    max_abs_dp: float
    mean_abs_dp: float
    decisions_changed: int
    accepted: bool
    why_not: str = ""

    def summary(self) -> str:
        """``openvino float32 1.21 s an image, max |dp| 3.0e-07``."""
        text = f"{self.route} {self.s_per_image:.3g} s an image, max |dp| {self.max_abs_dp:.1e}"
        return text if self.accepted else f"{text} (refused: {self.why_not})"


@dataclass
class Choice:
    """The route a model runs in on this machine, why, and what was measured."""

    route: Route
    reason: str
    trials: list[Trial] = field(default_factory=list)
    images: str = ""
    """The images the routes were measured on."""
    date: str = ""


def agreement_images(folder: Path) -> tuple[list[Path], str]:
    """The images routes are measured on, written into ``folder``, and what they are: the
    parity photographs (scikit-image's, as ``nsfwd bench``'s parity suite uses them), or,
    without scikit-image, as many of the bench's photo-like JPEGs."""
    from nsfwd.bench.images import PHOTOGRAPHS, make_jpegs, photographs

    try:
        return photographs(folder, AGREEMENT_SIZE), f"{len(PHOTOGRAPHS)} parity photographs"
    except ImportError:
        files = make_jpegs(folder, len(PHOTOGRAPHS), AGREEMENT_SIZE)
        return files, f"{len(files)} photo-like JPEGs (scikit-image is not installed)"


def prepared_images(prepare: Callable[[Image.Image], torch.Tensor]) -> tuple[torch.Tensor, str]:
    """:func:`agreement_images` through ``prepare``, as one batch, and what they are."""
    from nsfwd.intake.files import load_image_file

    with tempfile.TemporaryDirectory(prefix="nsfwd-measure-") as tmp:
        files, described = agreement_images(Path(tmp))
        return torch.stack([prepare(load_image_file(path)) for path in files]), described


def _labels(labels: tuple[str, ...], probs: torch.Tensor) -> dict[str, Labels]:
    return {str(i): dict(zip(labels, row, strict=True)) for i, row in enumerate(probs.tolist())}


def measure(
    routes: Sequence[Route],
    runnables: dict[Route, Runnable],
    pixels: torch.Tensor,
    batch_size: int,
) -> list[Trial]:
    """Run every route in ``runnables`` (the exact mode among them) over ``pixels`` in batches
    of ``batch_size``, the routes taking turns batch by batch (so a noisy neighbour slows them
    alike), and a :class:`Trial` for each of ``routes``: the median time per image, and its
    agreement with the exact mode."""
    for runnable in runnables.values():
        runnable.warm_up(batch_size, [batch_size])
    seconds: dict[Route, list[float]] = {route: [] for route in runnables}
    outputs: dict[Route, list[torch.Tensor]] = {route: [] for route in runnables}
    order = list(runnables)
    for number, start in enumerate(range(0, len(pixels), batch_size)):
        batch = pixels[start : start + batch_size]
        turn = order[number % len(order) :] + order[: number % len(order)]
        for route in turn:
            began = time.perf_counter()
            outputs[route].append(runnables[route].predict(batch))
            seconds[route].append((time.perf_counter() - began) / len(batch))
    labels = runnables[EXACT].labels
    exact = _labels(labels, torch.cat(outputs[EXACT]))
    trials = []
    for route in routes:
        probs = torch.cat(outputs[route])
        speed = statistics.median(seconds[route])
        if not torch.isfinite(probs).all():
            why = "scores that are not finite numbers"
            trials.append(Trial(route, speed, math.inf, math.inf, 0, False, why))
            continue
        trials.append(judge(route, speed, compare(exact, _labels(labels, probs))))
    return trials


def judge(route: Route, s_per_image: float, found: dict[str, Any]) -> Trial:
    """The trial of ``route``: its speed, and whether its agreement with the exact mode
    (``found``, as :func:`~nsfwd.models.agreement.compare` gives it) is within the bound."""
    changed = int(found["moderate_decisions_changed"])
    why_not = ""
    if found["max_abs_dp"] > MAX_ABS_DP:
        why_not = f"max |dp| {found['max_abs_dp']:.1e} is over {MAX_ABS_DP:.0e}"
    elif changed:
        why_not = f"{changed} moderate decision(s) changed"
    return Trial(
        route,
        s_per_image,
        float(found["max_abs_dp"]),
        float(found["mean_abs_dp"]),
        changed,
        accepted=not why_not,
        why_not=why_not,
    )


def pick(trials: Sequence[Trial]) -> Trial:
    """The fastest accepted trial, unless an accepted one before it (in ``trials``' order,
    the preferred first) is within :data:`MARGIN` of its time. ValueError when none was
    accepted."""
    accepted = [trial for trial in trials if trial.accepted]
    if not accepted:
        raise ValueError("no route agreed with the exact mode")
    fastest = min(trial.s_per_image for trial in accepted)
    return next(trial for trial in accepted if trial.s_per_image <= fastest * (1 + MARGIN))


def explain(chosen: Trial, trials: Sequence[Trial], images: str, date: str) -> str:
    """Why ``chosen``, in one line: when and on what it was measured, and every route's
    figures."""
    others = "; ".join(trial.summary() for trial in trials if trial is not chosen)
    return f"measured fastest here on {date[:10]} on {images}: {chosen.summary()}" + (
        f"; {others}" if others else ""
    )


def choose(
    routes: Sequence[Route],
    runnables: dict[Route, Runnable],
    pixels: torch.Tensor,
    images: str,
    batch_size: int,
) -> Choice:
    """Measure ``routes`` (:func:`measure`) and choose one (:func:`pick`)."""
    started = time.perf_counter()
    trials = measure(routes, runnables, pixels, batch_size)
    chosen = pick(trials)
    date = datetime.now(UTC).isoformat(timespec="seconds")
    log.info(
        "measured %d routes on %s in %.0f s: %s",
        len(trials),
        images,
        time.perf_counter() - started,
        "; ".join(trial.summary() for trial in trials),
    )
    return Choice(chosen.route, explain(chosen, trials, images, date), trials, images, date)


class Choices:
    """The choices made on this machine, kept as JSON in the data directory, by model and
    machine (see :mod:`nsfwd.models.identity`)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / CHOICES_FILE

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, routes: Sequence[Route]) -> Choice | None:
        """The choice kept under ``key``, if it is one of ``routes``."""
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            route = Route(**entry["route"])
            choice = Choice(route, str(entry["reason"]), [], str(entry["images"]), entry["date"])
        except (TypeError, KeyError):
            return None
        return choice if route in routes else None

    def put(self, key: str, choice: Choice, facts: dict[str, Any]) -> None:
        """Keep ``choice`` under ``key`` with the facts it was made on; a data directory that
        cannot be written only costs the next start a new measurement (logged)."""
        data = self._read()
        data[key] = {**asdict(choice), **facts}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            partial.write_text(json.dumps(data, indent=2) + "\n")
            partial.replace(self.path)
        except OSError as exc:
            log.warning(
                "cannot keep the measured choice in %s (%s); the next start measures again",
                self.path,
                exc,
            )

    def kept_or_measured(
        self,
        key: str,
        routes: Sequence[Route],
        measure: Callable[[], Choice],
        facts: dict[str, Any],
    ) -> Choice:
        """The choice kept under ``key`` (:meth:`get`), else ``measure()``'s, kept
        (:meth:`put`). Under a lock on the file: processes that start together on a machine
        (``serve --ray``'s replicas, ``classify --ray``'s actors) measure once, one of them,
        and all run the route it chose, where each measuring alone, slowed by the others,
        could choose differently."""
        kept = self.get(key, routes)
        if kept is not None:
            return kept
        lock = FileLock(self.path.with_name(f".{self.path.name}.lock"))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("another process is measuring the routes here; waiting for its choice")
                lock.acquire()
        except OSError as exc:  # a data directory that cannot be written: measure alone
            log.warning("cannot lock %s (%s); measuring without it", lock.lock_file, exc)
            return measure()
        try:
            kept = self.get(key, routes)
            if kept is not None:
                return kept
            choice = measure()
            self.put(key, choice, facts)
            return choice
        finally:
            lock.release()
