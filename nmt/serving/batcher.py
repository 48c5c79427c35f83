"""Dynamic batching and scheduling for `nmt serve`; needs nothing of FastAPI.

One decoding thread serves every model (a Translator is not thread-safe, and two decodes at once
would only compete for the same cores). It takes the oldest waiting request, then whatever
arrives within `max_wait_ms` for the same model, up to `batch_tokens` source tokens, groups
those requests by decoding options and decodes each group with one `translate_nbest` call.

Fairness: a long request must not stall the short ones behind it. Between two steps of a
search (nmt.decoding.search.between_steps) the thread decodes the short requests waiting (each
at most `short_tokens` source tokens, together at most a batch), then goes on with the long
one. Long requests wait their turn in order. (A CTranslate2 export decodes in C++, without
steps to stop between: it keeps plain first-come order.)

Deadlines and departures: a request past its deadline is answered with `DeadlineExceeded` at
once, one whose client went away is dropped, and a search none of whose requests is still
wanted stops at its next step.

Back-pressure: at most `max_queue_lines` lines wait; a request that would go over is refused
with `Overloaded`, which says after how many seconds the queue should have room.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from nmt import config
from nmt.config import DecodeConfig
from nmt.decoding.records import Translation
from nmt.decoding.search import between_steps
from nmt.decoding.translator import Translator
from nmt.errors import NmtError

log = logging.getLogger("nmt")


@dataclass(frozen=True)
class Batching:
    """How requests are gathered: the first one waiting, then whatever arrives within
    `max_wait_ms`, up to `batch_tokens` source tokens (None: the model's decode.batch_tokens).
    With `enabled` False each request is decoded on its own. Requests of at most
    `short_tokens` source tokens are decoded between the steps of a longer one; at most
    `max_queue_lines` lines wait (beyond that, only into an empty queue)."""

    enabled: bool = True
    max_wait_ms: float = 5.0
    batch_tokens: int | None = None
    short_tokens: int = 256
    max_queue_lines: int = 4096

    def validate(self) -> None:
        if not (0 <= self.max_wait_ms <= 1000):
            raise NmtError(f"--max-wait-ms must be between 0 and 1000, not {self.max_wait_ms}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise NmtError(f"--batch-tokens must be at least 1, not {self.batch_tokens}")
        if self.short_tokens < 0:
            raise NmtError(f"--short-tokens must be at least 0, not {self.short_tokens}")
        if self.max_queue_lines < 1:
            raise NmtError(f"--max-queue-lines must be at least 1, not {self.max_queue_lines}")


@dataclass(frozen=True)
class Options:
    """A request's decoding options (None: the model's own setting); `settings` are other keys
    of the recipe's decode section, as (name, value) pairs. Requests are decoded together only
    when their options are equal, and a request that gives a sampling seed alone (its samples
    then do not depend on what else was decoded with it)."""

    beam_size: int | None = None
    length_penalty: float | None = None
    nbest: int = 1
    alignment: bool = False
    settings: tuple[tuple[str, Any], ...] = ()
    attention: bool = False

    @property
    def alone(self) -> bool:
        return any(name == "sampling_seed" for name, _ in self.settings)

    def decode_config(self, decode: DecodeConfig) -> DecodeConfig:
        """`decode` with these options, validated as a recipe's decode section is."""
        changes: dict[str, Any] = dict(self.settings)
        if self.beam_size is not None:
            changes.update(method="beam", beam_size=self.beam_size)
        if self.length_penalty is not None:
            changes["length_penalty"] = self.length_penalty
        return config.override_decode(decode, **changes) if changes else decode


def decode_with(
    translator: Translator,
    options: Options,
    lines: list[str],
    prefixes: list[str] | None = None,
    constraints: list[list[str]] | None = None,
) -> list[list[Translation]]:
    """`translator.translate_nbest(lines)` with a request's options, target prefixes and
    constraints (one per line, or None). Not thread-safe: call it from one thread at a time."""
    decode = options.decode_config(translator.decode)
    generator = getattr(translator.engine, "generator", None)
    if options.alone and generator is not None:
        generator.manual_seed(decode.sampling_seed)
    return translator.translate_nbest(
        lines,
        options.nbest,
        alignment=options.alignment,
        attention=options.attention,
        prefixes=prefixes,
        constraints=constraints,
        decode=decode,
    )


DecodeFn = Callable[..., list[list[Translation]]]


class DeadlineExceeded(Exception):
    """The request was not translated within its deadline."""


class Overloaded(Exception):
    """The queue is full; `retry_after` seconds is when it should have room."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} lines are waiting")
        self.waiting, self.retry_after = waiting, retry_after


class _Gone(Exception):
    """Raised between search steps: no request of the search is still wanted."""


@dataclass(eq=False)
class _Job:
    model: str
    decode: DecodeFn
    batch_tokens: int
    lines: list[str]
    tokens: int
    options: Options
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    prefixes: list[str] | None = None  # one per line
    constraints: list[list[str]] | None = None  # one list per line
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # the client went away

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def answer(self, result: Any = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Scheduler:
    """The queue of every served model and the thread that decodes it."""

    def __init__(self, batching: Batching) -> None:
        self.batching = batching
        self.batches = 0  # decode calls made
        self.lines = 0  # lines decoded
        self.interleaved = 0  # decode calls made between the steps of another
        self.expired = 0  # requests answered with DeadlineExceeded
        self.cancelled = 0  # requests dropped because their client went away
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seconds_per_line = 0.01  # a running mean, for Retry-After
        self._nested = False
        self.on_batch: Callable[[int], None] | None = None  # told the lines of each decode call

    # -- the event loop's side -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_forever, name="nmt-decode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def waiting_lines(self) -> int:
        with self._cond:
            return sum(len(job.lines) for job in self._pending)

    async def submit(
        self,
        model: str,
        decode: DecodeFn,
        batch_tokens: int,
        lines: list[str],
        tokens: int,
        options: Options,
        timeout: float,
        prefixes: list[str] | None = None,
        constraints: list[list[str]] | None = None,
    ) -> list[list[Translation]]:
        """Queue `lines` (`tokens` source tokens; target `prefixes` and `constraints` per line,
        or None) and wait for their translations; raises Overloaded when the queue has no room,
        DeadlineExceeded after `timeout` seconds. Cancelling the caller drops the request."""
        loop = asyncio.get_running_loop()
        job = _Job(model, decode, batch_tokens, lines, tokens, options,
                   time.monotonic() + timeout, loop, loop.create_future(),
                   prefixes, constraints)  # fmt: skip
        with self._cond:
            waiting = sum(len(j.lines) for j in self._pending)
            # An empty queue takes any request: one larger than the queue would never fit.
            if waiting and waiting + len(lines) > self.batching.max_queue_lines:
                retry = max(1, math.ceil(waiting * self._seconds_per_line))
                raise Overloaded(waiting, retry)
            self._pending.append(job)
            self._cond.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout + 1.0)
        except asyncio.TimeoutError:  # the thread is busy in one long step: answer anyway
            job.cancelled = True
            raise DeadlineExceeded() from None
        except asyncio.CancelledError:
            job.cancelled = True
            with self._cond:
                self._cond.notify_all()
            raise

    # -- the decoding thread ---------------------------------------------------------------

    def _run_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    for job in self._pending:
                        job.answer(error=DeadlineExceeded())
                    self._pending.clear()
                    return
                self._wait_for_company()
                jobs = self._take(self._pending[0].model, short_only=False)
            self._decode(jobs)

    def _wait_for_company(self) -> None:
        """With the lock held: until the first job has waited max_wait_ms or its batch is full."""
        if not self.batching.enabled:
            return
        first = self._pending[0]
        until = first.arrived + self.batching.max_wait_ms / 1000
        while not self._stopping:
            same = [j for j in self._pending if j.model == first.model]
            if sum(j.tokens for j in same) >= first.batch_tokens:
                return
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self, model: str | None, short_only: bool) -> list[_Job]:
        """With the lock held: remove and return the jobs of one batch, oldest first: the first
        job of `model` (any model when None) and those after it up to its token budget;
        `short_only`: only jobs of at most `short_tokens` tokens. Jobs no longer wanted are
        dropped (and answered) on the way."""
        now, taken, tokens, kept = time.monotonic(), [], 0, []
        budget: int | None = None
        for job in self._pending:
            if job.cancelled or job.expired(now):
                self._drop(job, now)
                continue
            fits = (
                (model is None or job.model == model)
                and (not short_only or job.tokens <= self.batching.short_tokens)
                and (budget is None or (self.batching.enabled and tokens + job.tokens <= budget))
            )
            if fits and (budget is None or job.model == taken[0].model):
                if budget is None:
                    budget = job.batch_tokens
                taken.append(job)
                tokens += job.tokens
            else:
                kept.append(job)
        self._pending = kept
        return taken

    def _drop(self, job: _Job, now: float) -> None:
        if job.cancelled:  # nobody waits for an answer
            self.cancelled += 1
        else:
            self.expired += 1
            job.answer(error=DeadlineExceeded())

    def _decode(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            key = (job.model, job.options, id(job) if job.options.alone else None)
            groups.setdefault(key, []).append(job)
        for (_, options, _), group in groups.items():
            self._decode_group(options, group)

    def _decode_group(self, options: Options, group: list[_Job]) -> None:
        now = time.monotonic()
        wanted = [job for job in group if not (job.cancelled or job.expired(now))]
        for job in group:
            if job not in wanted:
                self._drop(job, now)
        if not wanted:
            return
        lines = [line for job in wanted for line in job.lines]
        prefixes = constraints = None
        if any(job.prefixes for job in wanted):
            prefixes = [p for job in wanted for p in job.prefixes or [""] * len(job.lines)]
        if any(job.constraints for job in wanted):
            constraints = [c for job in wanted for c in job.constraints or [[]] * len(job.lines)]
        hook = None if self._nested else partial(self._between_steps, wanted)
        started = time.monotonic()
        try:
            with between_steps(hook):
                results = wanted[0].decode(options, lines, prefixes, constraints)
        except _Gone:
            return
        except Exception as e:
            if len(wanted) > 1:
                # One request's lines may be what fails: decode each on its own, so that only
                # that request gets the error.
                for job in wanted:
                    self._decode_group(options, [job])
                return
            if not isinstance(e, NmtError):  # an NmtError is the request's fault: no traceback
                log.exception("decoding failed")
            wanted[0].answer(error=e)
            return
        elapsed = time.monotonic() - started
        self._seconds_per_line = 0.8 * self._seconds_per_line + 0.2 * elapsed / len(lines)
        self.batches += 1
        self.lines += len(lines)
        if self.on_batch is not None:
            self.on_batch(len(lines))
        start = 0
        for job in wanted:
            job.answer(results[start : start + len(job.lines)])
            start += len(job.lines)

    def _between_steps(self, group: list[_Job]) -> None:
        """Between two steps of `group`'s search: give up if none of its requests is wanted,
        else, if the group holds a long request, decode the short requests that have waited
        max_wait_ms (a batch of short ones runs to its end: breaking into it would only make
        more, smaller batches)."""
        now = time.monotonic()
        if all(job.cancelled or job.expired(now) for job in group):
            for job in group:
                self._drop(job, now)
            raise _Gone()
        if not self._pending:  # read without the lock: a stale answer costs one step
            return
        if all(job.tokens <= self.batching.short_tokens for job in group):
            return
        if now - self._pending[0].arrived < self.batching.max_wait_ms / 1000:
            return  # let company gather
        with self._cond:
            short = self._take(None, short_only=True)
        if not short:
            return
        self.interleaved += 1
        self._nested = True
        try:
            self._decode(short)
        finally:
            self._nested = False
