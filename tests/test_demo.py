"""The demo page at ``/`` in a real headless Chromium, against a real server on loopback.

What the page shows must be what the public API answers for the same image: the labels to one
decimal, each policy's score exactly as :class:`nsfwd.verdict.Policy` computes it, and verdicts
that follow the threshold slider. The tiny random EVA-02 serves (its labels mean nothing; the
arithmetic does).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from browser import CHROMIUM_ARGS, chromium_driver
from nsfwd.api import create_app
from nsfwd.demo.page import CONTENT_SECURITY_POLICY
from nsfwd.engine.batcher import Engine
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from nsfwd.verdict import POLICIES, SAFE_LABELS, Policy
from photos import DATA_DIR, PHOTOS
from prodia_jobs import job_files
from servers import serve_app

TOKEN = "demo-key-8a2c4e6f0"
WAIT_MS = 30_000
"""The longest any one step in the browser may take (a page load, a classification)."""


@contextmanager
def nsfwd_server(
    classifier: Classifier, *, second: tuple[str, Classifier] | None = None, **settings: Any
) -> Iterator[str]:
    """A real nsfwd server on loopback over ``classifier``; yields its URL.

    ``second``: a second model, served under its name beside the first.
    """
    config = Settings(model=str(classifier.name), **settings)

    def engine(model: Classifier) -> Engine:
        return Engine(model, max_batch_size=4, max_queue=16, limits=config.image_limits)

    first = engine(classifier)
    if second is None:
        app = create_app(first, config)
    else:
        name, model = second
        app = create_app(
            {config.served_model_name or first.model_name: first, name: engine(model)}, config
        )
    with serve_app(app) as url:
        yield url


@dataclass
class Browser:
    """A page in headless Chromium, and everything it reported that a clean page does not."""

    page: Any
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@contextmanager
def chromium(expected_refusals: Callable[[str, str], bool]) -> Iterator[Browser]:
    """A fresh headless Chromium page whose console errors and page errors are collected,
    except the "Failed to load resource" errors ``expected_refusals(text, url)`` expects (a
    401 before the token is given)."""
    sync_playwright = chromium_driver()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, timeout=WAIT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            seen = Browser(page)

            def console(message: Any) -> None:
                if message.type == "error" and not expected_refusals(
                    message.text, message.location.get("url", "")
                ):
                    seen.problems.append(f"console error: {message.text} ({message.location})")

            page.on("console", console)
            page.on("pageerror", lambda error: seen.problems.append(f"page error: {error}"))
            page.on("request", lambda request: seen.requests.append(request.url))
            yield seen
        finally:
            browser.close()


def refused(status: int, *routes: str) -> Callable[[str, str], bool]:
    """Expect Chromium's console error for an answer ``status`` from one of ``routes``."""

    def expected(text: str, url: str) -> bool:
        return f"status of {status} " in text and url.endswith(routes)

    return expected


def no_refusal(text: str, url: str) -> bool:
    """Expect no refused request at all."""
    return False


def photo_file(folder: Path, name: str, suffix: str) -> Path:
    """One of scikit-image's photographs, written as ``folder/name.suffix``."""
    path = folder / f"{name}.{suffix}"
    with Image.open(DATA_DIR / PHOTOS[name]) as image:
        image.convert("RGB").save(path)
    return path


def api_labels(url: str, model: str, image: Path, token: str | None = None) -> dict[str, float]:
    """The labels ``POST /v2/job`` answers for ``image``, called directly."""
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = requests.post(
        f"{url}/v2/job",
        files=job_files(image=image.read_bytes(), filename=image.name, model=model),
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    labels: dict[str, float] = response.json()["config"]["labels"]
    return labels


def shown_labels(page: Any) -> list[tuple[str, str]]:
    """The bars on the page: (label, its percentage as shown), top to bottom."""
    rows: list[list[str]] = page.eval_on_selector_all(
        "#labels li",
        "items => items.map(i => [i.dataset.label, i.querySelector('.pct').textContent])",
    )
    return [(label, percent) for label, percent in rows]


def shown_verdicts(page: Any) -> dict[str, tuple[float, bool]]:
    """Each policy's row: (its score, exactly, and whether it shows as flagged)."""
    rows: list[list[str]] = page.eval_on_selector_all(
        "#verdicts tbody tr",
        "rows => rows.map(r => [r.dataset.policy, r.dataset.score, r.dataset.flagged])",
    )
    return {policy: (float(score), flagged == "true") for policy, score, flagged in rows}


def shown_threshold(page: Any) -> float:
    """The slider's threshold, and a check that the page prints it."""
    value = float(page.input_value("#threshold"))
    assert page.text_content("#threshold-value") == f"{value:.2f}"
    return value


def assert_verdicts_follow(page: Any, labels: dict[str, float]) -> dict[str, float]:
    """Every policy row scores as Policy.score does and is flagged iff its score is above the
    slider's threshold; returns the scores."""
    threshold = shown_threshold(page)
    verdicts = shown_verdicts(page)
    assert set(verdicts) == set(POLICIES)
    scores = {}
    for policy, (score, flagged) in verdicts.items():
        assert score == Policy(policy).score(labels), policy  # type: ignore[arg-type]
        assert flagged == (score > threshold), (policy, score, threshold)
        scores[policy] = score
    return scores


def wait_for_result(page: Any, image: str) -> None:
    """Wait until the page shows the labels of the image named ``image``."""
    page.wait_for_selector(f'#result[data-image="{image}"]:not([hidden])', timeout=WAIT_MS)
    assert page.is_hidden("#error"), page.text_content("#error")


def percentages(labels: dict[str, float]) -> list[tuple[str, str]]:
    """``labels`` as the page must show them: in the API's order, percent to one decimal."""
    return [(label, f"{probability * 100:.1f}%") for label, probability in labels.items()]


def drop_file(page: Any, path: Path, content_type: str) -> None:
    """Drop ``path`` on the page's drop zone, as dragging a file from the desktop does."""
    page.evaluate(
        """([name, data, type]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            const zone = document.getElementById("drop");
            for (const event of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(event, {
                    dataTransfer: transfer, bubbles: true, cancelable: true,
                }));
            }
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode(), content_type],
    )


def set_threshold(page: Any, hundredths: int) -> None:
    """Move the slider to ``hundredths``/100 with the keyboard, as a user would."""
    slider = page.locator("#threshold")
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(hundredths):
        page.keyboard.press("ArrowRight")
    assert page.input_value("#threshold") == f"{hundredths / 100:g}"


@pytest.fixture
def open_server(classifier: Classifier) -> Iterator[str]:
    """A server that needs no token."""
    with nsfwd_server(classifier) as url:
        yield url


@pytest.fixture
def keyed_server(classifier: Classifier) -> Iterator[str]:
    """A server that needs the token ``demo-key``."""
    with nsfwd_server(classifier, api_keys=[TOKEN]) as url:
        yield url


def test_the_page_shows_what_the_api_answers_and_judges_as_the_server_does(
    open_server: str, tmp_path: Path
) -> None:
    chelsea = photo_file(tmp_path, "chelsea", "jpg")
    coffee = photo_file(tmp_path, "coffee", "png")
    with chromium(no_refusal) as browser:
        page = browser.page
        page.goto(f"{open_server}/", wait_until="load")
        page.wait_for_selector("#file:enabled")
        assert page.is_hidden("#token-form")
        model = page.input_value("#model")
        config = requests.get(f"{open_server}/demo/config.json", timeout=10).json()
        assert model == config["model"]  # no model list yet: the server's default
        assert page.input_value("#threshold") == "0.5"  # the server's default

        page.set_input_files("#file", str(chelsea))
        wait_for_result(page, chelsea.name)
        labels = api_labels(open_server, model, chelsea)
        assert shown_labels(page) == percentages(labels)
        assert "ms on the server" in (page.text_content("#timing") or "")
        scores = assert_verdicts_follow(page, labels)

        # The slider's ends: everything above 0 is flagged, nothing above 1.
        set_threshold(page, 0)
        assert all(flagged for _, flagged in shown_verdicts(page).values())
        assert_verdicts_follow(page, labels)
        set_threshold(page, 100)
        assert not any(flagged for _, flagged in shown_verdicts(page).values())
        # Either side of a policy's score, its verdict flips.
        policy, score = next((name, value) for name, value in scores.items() if 0.02 < value < 0.98)
        below = math.floor(score * 100)
        set_threshold(page, below)
        assert shown_verdicts(page)[policy][1] is True
        assert_verdicts_follow(page, labels)
        set_threshold(page, below + 1)
        assert shown_verdicts(page)[policy][1] is False
        assert_verdicts_follow(page, labels)

        # A dropped image takes the same way, and keeps the threshold the user set.
        drop_file(page, coffee, "image/png")
        wait_for_result(page, coffee.name)
        assert page.evaluate("document.getElementById('file').files[0].name") == coffee.name
        dropped = api_labels(open_server, model, coffee)
        assert shown_labels(page) == percentages(dropped)
        assert_verdicts_follow(page, dropped)

        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
    print(f"demo page screenshot: {shot}")
    assert browser.problems == []
    assert all(url.startswith((open_server, "blob:", "data:")) for url in browser.requests), (
        browser.requests
    )
    assert shot.stat().st_size > 10_000


def test_the_model_is_chosen_from_the_served_ones(
    classifier: Classifier, vit_classifier: Classifier, tmp_path: Path
) -> None:
    astronaut = photo_file(tmp_path, "astronaut", "jpg")
    served = "Freepik/nsfw_image_detector"
    with (
        nsfwd_server(classifier, served_model_name=served, second=("vit", vit_classifier)) as url,
        chromium(no_refusal) as browser,
    ):
        listed = [
            model["id"] for model in requests.get(f"{url}/v1/models", timeout=10).json()["data"]
        ]
        page = browser.page
        page.goto(f"{url}/", wait_until="load")
        page.wait_for_selector("#file:enabled")
        options = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
        assert options == listed and len(listed) == 2
        assert page.input_value("#model") == served  # the server's default model first
        page.set_input_files("#file", str(astronaut))
        page.wait_for_selector(f'#result[data-model="{served}"]:not([hidden])')
        other = next(name for name in listed if name != served)
        page.select_option("#model", other)  # the same image again, on the other model
        page.wait_for_selector(f'#result[data-model="{other}"]')  # the model the job echoes
        assert page.is_hidden("#error"), page.text_content("#error")
        assert shown_labels(page) == percentages(api_labels(url, other, astronaut))
        assert other in (page.text_content("#timing") or "")
    assert browser.problems == []


def test_the_page_asks_for_a_token_keeps_it_and_works_once_given(
    keyed_server: str, tmp_path: Path
) -> None:
    rocket = photo_file(tmp_path, "rocket", "jpg")
    before_token = refused(401, "/demo/config.json")
    with chromium(before_token) as browser:
        page = browser.page
        page.goto(f"{keyed_server}/", wait_until="load")
        page.wait_for_selector("#token-form:not([hidden])")
        assert page.get_attribute("#token", "type") == "password"
        assert page.is_disabled("#file")

        page.fill("#token", "not-the-key")
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#token-error:not([hidden])")
        assert "refused" in (page.text_content("#token-error") or "")

        page.fill("#token", TOKEN)
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#file:enabled")
        assert page.is_hidden("#token-form")
        assert page.evaluate("localStorage.getItem('nsfwd.token')") == TOKEN

        page.set_input_files("#file", str(rocket))
        wait_for_result(page, rocket.name)
        model = page.input_value("#model")
        labels = api_labels(keyed_server, model, rocket, token=TOKEN)
        assert shown_labels(page) == percentages(labels)
        assert_verdicts_follow(page, labels)
        shot = tmp_path / "demo-with-token.png"
        page.screenshot(path=str(shot), full_page=True)

        # The token outlives a reload; forgetting it asks again.
        page.reload(wait_until="load")
        page.wait_for_selector("#file:enabled")
        assert page.is_hidden("#token-form")
        page.click("#forget-token")
        page.wait_for_selector("#token-form:not([hidden])")
        assert page.evaluate("localStorage.getItem('nsfwd.token')") is None
    print(f"demo page screenshot (with a token): {shot}")
    assert browser.problems == []


def test_the_policies_score_as_the_servers_for_every_kind_of_model(open_server: str) -> None:
    cases = [
        {"neutral": 0.1, "low": 0.2, "medium": 0.3, "high": 0.4},
        {"neutral": 0.9995, "high": 0.00038, "low": 0.000087, "medium": 0.000056},
        {"sfw": 0.3, "nsfw": 0.7},  # open-nsfw
        {"normal": 0.123456789, "nsfw": 0.876543211},  # Falconsai's ViT
        {"NSFW": 0.6, "SFW": 0.4},
        {"porn": 0.5, "drawing": 0.5},  # neither buckets nor a safe label
    ]
    with chromium(no_refusal) as browser:
        page = browser.page
        page.goto(f"{open_server}/", wait_until="load")
        scored = page.evaluate(
            """async ([cases, policies, safe]) => {
                const { scorePolicy } = await import("/demo/static/policies.js");
                return cases.map((probs) => Object.fromEntries(Object.entries(policies).map(
                    ([name, buckets]) => [name, scorePolicy(buckets, safe, probs)?.score ?? null],
                )));
            }""",
            [cases, {name: list(labels) for name, labels in POLICIES.items()}, list(SAFE_LABELS)],
        )
    assert browser.problems == []
    for probs, scores in zip(cases, scored, strict=True):
        for name in POLICIES:
            policy = Policy(name)  # type: ignore[arg-type]
            try:
                expected: float | None = policy.score(probs)
            except ValueError:
                expected = None
            assert scores[name] == expected, (probs, name)


def test_the_page_is_public_and_its_config_is_not(keyed_server: str) -> None:
    page = requests.get(f"{keyed_server}/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    for name, media in [("app.js", "javascript"), ("policies.js", "javascript"),
                        ("style.css", "text/css")]:  # fmt: skip
        asset = requests.get(f"{keyed_server}/demo/static/{name}", timeout=10)
        assert asset.status_code == 200 and media in asset.headers["content-type"], name
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere

    config = requests.get(f"{keyed_server}/demo/config.json", timeout=10)
    assert config.status_code == 401
    assert config.headers["www-authenticate"] == "Bearer"
    config = requests.get(
        f"{keyed_server}/demo/config.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert config.status_code == 200
    doc = config.json()
    assert doc["policy"] == "moderate" and doc["threshold"] == 0.5
    assert doc["policies"] == {name: list(labels) for name, labels in POLICIES.items()}
    assert doc["safe_labels"] == list(SAFE_LABELS)


def test_the_page_starts_from_the_servers_policy_and_threshold(classifier: Classifier) -> None:
    with nsfwd_server(classifier, policy="strict", threshold=0.25) as url:
        doc = requests.get(f"{url}/demo/config.json", timeout=10).json()
    assert (doc["policy"], doc["threshold"]) == ("strict", 0.25)


def test_a_detector_draws_its_boxes_and_toggles_the_redacted_copy(
    classifier: Classifier, tmp_path: Path
) -> None:
    from nsfwd.models.model import load_model
    from nsfwd.models.synthetic import write_detector_checkpoint

    detector = load_model(str(write_detector_checkpoint(tmp_path / "yolos")), device="cpu")
    astronaut = photo_file(tmp_path, "astronaut", "png")
    with (
        nsfwd_server(classifier, second=("detector", detector)) as url,  # type: ignore[arg-type]
        chromium(no_refusal) as browser,
    ):
        page = browser.page
        page.goto(f"{url}/", wait_until="load")
        page.wait_for_selector("#file:enabled")
        page.select_option("#model", "detector")
        page.set_input_files("#file", str(astronaut))
        page.wait_for_selector('#result[data-model="detector"]:not([hidden])')
        page.wait_for_selector("#boxes .box")
        boxes = page.eval_on_selector_all(
            "#boxes .box", "boxes => boxes.map(b => [b.dataset.label, b.style.left])"
        )
        assert boxes and all(label == "EXPOSED" for label, _ in boxes)
        original = page.get_attribute("#preview", "src")
        page.check("#show-redacted")
        assert page.get_attribute("#preview", "src") != original
        assert page.is_hidden("#boxes")
        page.uncheck("#show-redacted")
        assert page.get_attribute("#preview", "src") == original
        page.screenshot(path=str(tmp_path / "detector.png"))
    assert browser.problems == []
