"""The one door every judgement goes through: the verdict cache, then the banks, then the model.

Every surface (Prodia's routes, Eachlabs' and OpenAI's, pict-rs' validation, the background
jobs, Synapse through pict-rs' route) judges through a :class:`~nsfwd.engine.ClassifyEngine`,
and ``create_app`` wraps each served engine in a :class:`ScreenedEngine`:

1. the same bytes judged before, under the same model, policy and banks, answer from the
   :class:`~nsfwd.engine.verdict_cache.VerdictCache` without running anything;
2. where a bank holds any hash, the engine's ``check`` decodes the image (on the decode pool,
   as judging would) and PDQ-hashes every picture it would judge, keeping the pictures (of a
   video: every sampled frame, not kept); the hashes are looked up in the banks
   (:mod:`nsfwd.banks.matcher`, on the ``banks`` pool);
3. a match answers at once: the model does not run, the labels put all the probability on the
   most severe label (:func:`nsfwd.verdict.certain`) and the judgement carries the
   :class:`~nsfwd.verdict.Match`, which flags it under every policy;
4. otherwise the engine judges the kept pictures (no second decoding).

The hashing is a function of the judged pictures alone (:mod:`nsfwd.intake.checked`), so
every format the intake learns to decode (frames, pages, video frames) is hashed with no change
here. No torch: HTTP workers wrap their remote engines the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nsfwd.banks.pdq import PictureHash
from nsfwd.engine import ClassifyEngine, pools
from nsfwd.engine.verdict_cache import VerdictCache, VerdictKey, content_digest
from nsfwd.intake.video import sniff_video
from nsfwd.verdict import Judgement, Match, Policy, certain, with_match

if TYPE_CHECKING:
    from nsfwd.banks.matcher import BankMatcher, BankSnapshot
    from nsfwd.engine.metrics import Metrics
    from nsfwd.intake import ImageLimits
    from nsfwd.timeline import VideoOptions

DEFAULT_POLICY = Policy()


class ScreenedEngine:
    """A :class:`~nsfwd.engine.ClassifyEngine` around ``inner``: verdicts cached by content,
    banks of known images checked before the model (see the module)."""

    def __init__(
        self,
        inner: ClassifyEngine,
        name: str,
        *,
        matcher: BankMatcher | None = None,
        cache: VerdictCache | None = None,
    ) -> None:
        """Screen ``inner``, served as ``name`` (the cache's key); no ``matcher``: no banks;
        no ``cache``: nothing remembered."""
        self.inner = inner
        self.name = name
        self.matcher = matcher
        self.cache = VerdictCache(0) if cache is None else cache
        self.max_batch_size: int = inner.max_batch_size
        self.max_queue: int = inner.max_queue
        self.limits: ImageLimits = inner.limits
        self.metrics: Metrics = inner.metrics

    @property
    def ready(self) -> bool:
        """Whether the engine inside is ready."""
        return self.inner.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.inner.ready = value

    @property
    def model_name(self) -> str:
        """The model the engine inside runs."""
        return self.inner.model_name

    @property
    def model_info(self) -> dict[str, str]:
        """Where and how the model runs."""
        return self.inner.model_info

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels."""
        return self.inner.labels

    async def start(self) -> None:
        """Start the engine inside."""
        await self.inner.start()

    async def stop(self) -> None:
        """Stop the engine inside."""
        await self.inner.stop()

    async def judge(
        self, data: bytes, policy: Policy | None = None, *, video: VideoOptions | None = None
    ) -> Judgement:
        """The cached judgement of these bytes, else a bank's match, else the model's."""
        policy = policy or DEFAULT_POLICY
        snapshot = await self._banks()
        revision = snapshot.revision if snapshot else 0
        key = VerdictKey(content_digest(data), self.name, policy, revision, video)
        judgement = self.cache.get(key)
        self.metrics.verdict_cache.labels(outcome="miss" if judgement is None else "hit").inc()
        if judgement is not None:
            return judgement
        match = None
        if snapshot is not None:
            hashes = await self.inner.check(data, hashed=True)
            match = await pools.named(pools.BANKS).run(lambda: snapshot.match(hashes))
        if match is None:
            judgement = await self.inner.judge(data, policy, video=video)
        else:
            self.metrics.bank_matches.labels(bank=match.bank).inc()
            judgement = await self._matched(data, policy, match, hashes, video)
        self.cache.put(key, judgement)
        return judgement

    async def check(self, data: bytes, *, hashed: bool = False) -> list[PictureHash]:
        """The engine inside's check; the pictures are hashed too whenever a bank holds any
        hash, so that the judgement that follows (an async job's) need not decode again (not
        for a video: its judgement decodes its frames again whatever a check did)."""
        if not hashed and sniff_video(data) is None:
            hashed = await self._banks() is not None
        return await self.inner.check(data, hashed=hashed)

    async def _banks(self) -> BankSnapshot | None:
        """The banks as they stand, or None when no bank holds a hash."""
        if self.matcher is None:
            return None
        snapshot = await self.matcher.snapshot()
        return snapshot if snapshot.hashes else None

    async def _matched(
        self,
        data: bytes,
        policy: Policy,
        match: Match,
        hashes: list[PictureHash],
        video: VideoOptions | None,
    ) -> Judgement:
        """The judgement of an image a bank matched: without the model where its labels are
        known, else the model's labels with the match. A video is judged by the model all the
        same (its timeline and segments), and answers with the match and, where the model's
        labels are known, labels that flag it."""
        if not self.labels or sniff_video(data) is not None:
            return with_match(await self.inner.judge(data, policy, video=video), match, self.labels)
        frames = {picture.frame for picture in hashes}
        return Judgement(
            certain(self.labels),
            frame=match.frame,
            frames=max(frames, default=0) + 1,
            frames_judged=max(len(frames), 1),
            match=match,
        )
