"""OpenAI's moderation API (POST /v1/moderations) and model list (GET /v1/models), called with
the official ``openai`` SDK, on a real server running two models: the tiny EVA-02 served as
Freepik's id (the default) and a tiny ViT (labels normal/nsfw) served as ``vit``.

Images come as data: URIs and by URL from the loopback image host (allowed through
NSFWD_FETCH_ALLOW_NETWORKS); the canary on 127.0.0.1 must never be reached. The same server's
Prodia and Eachlabs routes pick the model by name too, and give the same verdicts.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI

from checkpoints import VIT
from eachlabs_calls import KEY, create, created_id, eachlabs_server, poll
from hosts import ALLOWED, Host, jpeg
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from nsfwd.verdict import CATEGORIES, Policy
from prodia_jobs import MODEL, TOKEN, job_files
from servers import serve_app
from store_handles import make_key

pytestmark = pytest.mark.usefixtures("canary")


@pytest.fixture(scope="module")
def url(
    backend: str,
    request: pytest.FixtureRequest,
    *,
    classifier: Classifier,
    vit_classifier: Classifier,
    tmp_path_factory: pytest.TempPathFactory,
    host: tuple[str, Host],
) -> Iterator[str]:
    """The suite's server: both models, here or on Ray Serve (the image host up first)."""
    if backend == "ray":
        yield request.getfixturevalue("ray_server").url
        return
    settings = Settings(
        api_keys=[TOKEN],
        data_dir=tmp_path_factory.mktemp("openai"),
        fetch_allow_networks=ALLOWED,
        fetch_allow_http=True,
    )
    engines = {
        MODEL: Engine(classifier, max_batch_size=4, limits=settings.image_limits),
        VIT: Engine(vit_classifier, max_batch_size=4, limits=settings.image_limits),
    }
    with serve_app(create_app(engines, settings, Store.from_settings(settings))) as base:
        yield base


@pytest.fixture
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)


def data_uri(image: bytes, media: str = "image/jpeg") -> str:
    return f"data:{media};base64,{base64.b64encode(image).decode()}"


def image_input(url: str) -> Any:
    return {"type": "image_url", "image_url": {"url": url}}


def prodia_labels(
    url: str, image: bytes, model: str = MODEL, token: str = TOKEN
) -> dict[str, float]:
    answer = requests.post(
        f"{url}/v2/job",
        files=job_files(image=image, model=model),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    labels: dict[str, float] = answer.json()["config"]["labels"]
    return labels


def assert_judged(result: Any, labels: dict[str, float]) -> None:
    """``result`` (an SDK Moderation) is the default policy's verdict on ``labels``; every
    category but sexual is unjudged."""
    policy = Policy()
    score = policy.score(labels)
    doc = result.model_dump(by_alias=True)
    assert doc["category_scores"]["sexual"] == pytest.approx(score, abs=1e-5)
    assert doc["categories"]["sexual"] is result.flagged is (score > policy.threshold)
    assert doc["category_applied_input_types"]["sexual"] == ["image"]
    for name in CATEGORIES:
        assert name in doc["categories"] and name in doc["category_scores"]
        if name != "sexual":
            assert doc["categories"][name] is False
            assert doc["category_scores"][name] == 0.0
            assert doc["category_applied_input_types"][name] == []


def test_an_image_by_data_uri_gets_the_prodia_verdict(url: str, client: OpenAI, host: Any) -> None:
    image = host[1].photo
    response = client.moderations.create(model=MODEL, input=[image_input(data_uri(image))])
    assert response.id.startswith("modr-") and response.model == MODEL
    assert len(response.results) == 1
    assert_judged(response.results[0], prodia_labels(url, image))


def test_an_image_by_url_and_several_inputs_in_order(
    url: str, client: OpenAI, host: tuple[str, Host]
) -> None:
    base, receiver = host
    other = jpeg(seed=7)
    response = client.moderations.create(
        model=MODEL,
        input=[image_input(f"{base}/photo.jpg"), image_input(data_uri(other))],
    )
    assert len(response.results) == 2
    assert_judged(response.results[0], prodia_labels(url, receiver.photo))
    assert_judged(response.results[1], prodia_labels(url, other))


def test_the_model_is_picked_by_name_and_defaults_to_the_first(
    url: str, client: OpenAI, host: tuple[str, Host]
) -> None:
    image = host[1].photo
    picked = client.moderations.create(model=VIT, input=[image_input(data_uri(image))])
    assert picked.model == VIT
    assert_judged(picked.results[0], prodia_labels(url, image, VIT))
    for model in (openai.omit, "omni-moderation-latest"):
        default = client.moderations.create(model=model, input=[image_input(data_uri(image))])
        assert default.model == MODEL
        assert_judged(default.results[0], prodia_labels(url, image))


@pytest.mark.parametrize(
    "text", ["a sentence to judge", ["two", "sentences"], [{"type": "text", "text": "hi"}]]
)
def test_text_is_refused_in_openai_s_error_format(client: OpenAI, text: Any) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.moderations.create(input=text)
    error = raised.value
    assert error.status_code == 400
    assert isinstance(error.body, dict)
    assert error.body["type"] == "invalid_request_error" and error.body["param"] == "input"
    assert "nsfwd judges images" in error.body["message"]


def test_an_unknown_model_is_a_400_listing_the_served_ones(client: OpenAI, host: Any) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.moderations.create(model="acme/nope", input=[image_input(data_uri(host[1].photo))])
    assert isinstance(raised.value.body, dict)
    body = raised.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert f'"{MODEL}", "{VIT}"' in body["message"]


@pytest.mark.parametrize("model", [["a", "list"], {"an": "object"}, 3])
def test_a_model_that_is_not_a_name_is_a_400(url: str, model: Any) -> None:
    answer = requests.post(
        f"{url}/v1/moderations",
        json={"model": model, "input": [image_input("data:image/png;base64,AAAA")]},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "model_not_found"


def test_a_wrong_or_missing_token_is_refused(url: str, host: Any) -> None:
    stranger = OpenAI(base_url=f"{url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        stranger.moderations.create(input=[image_input(data_uri(host[1].photo))])
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "invalid_api_key"
    bare = requests.post(f"{url}/v1/moderations", json={"input": []}, timeout=10)
    assert bare.status_code == 401 and "missing API key" in bare.json()["error"]["message"]
    assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("data:image/jpeg;base64,%%%not-base64%%%", "not valid base64"),
        ("data:image/jpeg,rawbytes", "not base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:image/png;base64,aGVsbG8=", "input[0]"),  # base64, but not an image
    ],
)
def test_a_bad_data_uri_is_refused_clearly(client: OpenAI, uri: str, says: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.moderations.create(input=[image_input(uri)])
    assert isinstance(raised.value.body, dict)
    assert says in raised.value.body["message"]


def test_a_private_url_is_refused(client: OpenAI, canary_port: int) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.moderations.create(input=[image_input(f"http://127.0.0.1:{canary_port}/photo.jpg")])
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "invalid_image_url"


def test_models_are_listed_in_openai_s_shape(url: str, client: OpenAI) -> None:
    listed = requests.get(
        f"{url}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).json()
    assert listed["object"] == "list"
    assert [model["id"] for model in listed["data"]] == [MODEL, VIT]
    for model in listed["data"]:
        assert model["object"] == "model" and model["owned_by"] == "nsfwd"
        assert isinstance(model["created"], int)
    assert [model.id for model in client.models.list()] == [MODEL, VIT]
    assert client.models.retrieve(VIT).id == VIT
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("acme/nope")


def test_prodia_and_eachlabs_pick_the_model_by_name(
    url: str, host: tuple[str, Host], vit_classifier: Classifier, classifier: Classifier
) -> None:
    base, receiver = host
    image = receiver.photo
    assert list(prodia_labels(url, image, VIT)) == list(vit_classifier.labels)
    assert list(prodia_labels(url, image)) == list(classifier.labels)
    refused = requests.post(
        f"{url}/v2/job",
        files=job_files(image=image, model="acme/nope"),
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        timeout=30,
    )
    assert refused.status_code == 400
    assert f'this server runs "{MODEL}", "{VIT}"' in refused.json()["error"]
    for model, labels in (
        (VIT, vit_classifier.labels),
        ("nsfw-image-detection", classifier.labels),
    ):
        done = poll(
            url, created_id(create(url, f"{base}/photo.jpg", key=TOKEN, model=model)), TOKEN
        )
        assert done["status"] == "success", done
        assert list(done["labels"]) == list(labels)
    assert create(url, f"{base}/photo.jpg", key=TOKEN, model="acme/nope").status_code == 404


def test_per_key_limits_apply(classifier: Classifier, host: Any) -> None:
    settings = Settings(api_keys=[TOKEN], key_creates_per_minute=1, threshold=0.0)
    engine = Engine(classifier, max_batch_size=2, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)
        first = client.moderations.create(input=[image_input(data_uri(host[1].photo))])
        assert first.results[0].flagged  # the server's threshold, 0: anything scored is flagged
        with pytest.raises(openai.RateLimitError) as raised:
            client.moderations.create(input=[image_input(data_uri(host[1].photo))])
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_a_keys_own_policy_and_threshold_decide_its_verdicts(
    classifier: Classifier, tmp_path: Path, host: tuple[str, Host]
) -> None:
    """As on Eachlabs' route: a key made with its own policy and threshold is judged by them,
    a static key by the server's."""
    image = image_input(data_uri(host[1].photo))
    with eachlabs_server(classifier, tmp_path, threshold=1.0) as (base, store_url):
        own = make_key(store_url, "own", policy="strict", threshold=0.0)
        results = {
            key: OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
            .moderations.create(input=[image])
            .results[0]
            for key in (own, KEY)
        }
        labels = prodia_labels(base, host[1].photo, token=KEY)
    assert results[own].flagged and not results[KEY].flagged
    strict, moderate = Policy("strict").score(labels), Policy().score(labels)
    assert results[own].category_scores.sexual == pytest.approx(strict, abs=1e-5)
    assert results[KEY].category_scores.sexual == pytest.approx(moderate, abs=1e-5)
