"""One model, several HTTP processes: the engine served over a Unix socket, and its stand-in.

With ``NSFWD_HTTP_WORKERS`` above 1 (see :mod:`nsfwd.serve.supervisor`), one *inference process*
owns the model and the :class:`~nsfwd.engine.batcher.Engine` (decoding threads, dynamic batcher,
admission) and serves it through :class:`InferenceServer`; each HTTP worker process parses requests
and holds a :class:`RemoteEngine`, which forwards the encoded upload (smaller than decoded pixels)
and answers with the labels, or raises the very error the local engine would have raised. A
caller that gives up cancels its request in the inference process too, so the batcher drops it.

Frames, both ways: two big-endian uint32 (header length, body length), a JSON header, a body.
Requests: ``{"op": "classify", "id": n}`` with the image as body (``"policy": [name,
threshold]`` optional: whose worst picture answers; ``"video": {...}`` optional: a video's
:class:`~nsfwd.timeline.VideoOptions`), ``{"op": "check", "id": n, "hashed": bool}`` with the
image as body, ``{"op": "cancel", "id": n}``.
Answers: ``{"id": n, "labels": {...}, "judged": {...}}`` (``judged``:
:meth:`~nsfwd.verdict.Judgement.stored`, which picture and a detector's regions; a video's
also ``"segments": [...]``), ``{"id": n, "checked": true, "hashes": [[hex, quality, frame],
...]}`` or
``{"id": n, "error": kind, ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import struct
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsfwd.banks.pdq import PictureHash
from nsfwd.engine import EngineClosedError, ModelFailedError, QueueFullError
from nsfwd.engine.metrics import Metrics
from nsfwd.intake import ImageError, ImageLimits
from nsfwd.intake.errors import IMAGE_ERRORS
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Policy

if TYPE_CHECKING:
    from nsfwd.engine.batcher import Engine  # torch: only the inference process holds one

log = logging.getLogger(__name__)

_LENGTHS = struct.Struct("!II")
MAX_HEADER_BYTES = 64 * 1024
_IMAGE_ERRORS = {cls.__name__: cls for cls in IMAGE_ERRORS}


def _frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return _LENGTHS.pack(len(encoded), len(body)) + encoded + body


async def _read_frame(reader: asyncio.StreamReader, max_body: int) -> tuple[dict[str, Any], bytes]:
    """The next frame; ``asyncio.IncompleteReadError`` at the end of the stream."""
    header_len, body_len = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
    if header_len > MAX_HEADER_BYTES or body_len > max_body:
        raise ValueError(f"frame of {header_len} + {body_len} bytes is over the limit")
    header = json.loads(await reader.readexactly(header_len))
    body = await reader.readexactly(body_len) if body_len else b""
    return header, body


class InferenceServer:
    """Serves one started :class:`Engine` to HTTP worker processes on a Unix socket."""

    def __init__(self, engine: Engine, path: Path) -> None:
        self.engine = engine
        self.path = path
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen on :attr:`path` (replacing a stale socket file)."""
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=2**20)
        self.path.chmod(0o600)

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: dict[int, asyncio.Task[None]] = {}
        # The engine checks the image's size; this bound only stops a runaway frame.
        max_body = max(2 * self.engine.limits.max_bytes, 64 * 2**20)
        self._connections.add(writer)
        try:
            while True:
                header, body = await _read_frame(reader, max_body)
                request_id = int(header["id"])
                if header.get("op") == "cancel":
                    if (task := tasks.get(request_id)) is not None:
                        task.cancel()
                    continue
                if header.get("op") == "check":
                    work = self._check(body, bool(header.get("hashed", False)))
                else:
                    work = self._judge(
                        body, _policy(header.get("policy")), _video(header.get("video"))
                    )
                task = asyncio.create_task(self._answer(request_id, work, writer))
                tasks[request_id] = task
                task.add_done_callback(partial(_forget, tasks, request_id))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away: its requests are dropped below
        except (ValueError, KeyError) as exc:
            log.error("closing a worker connection that sent a bad frame: %s", exc)
        finally:
            for task in list(tasks.values()):
                task.cancel()
            self._connections.discard(writer)
            writer.close()

    async def _judge(
        self, data: bytes, policy: Policy | None, video: VideoOptions | None
    ) -> dict[str, Any]:
        judgement = await self.engine.judge(data, policy, video=video)
        answer: dict[str, Any] = {"labels": judgement.labels, "judged": judgement.stored()}
        if judgement.segments is not None:
            answer["segments"] = judgement.segments
        return answer

    async def _check(self, data: bytes, hashed: bool) -> dict[str, Any]:
        hashes = await self.engine.check(data, hashed=hashed)
        return {"checked": True, "hashes": [[h.hex, h.quality, h.frame] for h in hashes]}

    async def _answer(
        self,
        request_id: int,
        work: Coroutine[Any, Any, dict[str, Any]],
        writer: asyncio.StreamWriter,
    ) -> None:
        answer: dict[str, Any] = {"id": request_id}
        try:
            answer.update(await work)
        except ImageError as exc:
            answer.update(error="image", type=type(exc).__name__, message=exc.message)
        except QueueFullError as exc:
            answer.update(error="queue_full", retry_after=exc.retry_after)
        except EngineClosedError as exc:
            answer.update(error="closed", message=str(exc))
        except ModelFailedError as exc:
            answer.update(error="model_failed", message=str(exc))
        except Exception as exc:  # a model failure fails this request, not the connection
            log.exception("inference failed")
            answer.update(error="internal", message=f"{type(exc).__name__}: {exc}")
        if not writer.is_closing():
            writer.write(_frame(answer))
            with contextlib.suppress(ConnectionError):
                await writer.drain()


def _policy(value: Any) -> Policy | None:
    """The policy a request names as ``[name, threshold]``, or None."""
    if value is None:
        return None
    try:
        name, threshold = value
        return Policy(name, float(threshold))
    except TypeError as exc:  # a malformed frame, refused like any other
        raise ValueError(f"bad policy {value!r}") from exc


def _video(value: Any) -> VideoOptions | None:
    """The video options a request names as a JSON object, or None."""
    if value is None:
        return None
    try:
        return VideoOptions(**value)
    except TypeError as exc:  # a malformed frame, refused like any other
        raise ValueError(f"bad video options {value!r}") from exc


def _forget(tasks: dict[int, asyncio.Task[None]], request_id: int, _: object) -> None:
    tasks.pop(request_id, None)


def _error(answer: dict[str, Any]) -> Exception:
    """The exception a local engine would have raised for this error answer."""
    kind, message = answer["error"], str(answer.get("message", ""))
    if kind == "image":
        return _IMAGE_ERRORS.get(answer.get("type", ""), ImageError)(message)
    if kind == "queue_full":
        return QueueFullError(int(answer["retry_after"]))
    if kind == "closed":
        return EngineClosedError(message)
    if kind == "model_failed":
        return ModelFailedError(message)
    return RuntimeError(f"the inference process failed: {message}")


class RemoteEngine:
    """An :class:`Engine` stand-in for HTTP worker processes: same attributes, same
    :meth:`classify`, same errors, while the model runs in the inference process at ``path``."""

    def __init__(
        self,
        path: Path,
        *,
        model_name: str,
        model_info: dict[str, str] | None = None,
        labels: tuple[str, ...] = (),
        max_batch_size: int,
        max_queue: int,
        limits: ImageLimits,
        metrics: Metrics | None = None,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.path = path
        self.model_name = model_name
        self.model_info = model_info or {}
        self._labels = tuple(labels)
        """The inference process's :attr:`Engine.model_info` (its ``/metrics`` show it too)."""
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.limits = limits
        self.metrics = metrics or Metrics()
        self.connect_timeout_s = connect_timeout_s
        self.ready = False
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Judgement | list[PictureHash]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels, as the inference process announced them."""
        return self._labels

    async def start(self) -> None:
        """Connect to the inference process, waiting up to ``connect_timeout_s`` for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.path)
                break
            except OSError as exc:
                if loop.time() > deadline:
                    raise EngineClosedError(
                        f"cannot reach the inference process at {self.path}: {exc}"
                    ) from exc
                await asyncio.sleep(0.1)
        self._reader_task = asyncio.create_task(self._read_answers(reader))
        self.ready = True

    async def stop(self) -> None:
        """Disconnect; requests still waiting fail with :class:`EngineClosedError`."""
        self.ready = False
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._fail_pending("the server is shutting down")

    async def judge(
        self, data: bytes, policy: Policy | None = None, *, video: VideoOptions | None = None
    ) -> Judgement:
        """:meth:`Engine.judge`, computed by the inference process; raises what
        :meth:`classify` raises."""
        request: dict[str, Any] = {"op": "classify"}
        if policy is not None:
            request["policy"] = [policy.name, policy.threshold]
        if video is not None:
            request["video"] = dataclasses.asdict(video)
        judgement = await self._call(request, data)
        assert isinstance(judgement, Judgement)
        return judgement

    async def check(self, data: bytes, *, hashed: bool = False) -> list[PictureHash]:
        """:meth:`Engine.check` in the inference process, which keeps the pixels for the
        judgement that follows (this worker's or another's)."""
        hashes = await self._call({"op": "check", "hashed": hashed}, data)
        assert isinstance(hashes, list)
        return hashes

    async def _call(self, request: dict[str, Any], data: bytes) -> Judgement | list[PictureHash]:
        writer = self._writer
        if not self.ready or writer is None:
            raise EngineClosedError("the model is not loaded yet")
        request_id = next(self._ids)
        future: asyncio.Future[Judgement | list[PictureHash]]
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            writer.write(_frame({**request, "id": request_id}, data))
            await writer.drain()
            return await future
        except asyncio.CancelledError:
            if not writer.is_closing():
                writer.write(_frame({"op": "cancel", "id": request_id}))
            raise
        except ConnectionError as exc:
            raise EngineClosedError(f"the inference process went away: {exc}") from None
        finally:
            self._pending.pop(request_id, None)

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                answer, _ = await _read_frame(reader, 0)
                future = self._pending.get(int(answer["id"]))
                if future is None or future.done():
                    continue  # cancelled meanwhile
                if "labels" in answer:
                    future.set_result(
                        Judgement.from_stored(
                            answer["labels"], answer.get("judged"), segments=answer.get("segments")
                        )
                    )
                elif answer.get("checked"):
                    future.set_result(
                        [
                            PictureHash(bytes.fromhex(value), int(quality), int(frame))
                            for value, quality, frame in answer.get("hashes", [])
                        ]
                    )
                else:
                    future.set_exception(_error(answer))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError) as exc:
            log.error("lost the inference process: %s", exc)
        self.ready = False
        self._fail_pending("the inference process went away")

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(EngineClosedError(message))
        self._pending.clear()
