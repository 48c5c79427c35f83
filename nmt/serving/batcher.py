"""Dynamic batching for `nmt serve`: each served model has a queue; its batcher takes the first
request queued, then whatever arrives within `max_wait_ms`, up to `batch_tokens` source tokens,
groups those requests by decoding options and decodes each group with one
`Translator.translate_nbest` call on the one decoding thread. Needs nothing of FastAPI."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from nmt.decoding.records import Translation
from nmt.decoding.translator import Translator
from nmt.errors import NmtError

log = logging.getLogger("nmt")


@dataclass(frozen=True)
class Batching:
    """How a batcher gathers requests: the first one queued, then whatever arrives within
    `max_wait_ms`, up to `batch_tokens` source tokens (None: the model's decode.batch_tokens).
    With `enabled` False each request is decoded on its own."""

    enabled: bool = True
    max_wait_ms: float = 5.0
    batch_tokens: int | None = None

    def validate(self) -> None:
        if not (0 <= self.max_wait_ms <= 1000):
            raise NmtError(f"--max-wait-ms must be between 0 and 1000, not {self.max_wait_ms}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise NmtError(f"--batch-tokens must be at least 1, not {self.batch_tokens}")


@dataclass(frozen=True)
class Options:
    """A request's decoding options (None: the model's own setting). Requests are decoded
    together only when their options are equal."""

    beam_size: int | None = None
    length_penalty: float | None = None
    nbest: int = 1
    alignment: bool = False


def decode_with(
    translator: Translator, options: Options, lines: list[str]
) -> list[list[Translation]]:
    """`translator.translate_nbest(lines)` with a request's options. Not thread-safe: call it
    from one thread at a time."""
    changes: dict[str, Any] = {}
    if options.beam_size is not None:
        changes.update(method="beam", beam_size=options.beam_size)
    if options.length_penalty is not None:
        changes["length_penalty"] = options.length_penalty
    decode = dataclasses.replace(translator.decode, **changes) if changes else None
    return translator.translate_nbest(
        lines, options.nbest, alignment=options.alignment, decode=decode
    )


DecodeFn = Callable[[Options, list[str]], list[list[Translation]]]


@dataclass
class _Job:
    lines: list[str]
    tokens: int
    options: Options
    future: asyncio.Future


class Batcher:
    """One model's queue, and the loop that gathers and decodes what it holds."""

    def __init__(self, decode: DecodeFn, batch_tokens: int, batching: Batching) -> None:
        self.decode = decode
        self.batch_tokens = batch_tokens
        self.batching = batching
        self.batches = 0  # decode calls made
        self.lines = 0  # lines decoded
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._held: _Job | None = None  # gathered but over the budget: the next batch's first

    async def submit(
        self, lines: list[str], tokens: int, options: Options
    ) -> list[list[Translation]]:
        """Queue `lines` (`tokens` source tokens) and wait for their translations."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(lines, tokens, options, future))
        return await future

    async def run(self, executor: Executor) -> None:
        """Gather and decode (on `executor`) until cancelled."""
        while True:
            jobs = await self._gather()
            groups: dict[Options, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.options, []).append(job)
            for options, group in groups.items():
                await self._decode(executor, options, group)

    async def _gather(self) -> list[_Job]:
        if self._held is not None:
            first, self._held = self._held, None
        else:
            first = await self._queue.get()
        jobs, tokens = [first], first.tokens
        if not self.batching.enabled:
            return jobs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batching.max_wait_ms / 1000
        while tokens < self.batch_tokens:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if tokens + job.tokens > self.batch_tokens:
                self._held = job
                break
            jobs.append(job)
            tokens += job.tokens
        return jobs

    async def _decode(self, executor: Executor, options: Options, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # a cancelled request is skipped
        if not jobs:
            return
        lines = [line for job in jobs for line in job.lines]
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(executor, self.decode, options, lines)
        except Exception as e:
            if len(jobs) > 1:
                # One request's lines may be what fails: decode each on its own, so that only
                # that request gets the error.
                for job in jobs:
                    await self._decode(executor, options, [job])
                return
            log.exception("decoding failed")
            if not jobs[0].future.done():
                jobs[0].future.set_exception(e)
            return
        self.batches += 1
        self.lines += len(lines)
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.lines)])
            start += len(job.lines)
