"""``nsfwd serve --ray --replicas 2`` on a real local Ray instance, two models, a PostgreSQL
store: the API suites through it, Eachlabs with webhooks, a model replica killed under load, a
clean stop.

One server serves the whole module (Ray and Serve take tens of seconds to start). Every test
of the API suites that runs against a shared server is imported here and run again with that
server (``server_url``, ``url``, ``server``, ``client``) being Serve's proxy:
test_interop.py (the official npm client), test_api_prodia.py (the guide's flows),
test_bad_input.py, test_api_prodia_async.py, test_api_eachlabs.py and test_api_openai.py (the
official SDK). Tests of those suites that start a server of their own, with other settings,
are not. Then the tests below; the last one stops the server. Ray's state is private to the
module (:mod:`ray_instance`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("ray.serve", reason="needs nsfwd[serve]")


from eachlabs_calls import KEY, OTHER, SERVED, create, created_id, poll
from hosts import ALLOWED, SECRET, Host, verified
from nsfwd.jobs import Store
from nsfwd.settings import Settings
from photos import astronaut_jpeg
from prodia_jobs import TOKEN, post_job
from ray_instance import (
    environment,
    kill_all,
    private_folder,
    ray_processes,
    replicas,
    wait_until_none_left,
)
from serve_process import Served, health, nsfwd_serve

# The suites, run again through Serve (their server_url, url, server and client are this
# module's).
from test_api_eachlabs import (  # noqa: F401
    test_a_keys_own_creates_per_minute_apply,
    test_a_prediction_succeeds_and_its_webhook_arrives_once_after_a_refusal,
    test_a_prediction_that_fails_says_why_and_sends_failed,
    test_bodies_over_64_kib_are_400,
    test_every_name_of_the_model_works_and_slashes_are_optional,
    test_image_urls_that_are_not_public_https_are_400,
    test_keys_are_required_and_checked,
    test_malformed_requests_are_400_with_the_error_body,
    test_private_webhook_urls_are_400,
    test_processing_is_reported_until_the_image_arrives,
    test_redirects_to_the_canary_are_refused_when_fetching_and_delivering,
    test_refused_creates_do_not_use_up_the_keys_minute,
    test_the_11th_prediction_in_flight_is_429,
    test_the_101st_create_in_a_minute_is_429,
    test_unknown_and_other_keys_predictions_are_404,
    test_unknown_models_are_404,
)
from test_api_openai import (  # noqa: F401
    VIT,
    client,
    test_a_bad_data_uri_is_refused_clearly,
    test_a_model_that_is_not_a_name_is_a_400,
    test_a_private_url_is_refused,
    test_a_wrong_or_missing_token_is_refused,
    test_an_image_by_data_uri_gets_the_prodia_verdict,
    test_an_image_by_url_and_several_inputs_in_order,
    test_an_unknown_model_is_a_400_listing_the_served_ones,
    test_models_are_listed_in_openai_s_shape,
    test_prodia_and_eachlabs_pick_the_model_by_name,
    test_text_is_refused_in_openai_s_error_format,
    test_the_model_is_picked_by_name_and_defaults_to_the_first,
)
from test_api_prodia import (  # noqa: F401
    test_a_missing_or_wrong_token_is_401_plain_text,
    test_extra_config_is_echoed_and_both_model_names_work,
    test_labels_equal_the_classifier_on_the_same_image,
    test_ping_checks_the_token_without_an_input,
    test_request_ids_are_kept_when_sane_and_made_otherwise,
    test_requests_are_counted_by_status_and_timed,
    test_the_same_input_twice_counts_once,
    test_v1_json_as_the_guide_does_it,
    test_v1_with_a_multipart_accept_gets_the_job_part,
    test_v1_without_accept_is_json_and_the_guide_curl_works,
    test_v2_echoes_the_uploaded_name_and_type_even_when_they_lie,
    test_v2_multipart_as_the_guide_does_it,
    test_v2_with_a_json_accept_gets_the_job_as_json,
)
from test_api_prodia_async import (  # noqa: F401
    OTHER_TOKEN,
    test_a_key_from_the_store_works_on_every_prodia_route_until_revoked,
    test_a_keys_own_policy_is_stored_on_its_jobs_and_the_labels_stay_raw,
    test_a_refusal_goes_in_the_job_part_when_multipart_is_accepted,
    test_an_unknown_output_file_is_404_naming_the_outputs,
    test_another_keys_job_is_404,
    test_bad_jobs_are_refused_at_once_and_not_stored,
    test_every_route_needs_the_token,
    test_extra_config_is_kept,
    test_jobs_from_another_protocol_are_not_prodia_jobs,
    test_submitting_with_a_multipart_accept_gets_the_job_part,
    test_unknown_ids_are_404,
    test_v1_is_accepted_then_processed_with_the_sync_labels,
    test_v2_outputs_the_labels_and_the_image_byte_for_byte,
)
from test_api_prodia_async import (  # noqa: F401
    test_the_guides_retrying_session_reads_the_size_refusal as test_async_retrying_session,
)
from test_bad_input import (  # noqa: F401
    test_a_chunked_body_is_refused_while_it_streams,
    test_a_slow_body_does_not_hold_up_others,
    test_an_11_mb_image_is_refused_with_400_quickly,
    test_an_oversized_content_length_is_refused_before_the_body,
    test_bad_requests_get_a_clear_4xx,
    test_huge_headers_are_refused,
    test_mangled_bodies_never_get_a_5xx,
    test_the_guides_retrying_session_reads_the_size_refusal,
    test_the_image_limit_is_exact,
)
from test_interop import (  # noqa: F401
    image_file,
    node,
    test_a_bad_image_throws_the_server_message,
    test_a_bad_token_gives_a_clear_error,
    test_an_unknown_model_throws_the_server_message,
    test_ping_checks_the_token,
    test_v1_labels_arrive_in_the_job,
    test_v2_outputs_are_the_labels_then_the_image_byte_for_byte,
)
from waiting import wait_for, watchdog

TEST_SECONDS = 180
"""No test here may run longer: a stuck deployment fails the test rather than the suite."""
START_SECONDS = 240
"""Ray, Serve, three replicas: on two busy cores this takes a while."""
START_FAILURES: list[BaseException] = []
MODELS = ("nsfwd-model", "nsfwd-model-1")
"""The model deployments: Freepik's model (the tiny EVA-02) and ``vit``."""


STOPPED_AFTER: list[str] = []
"""The test that ran past :data:`TEST_SECONDS`, after which the server was stopped."""


@pytest.fixture(autouse=True)
def bounded(request: pytest.FixtureRequest, ray_home: Path) -> Iterator[None]:
    """Once a test has run :data:`TEST_SECONDS`, kill the server and its Ray instance (every
    process that carries this module's Ray folder), so that whatever the test waits on fails;
    the tests after it fail at once, naming it."""
    if STOPPED_AFTER:
        pytest.fail(f"the server was stopped after {STOPPED_AFTER[0]} ran too long")

    def expire() -> None:
        STOPPED_AFTER.append(request.node.name)
        kill_all(list(ray_processes(ray_home)))

    with watchdog(TEST_SECONDS, expire):
        yield


@pytest.fixture(scope="module")
def ray_home() -> Iterator[Path]:
    """A private folder for this module's Ray instance."""
    with private_folder("nsfwd-serve-") as folder:
        yield folder


@pytest.fixture(scope="module")
def database(postgres_url: str) -> Iterator[str]:
    """The URL of the module's PostgreSQL database, the server's job store."""
    from postgres import fresh_database

    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="module")
def served(
    ray_home: Path,
    timm_checkpoint: Path,
    vit_checkpoint: Path,
    database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """``nsfwd serve --ray --replicas 2`` on a PostgreSQL store, serving the tiny EVA-02 as
    Freepik's model and a tiny ViT as ``vit``, until the module ends (or the last test stops
    it)."""
    if START_FAILURES:  # pytest sets a failed fixture up again for every test: once is enough
        pytest.fail(f"the server did not start: {START_FAILURES[0]}", pytrace=False)
    folder = tmp_path_factory.mktemp("ray-serve")
    env = {
        **environment(ray_home),
        "NSFWD_DATABASE_URL": database,
        "NSFWD_API_KEYS": ",".join([TOKEN, OTHER_TOKEN, KEY, OTHER]),
        "NSFWD_SERVED_MODEL_NAME": SERVED,
        "NSFWD_MODELS": f"{VIT}={vit_checkpoint}",
        "NSFWD_DTYPE": "float32",
        "NSFWD_MAX_BATCH_SIZE": "4",
        "NSFWD_FETCH_ALLOW_NETWORKS": ",".join(ALLOWED),
        "NSFWD_WEBHOOK_ALLOW_NETWORKS": ",".join(ALLOWED),
        "NSFWD_FETCH_ALLOW_HTTP": "1",
        "NSFWD_WEBHOOK_SECRET": SECRET,
        "NSFWD_WEBHOOK_RETRY_DELAYS": "0.2,0.2",
    }
    with (
        _failures_kept(),
        nsfwd_serve(
            timm_checkpoint,
            folder,
            folder / "serve.log",
            "--ray",
            "--replicas",
            "2",
            env=env,
            start_timeout=START_SECONDS,
        ) as server,
    ):
        wait_for(
            lambda: all(f"{name} HEALTHY (2 running)" in health(server.url) for name in MODELS),
            60,
            "both replicas of both models",
            detail=lambda: health(server.url),
        )
        yield server


@contextmanager
def _failures_kept() -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        START_FAILURES.append(exc)
        raise


@pytest.fixture(scope="module")
def server_url(served: Served) -> str:
    """The imported suites' server: Serve's HTTP proxy."""
    return served.url


@pytest.fixture
def url(served: Served) -> str:
    """The imported Eachlabs, async Prodia and OpenAI suites' server: Serve's HTTP proxy."""
    return served.url


@pytest.fixture
def server(request: pytest.FixtureRequest, served: Served, database: str) -> tuple[str, Any]:
    """The server and its job store, in the shape the suite of the requesting test takes:
    the store's URL for Eachlabs', a :class:`Store` for the async Prodia suite's."""
    store = Store.from_settings(Settings(database_url=database))
    if request.function.__module__ == "test_api_prodia_async":
        return served.url, store
    return served.url, store.url


def classify(url: str) -> requests.Response:
    return post_job(url, astronaut_jpeg())


def test_healthz_reports_the_deployments(served: Served) -> None:
    res = requests.get(f"{served.url}/healthz", timeout=10)
    assert res.status_code == 200
    lines = res.text.splitlines()
    assert lines[0] == "ok"
    assert lines[1:3] == ["model: Freepik/nsfw_image_detector", "device: cpu"]
    deployments = [line for line in lines if line.startswith("deployments: ")]
    assert len(deployments) == 2, lines  # one for each model, as the other lines
    for line in deployments:
        assert "nsfwd-ingress HEALTHY (1 running)" in line
        assert all(f"{name} HEALTHY (2 running)" in line for name in MODELS), line


def test_eachlabs_with_webhooks_on_postgresql(served: Served, host: tuple[str, Host]) -> None:
    base, receiver = host
    ids = [
        created_id(create(served.url, f"{base}/photo.jpg", webhook_url=f"{base}/hook/serve{i}"))
        for i in range(3)
    ]
    refused = create(served.url, f"{base}/text", webhook_url=f"{base}/hook/servebad")
    bad = created_id(refused)
    for prediction_id in ids:
        done = poll(served.url, prediction_id, timeout=60)
        assert done["status"] == "success" and done["output"] in ("nsfw", "normal"), done
        assert list(done["labels"]) == ["neutral", "low", "medium", "high"]
    assert poll(served.url, bad, timeout=60)["status"] == "error"
    for i, prediction_id in enumerate(ids):
        hits = wait_for(partial(receiver.received, f"serve{i}"), 30, "the webhook")
        assert verified(hits[0]) == {
            "exec_id": prediction_id,
            "status": "succeeded",
            "output": poll(served.url, prediction_id)["output"],
            "error": "",
        }
    failed = wait_for(lambda: receiver.received("servebad"), 30, "the failure's webhook")
    assert verified(failed[0])["status"] == "failed"


def test_a_model_replica_killed_under_load(
    served: Served, ray_home: Path, host: tuple[str, Host]
) -> None:
    base, _ = host
    running = replicas(ray_home, "nsfwd-model")
    assert len(running) == 2, ray_processes(ray_home)
    stop = threading.Event()
    answers: list[tuple[int, dict[str, str]]] = []

    def load() -> None:
        while not stop.is_set():
            res = classify(served.url)
            answers.append((res.status_code, dict(res.headers)))

    predictions = [created_id(create(served.url, f"{base}/photo.jpg", key=OTHER)) for _ in range(6)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        wait_for(lambda: len(answers) >= 4, 60, "the load to run")
        os.kill(running[0], signal.SIGKILL)
        killed_at = len(answers)
        wait_for(lambda: len(answers) >= killed_at + 12, 90, "answers after the kill")
        stop.set()
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(200) >= len(statuses) - 4, statuses  # only those on the dead one
    for status, headers in answers:
        if status != 200:
            assert int(headers["retry-after"]) >= 1
    for prediction_id in predictions:  # none lost
        assert poll(served.url, prediction_id, key=OTHER, timeout=90)["status"] == "success"
    wait_for(
        lambda: "nsfwd-model HEALTHY (2 running)" in health(served.url),
        90,
        "Serve to restart the replica",
    )
    assert running[0] not in replicas(ray_home, "nsfwd-model")
    assert classify(served.url).status_code == 200


def test_sigterm_drains_and_leaves_no_ray_process(served: Served, ray_home: Path) -> None:
    assert ray_processes(ray_home), "the Ray instance is not where the test looks for it"
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(classify, served.url) for _ in range(4)]
        time.sleep(0.2)
        served.process.send_signal(signal.SIGTERM)
        results: list[Any] = []
        for future in in_flight:
            try:
                results.append(future.result().status_code)
            except requests.ConnectionError as exc:  # sent after the proxy stopped listening
                results.append(type(exc).__name__)
    assert served.process.wait(timeout=90) == 0, served.log.read_text()[-3000:]
    assert all(result in (200, 503, "ConnectionError") for result in results), results
    wait_until_none_left(ray_home)
    log = served.log.read_text()
    assert "stopped the local Ray instance" in log
