"""The ``--report`` page: one self-contained HTML file (no script, no network).

Per policy: the chosen threshold and the line that applies it, the precision/recall and ROC
curves and the score histograms (SVG from :mod:`nsfwd.calibrate.plots`, as data URIs), the
confusion matrices at the chosen threshold and at 0.5, and the images nearest the threshold on
each side as thumbnails (JPEG data URIs): the ones a person should look at before trusting it.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from nsfwd.calibrate import plots
from nsfwd.calibrate.calibration import (
    Calibration,
    PolicyCalibration,
    ScoredImage,
    relative,
    usage,
)
from nsfwd.calibrate.metrics import Counts
from nsfwd.intake import ImageError, ImageLimits, load_image_file
from nsfwd.verdict import DEFAULT_THRESHOLD

_Thumbnailer = Callable[[str], "str | None"]
"""A file's path -> its thumbnail as base64 JPEG, or None."""

NEAREST = 8
"""Thumbnails shown on each side of the threshold."""
THUMBNAIL_SIDE = 160

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
code { background: #f3f3f3; padding: 0.1em 0.3em; border-radius: 3px; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f6f6f6; } td.name, th.name { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; }
.plots img { width: 330px; height: auto; border: 1px solid #eee; }
.matrices { display: flex; flex-wrap: wrap; gap: 2em; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.6em; }
.thumbs figure { margin: 0; width: 166px; font-size: 12px; overflow-wrap: anywhere; }
.thumbs img { border: 3px solid #2ca02c; display: block; }
.thumbs figure.wrong img { border-color: #d62728; }
.wrong figcaption b { color: #d62728; }
.problem { color: #a00; }
"""


def write_report(calibration: Calibration, path: Path, limits: ImageLimits | None = None) -> None:
    """Write the HTML report for ``calibration`` to ``path``."""
    path.write_text(render(calibration, limits or ImageLimits()), encoding="utf-8")


def render(calibration: Calibration, limits: ImageLimits) -> str:
    """The whole HTML page."""
    thumbnail: _Thumbnailer = functools.cache(lambda file: _thumbnail(file, limits))
    sections = [
        _policy_section(calibration, result, thumbnail) for result in calibration.policies.values()
    ]
    title = f"nsfwd calibrate: {calibration.labelled.root}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            _overview(calibration),
            *sections,
            "</body></html>",
        ]
    )


def _overview(calibration: Calibration) -> str:
    labelled = calibration.labelled
    counts = ", ".join(f"{n} {name}" for name, n in labelled.counts().items())
    target = "none (best F1)" if calibration.target is None else calibration.target.describe()
    rows = "".join(_summary_row(result) for result in calibration.policies.values())
    parts = [
        f"<p>Model <code>{_e(calibration.model)}</code>; {len(calibration.images)} images "
        f"classified ({_e(labelled.layout)} layout: {_e(counts)}). Target: {_e(target)}. "
        "An image is flagged when its policy's score is above the threshold.</p>",
        '<table><tr><th class="name">policy</th><th>threshold</th><th>precision</th>'
        "<th>recall</th><th>false positives</th><th>false negatives</th><th>ROC AUC</th>"
        f'<th class="name">chosen by</th></tr>{rows}</table>',
    ]
    if calibration.skipped:
        items = "".join(
            f"<li><code>{_e(relative(r.path, labelled.root))}</code>: {_e(r.error or '')}</li>"
            for r in calibration.skipped
        )
        parts.append(f"<p>Skipped, could not be classified:</p><ul>{items}</ul>")
    return "\n".join(parts)


def _summary_row(result: PolicyCalibration) -> str:
    if result.choice is None:
        return (
            f'<tr><td class="name">{result.policy}</td>'
            f'<td class="name problem" colspan="7">{_e(result.problem or "")}</td></tr>'
        )
    point, counts = result.choice.point, result.choice.point.counts
    auc = "" if result.auc is None else f"{result.auc:.3f}"
    return (
        f'<tr><td class="name">{result.policy}</td><td>{point.threshold!r}</td>'
        f"<td>{_rate(counts.precision)}</td><td>{_rate(counts.recall)}</td>"
        f"<td>{counts.fp}</td><td>{counts.fn}</td><td>{auc}</td>"
        f'<td class="name">{_e(result.choice.how)}</td></tr>'
    )


def _policy_section(
    calibration: Calibration, result: PolicyCalibration, thumbnail: _Thumbnailer
) -> str:
    head = f'<section id="{result.policy}"><h2>{result.policy}</h2>'
    unsafe = " or ".join(result.unsafe_classes)
    truth = f"<p>Truth: an image {result.policy} should flag is one of {_e(unsafe)}.</p>"
    if result.choice is None:
        problem = f'<p class="problem">Cannot be calibrated: {_e(result.problem or "")}</p>'
        return f"{head}{truth}{problem}</section>"
    threshold = result.choice.point.threshold
    plot_images = [
        ("precision-recall", plots.pr_curve(result)),
        ("roc", plots.roc(result)),
        ("histogram", plots.histogram(result, calibration.images)),
    ]
    figures = "".join(
        f'<figure><img class="plot" data-plot="{kind}" alt="{result.policy} {kind} plot" '
        f'src="data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()}"></figure>'
        for kind, svg in plot_images
    )
    flagged, passed = _nearest(result, calibration.images, threshold)
    root = calibration.labelled.root
    return "\n".join(
        [
            head,
            truth,
            f"<p>Chosen threshold <b>{threshold!r}</b> ({_e(result.choice.how)}). Use it like "
            f"this: <code>{_e(usage(result.policy, threshold))}</code></p>",
            f'<div class="plots">{figures}</div>',
            '<div class="matrices">',
            _matrix(f"at the chosen {threshold!r}", result.choice.point.counts, unsafe),
            _matrix(f"at the default {DEFAULT_THRESHOLD}", result.at_default, unsafe),
            "</div>",
            f"<h3>Flagged, nearest the threshold ({len(flagged)})</h3>",
            _thumbs(flagged, result, root, thumbnail),
            f"<h3>Passed, nearest the threshold ({len(passed)})</h3>",
            _thumbs(passed, result, root, thumbnail),
            "</section>",
        ]
    )


def _matrix(caption: str, counts: Counts, unsafe: str) -> str:
    return (
        f"<table><caption>{_e(caption)}: precision {_rate(counts.precision)}, recall "
        f'{_rate(counts.recall)}</caption><tr><th class="name">truth \\ verdict</th>'
        f"<th>flagged</th><th>passed</th></tr>"
        f'<tr><th class="name">{_e(unsafe)}</th><td>{counts.tp}</td><td>{counts.fn}</td></tr>'
        f'<tr><th class="name">others</th><td>{counts.fp}</td><td>{counts.tn}</td></tr></table>'
    )


def _nearest(
    result: PolicyCalibration, images: Sequence[ScoredImage], threshold: float
) -> tuple[list[tuple[ScoredImage, bool]], list[tuple[ScoredImage, bool]]]:
    """The flagged images with the lowest scores and the passed ones with the highest, each
    with its truth."""
    pairs = list(zip(images, result.truth, strict=True))

    def score(pair: tuple[ScoredImage, bool]) -> float:
        return pair[0].scores[result.policy]

    flagged = sorted((p for p in pairs if score(p) > threshold), key=score)[:NEAREST]
    passed = sorted((p for p in pairs if score(p) <= threshold), key=score, reverse=True)
    return flagged, passed[:NEAREST]


def _thumbs(
    items: Sequence[tuple[ScoredImage, bool]],
    result: PolicyCalibration,
    root: Path,
    thumbnail: _Thumbnailer,
) -> str:
    if not items:
        return "<p>none</p>"
    figures = []
    for image, unsafe in items:
        flagged = image.scores[result.policy] > (result.threshold or 0.0)
        wrong = flagged != unsafe
        verdict = ("false positive" if flagged else "false negative") if wrong else "correct"
        name = relative(image.path, root)
        data = thumbnail(image.path)
        picture = (
            f'<img alt="{_e(name)}" src="data:image/jpeg;base64,{data}">'
            if data
            else "<p>(cannot be read now)</p>"
        )
        figures.append(
            f'<figure class="{"wrong" if wrong else "right"}">{picture}<figcaption>'
            f"{_e(name)}<br>score {image.scores[result.policy]:.4f} &middot; {_e(image.label)}"
            f" &middot; <b>{verdict}</b></figcaption></figure>"
        )
    return f'<div class="thumbs">{"".join(figures)}</div>'


def _thumbnail(path: str, limits: ImageLimits) -> str | None:
    """A small JPEG of the image as the model saw it (upright, RGB), base64; None when it
    cannot be read any more."""
    try:
        image = load_image_file(path, limits)
    except (ImageError, OSError):
        return None
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
