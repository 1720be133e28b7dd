"""A Matrix Synapse module that asks nsfwd about every media file before Synapse stores it.

In ``homeserver.yaml``::

    modules:
      - module: nsfwd.integrations.synapse.MediaModerator
        config:
          url: http://127.0.0.1:8000      # nsfwd's base URL
          token: nsfwd_...                # an nsfwd API key (omit on an open server)
          policy: moderate                # strict, moderate or lenient (default: the key's)
          timeout_s: 10                   # give up on nsfwd after this long
          fail_open: false                # nsfwd cannot answer: refuse (false) or store (true)

Synapse calls ``check_media_file_for_spam`` for local uploads, remote media it downloads and
URL previews; the module posts the file to nsfwd's ``POST /v1/validate`` (the route pict-rs
uses, :mod:`nsfwd.api.pictrs.validate`) with the key as a Bearer header (never in the URL,
which Synapse logs) and answers Synapse:

* the file passes: ``NOT_SPAM``, and Synapse stores it;
* flagged (by the model, or matched in a bank of known images): a refusal, and Synapse answers
  the uploading client 400 "Bad content" (whatever code a module returns);
* not a type nsfwd judges (a PDF, a text file, a web page): ``NOT_SPAM``;
* nsfwd cannot answer (down, busy, too slow, a file it cannot decode or over its size limit,
  a wrong key): ``fail_open`` decides, and a warning is logged.

What running it in a real Synapse showed, and how the module deals with it: Synapse does not
run on asyncio, so the request goes through Synapse's own HTTP client (Twisted); Synapse never
times a module out, so the module enforces ``timeout_s`` itself; Synapse calls the check again
for every thumbnail it makes of a file, which the module skips (the file itself was checked);
and a module that raises gives the client a 500, so every failure becomes ``fail_open``'s
answer instead. Only the standard library is imported here; Synapse's and Twisted's modules
are imported inside Synapse, when the checks run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

log = logging.getLogger(__name__)

ROUTE: Final = "/v1/validate"
POLICIES: Final = ("strict", "moderate", "lenient")
DEFAULT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class ModeratorConfig:
    """The module's ``config`` block, checked."""

    url: str
    """nsfwd's base URL (http or https), without ``/v1/validate``."""
    token: str | None = None
    policy: str | None = None
    threshold: float | None = None
    model: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    fail_open: bool = False

    @property
    def endpoint(self) -> str:
        """The validation URL, with the verdict's options in its query."""
        query = {
            name: str(value)
            for name, value in (
                ("policy", self.policy), ("threshold", self.threshold), ("model", self.model)
            )
            if value is not None
        }  # fmt: skip
        return self.url.rstrip("/") + ROUTE + (f"?{urlencode(query)}" if query else "")


def parse_config(config: dict[str, Any]) -> ModeratorConfig:
    """The checked configuration; ``ValueError`` saying what is wrong (Synapse's
    ``ConfigError`` when called by Synapse)."""
    if not isinstance(config, dict):
        raise ValueError("the module's config must be a mapping with at least `url`")
    unknown = set(config) - {"url", "token", "policy", "threshold", "model", "timeout_s",
                             "fail_open"}  # fmt: skip
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
    url = config.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if not isinstance(url, str) or parts is None or parts.scheme not in ("http", "https") \
            or not parts.netloc:  # fmt: skip
        raise ValueError(
            f"url must be nsfwd's http(s) base URL, e.g. http://127.0.0.1:8000, not {url!r}"
        )
    token = config.get("token")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("token must be an nsfwd API key (a string), or left out")
    policy = config.get("policy")
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    threshold = config.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):  # fmt: skip
        raise ValueError(f"threshold must be a number from 0 to 1, not {threshold!r}")
    model = config.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"model must be a model name nsfwd serves, not {model!r}")
    timeout = config.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout_s must be a number of seconds above 0, not {timeout!r}")
    fail_open = config.get("fail_open", False)
    if not isinstance(fail_open, bool):
        raise ValueError(f"fail_open must be true or false, not {fail_open!r}")
    return ModeratorConfig(
        url=url, token=None if token is None else token.strip(), policy=policy,
        threshold=None if threshold is None else float(threshold), model=model,
        timeout_s=float(timeout), fail_open=fail_open,
    )  # fmt: skip


@dataclass(frozen=True)
class Answer:
    """What nsfwd said of one file: store it or not, and why (for the log)."""

    store: bool | None
    """True: store it; False: refuse it; None: nsfwd could not answer (``fail_open`` decides)."""
    why: str


def read_answer(status: int, body: bytes) -> Answer:
    """nsfwd's answer to ``POST /v1/validate`` (:mod:`nsfwd.api.pictrs.validate`)."""
    try:
        doc = json.loads(body)
        reason, message = str(doc.get("reason", "")), str(doc.get("message", ""))
    except (ValueError, AttributeError):
        reason, message = "", body[:200].decode("utf-8", "replace")
    if 200 <= status < 300:
        return Answer(True, "passed")
    if status == 422 and reason == "flagged":
        return Answer(False, message or "flagged")
    if status == 415 or reason == "unsupported":
        return Answer(True, f"not a type nsfwd judges ({message})")
    return Answer(None, f"nsfwd answered {status} {reason}: {message}")


class MediaModerator:
    """The Synapse module: registers :meth:`check_media_file_for_spam` (see the module)."""

    def __init__(self, config: ModeratorConfig, api: Any) -> None:
        """Called by Synapse with the parsed config and its ``ModuleApi``."""
        self.config = config
        self.api = api
        api.register_spam_checker_callbacks(
            check_media_file_for_spam=self.check_media_file_for_spam
        )
        log.info("nsfwd media moderation: %s (fail_open: %s)", config.endpoint, config.fail_open)

    @staticmethod
    def parse_config(config: dict[str, Any]) -> ModeratorConfig:
        """Synapse's hook for checking the ``config`` block at start-up."""
        from synapse.module_api.errors import ConfigError

        try:
            return parse_config(config)
        except ValueError as exc:
            raise ConfigError(f"nsfwd.integrations.synapse.MediaModerator: {exc}") from None

    async def check_media_file_for_spam(self, file_wrapper: Any, file_info: Any) -> Any:
        """``NOT_SPAM``, or a refusal; never raises (a raise would give the client a 500)."""
        from synapse.module_api import NOT_SPAM
        from synapse.module_api.errors import Codes

        if getattr(file_info, "thumbnail", None) is not None:
            return NOT_SPAM  # a thumbnail of a file that was checked itself
        try:
            buffer = BytesIO()
            await file_wrapper.write_chunks_to(buffer.write)
            answer = await self._ask_within(buffer.getvalue())
        except Exception as exc:  # down, too slow, refused connection: nsfwd did not answer
            answer = Answer(None, f"nsfwd did not answer: {type(exc).__name__}: {exc}")
        store = self.config.fail_open if answer.store is None else answer.store
        where = getattr(file_info, "server_name", None) or "local"
        if answer.store is None:
            action = "storing" if store else "refusing"
            log.warning("media %s (%s): %s; %s it (fail_open)", file_info.file_id, where,
                        answer.why, action)  # fmt: skip
        elif not store:
            log.info("media %s (%s) refused: %s", file_info.file_id, where, answer.why)
        return NOT_SPAM if store else (Codes.FORBIDDEN, {})

    async def _ask_within(self, data: bytes) -> Answer:
        """:meth:`_ask`, given up after ``timeout_s`` (Synapse never times a module out)."""
        from synapse.module_api import make_deferred_yieldable, run_in_background
        from twisted.internet import reactor

        asking = run_in_background(self._ask, data)
        asking.addTimeout(self.config.timeout_s, reactor)
        answer: Answer = await make_deferred_yieldable(asking)
        return answer

    async def _ask(self, data: bytes) -> Answer:
        """Post ``data`` to nsfwd through Synapse's HTTP client and read the answer."""
        from synapse.module_api import make_deferred_yieldable
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        headers = Headers({"Content-Type": ["application/octet-stream"]})
        if self.config.token:
            headers.addRawHeader("Authorization", f"Bearer {self.config.token}")
        response = await self.api.http_client.request(
            "POST", self.config.endpoint, data=data, headers=headers
        )
        body = await make_deferred_yieldable(readBody(response))
        return read_answer(int(response.code), body)
