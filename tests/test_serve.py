"""`nmt serve`: the real server in a child process, spoken to over HTTP on a loopback port, and
the batcher on its own (no server) with a recording stand-in for the model."""

from __future__ import annotations

import asyncio
import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import default_sigint  # noqa: E402
from test_cli import assert_user_error, nmt  # noqa: E402

from nmt.decoding.records import Translation  # noqa: E402
from nmt.decoding.search import pause  # noqa: E402
from nmt.decoding.translator import Translator  # noqa: E402
from nmt.serving.batcher import (  # noqa: E402
    Batching,
    DeadlineExceeded,
    Options,
    Overloaded,
    Scheduler,
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds, for every HTTP call and wait
# The test server's limits: small, so that requests over them stay small.
LIMITS = ["--max-lines", "64", "--max-line-chars", "300", "--max-body-bytes", "10000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`nmt serve RUN` on a free loopback port; returns once /health answers."""
    port = free_port()
    # One torch thread, here and for the reference translations: the same arithmetic, and no
    # threads spinning against each other on a busy machine.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nmt", "serve", str(run), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--device", "cpu", *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=default_sigint,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    proc, url = start_server(
        trained_run, tmp_path_factory.mktemp("serve") / "server.log", *LIMITS, "--max-wait-ms", "20"
    )
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def sources(small_corpus) -> list[str]:
    return (small_corpus / "test.en").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def offline(trained_run):
    """The library's translations, for comparison: `offline(lines, **decode_overrides)`."""
    import torch

    def translate(lines: list[str], nbest: int = 1, alignment: bool = False, **overrides):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            translator = Translator.load(trained_run, device="cpu", **overrides)
            return translator.translate_nbest(lines, nbest, alignment)
        finally:
            torch.set_num_threads(threads)

    return translate


def post(url: str, body: dict | bytes, client: httpx.Client | None = None) -> httpx.Response:
    send = client.post if client is not None else httpx.post
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        return send(f"{url}/translate", content=body, headers=headers, timeout=TIMEOUT)
    return send(f"{url}/translate", json=body, timeout=TIMEOUT)


def test_translations_equal_the_library_s(server, sources, offline):
    lines = sources[:12] + [""] + sources[12:20]
    response = post(server, {"text": lines})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["translations"] == [best[0].text for best in offline(lines)]
    assert "nbest" not in body

    response = post(server, {"text": lines[:6], "nbest": 2, "beam_size": 4, "alignment": True})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = offline(lines[:6], nbest=2, alignment=True, beam_size=4)
    assert body["translations"] == [best[0].text for best in expected]
    for got, want in zip(body["nbest"], expected):
        assert [h["translation"] for h in got] == [t.text for t in want]
        assert [h["alignment"] for h in got] == [t.alignment for t in want]
        assert [h["score"] for h in got] == pytest.approx([t.score for t in want], abs=1e-4)
    assert body["source_tokens"][0][-1] == "</s>"


def test_concurrent_requests_each_get_their_own_lines(server, sources, offline):
    # Requests of different sizes, a third with another beam: 16 at once, as one batch or more.
    requests = [
        {"text": [sources[(3 * i + k) % len(sources)] for k in range(1 + i % 4)]}
        | ({"beam_size": 1} if i % 3 == 0 else {})
        for i in range(16)
    ]
    wanted = {
        beam: {s: best[0].text for s, best in zip(sources, offline(sources, beam_size=beam))}
        for beam in (1, 3)
    }
    barrier = threading.Barrier(len(requests), timeout=TIMEOUT)
    answers: list = [None] * len(requests)

    def send(i: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            answers[i] = post(server, requests[i], client)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    for request, answer in zip(requests, answers):
        assert answer is not None and answer.status_code == 200, answer
        beam = request.get("beam_size", 3)
        assert answer.json()["translations"] == [wanted[beam][s] for s in request["text"]]


@pytest.mark.parametrize(
    "body, status, limit",
    [
        ({"text": ["A dog."] * 65}, 413, "max_lines"),
        ({"text": ["A dog.", "a" * 301]}, 413, "max_line_chars"),
        ({"text": ["a" * 250] * 40}, 413, "max_body_bytes"),
        # Far over the body limit: still a 413 answer, not a reset connection.
        ({"text": ["a" * 250] * 800}, 413, "max_body_bytes"),
        ({"text": ["A dog."], "beam_size": 17}, 422, "max_beam_size"),
        ({"text": ["A dog."], "nbest": 17}, 422, "max_beam_size"),
        ({"text": ["A dog."], "length_penalty": 50}, 422, None),
        ({"text": ["A dog."], "beam_size": 0}, 422, None),
        ({"text": "A dog."}, 422, None),
        ({"text": [1, 2]}, 422, None),
        ({"text": ["A dog."], "beam_size": "4"}, 422, None),
        ({"text": ["A dog."], "beam": 4}, 422, None),
        ({"lines": ["A dog."]}, 422, None),
        (b'{"text": ["A dog."', 422, None),
        (b"[]", 422, None),
        (b"\xff\xfe", 422, None),
        ({"text": ["A dog."], "model": "nope"}, 404, None),
    ],
)
def test_a_bad_request_gets_a_4xx_and_the_next_is_answered(server, sources, body, status, limit):
    with httpx.Client() as client:
        response = post(server, body, client)
        assert response.status_code == status, response.text
        error = response.json()
        assert isinstance(error["error"], str) and error["error"]
        assert "\n" not in error["error"]
        assert error.get("limit") == limit
        if limit is not None:
            assert limit in error["error"]
        good = post(server, {"text": sources[:2]}, client)
        assert good.status_code == 200, good.text
        assert len(good.json()["translations"]) == 2


@pytest.mark.parametrize(
    "body, fragment",
    [
        (
            b'{"text": ["A horse \\ud800 found a table."]}',
            "text[0] holds a lone surrogate (U+D800)",
        ),
        ('{"text": ["A caf\u00e9."]}'.encode("latin-1"), "not UTF-8 (byte 17 is 0xe9)"),
        (b"[" * 4000 + b"]" * 4000, "nests JSON arrays or objects too deeply"),
        (b'{"text": ["A dog."], "beam_size": 1' + b"0" * 5000 + b"}", "too many digits"),
        (b'{"text": ["A dog."], "beam_size": 1' + b"0" * 400 + b"}", "beam_size is over the limit"),
        (b'{"text": ["A dog."], "length_penalty": NaN}', "finite number"),
        (b'{"text": ["A dog."], "length_penalty": Infinity}', "finite number"),
    ],
)
def test_malformed_bodies_get_a_422_naming_the_problem(server, sources, body, fragment):
    with httpx.Client() as client:
        response = post(server, body, client)
        assert response.status_code == 422, response.text
        message = response.json()["error"]
        assert fragment in message and len(message) < 300, message
        assert post(server, {"text": sources[:1]}, client).status_code == 200


def test_health_answers_while_a_long_request_decodes(server, sources):
    long_lines = [" ".join(sources[i : i + 4]) for i in range(40)]
    done: dict = {}

    def send() -> None:
        start = time.monotonic()
        done["response"] = post(server, {"text": long_lines, "beam_size": 4})
        done["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=send)
    thread.start()
    probes = []
    with httpx.Client(base_url=server, timeout=TIMEOUT) as client:
        while thread.is_alive() and len(probes) < 5:
            start = time.monotonic()
            health = client.get("/health").json()
            probes.append((time.monotonic() - start, health["in_flight"]))
    thread.join(timeout=TIMEOUT)
    assert done["response"].status_code == 200
    during = [seconds for seconds, in_flight in probes if in_flight == 1]
    # Two probes answered inside one request show that health does not queue behind decoding;
    # a third is not asked for, as a loaded machine can finish the request before it.
    assert len(during) >= 2, probes
    assert max(during) < done["seconds"] / 2, (probes, done["seconds"])


def heavy(sources: list[str]) -> dict:
    """A legal request that decodes for seconds on the test server (30 lines of 300
    characters, beam 16, 16-best, alignments: about 2.6 s on one core)."""
    line = " ".join(sources)[:300]
    return {"text": [line] * 30, "beam_size": 16, "nbest": 16, "alignment": True}


def in_background(url: str, body: dict, **options) -> tuple[threading.Thread, dict]:
    done: dict = {}

    def send() -> None:
        start = time.monotonic()
        try:
            done["response"] = httpx.post(f"{url}/translate", json=body, **options)
        except httpx.TransportError as e:
            done["error"] = e
        done["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=send)
    thread.start()
    return thread, done


def wait_until(url: str, condition, what: str, limit: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + limit
    while True:
        health = httpx.get(f"{url}/health", timeout=TIMEOUT).json()
        if condition(health):
            return health
        assert time.monotonic() < deadline, f"{what}: {health}"
        time.sleep(0.02)


def test_a_long_request_does_not_stall_short_ones(server, sources):
    thread, done = in_background(server, heavy(sources), timeout=TIMEOUT)
    wait_until(server, lambda h: h["in_flight"] >= 1, "the long request never arrived")
    latencies = []
    with httpx.Client(base_url=server, timeout=TIMEOUT) as client:
        for line in sources[:5]:
            start = time.monotonic()
            answer = client.post("/translate", json={"text": [line]})
            latencies.append(time.monotonic() - start)
            assert answer.status_code == 200
        still_running = thread.is_alive()
    thread.join(TIMEOUT)
    assert done["response"].status_code == 200
    # Answered between the long request's steps, not after it.
    assert still_running, (latencies, done["seconds"])
    assert sum(latencies) < done["seconds"], (latencies, done["seconds"])
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).json()["interleaved"] >= 1


def test_a_request_past_its_deadline_gets_504(server, sources):
    start = time.monotonic()
    answer = post(server, {**heavy(sources), "timeout": 0.3})
    assert answer.status_code == 504, answer.text
    assert "deadline (0.3 s)" in answer.json()["error"]
    assert time.monotonic() - start < 2.0
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).json()["expired"] >= 1
    assert post(server, {"text": sources[:1]}).status_code == 200
    over = post(server, {"text": sources[:1], "timeout": 1e6})
    assert over.status_code == 422 and over.json()["limit"] == "timeout"


def test_a_client_that_hangs_up_is_not_decoded_further(server, sources):
    before = httpx.get(f"{server}/health", timeout=TIMEOUT).json()["cancelled"]
    thread, done = in_background(server, heavy(sources), timeout=0.5)
    thread.join(TIMEOUT)
    assert isinstance(done.get("error"), httpx.TimeoutException), done
    # The request would decode for seconds more; it is dropped instead.
    wait_until(server, lambda h: h["in_flight"] == 0, "still decoding", limit=1.5)
    wait_until(server, lambda h: h["cancelled"] > before, "not counted as cancelled", limit=1.5)


def test_a_full_queue_answers_503_with_retry_after(trained_run, sources, tmp_path):
    options = ("--max-queue-lines", "2", "--short-tokens", "0", "--max-wait-ms", "0", *LIMITS)
    proc, url = start_server(trained_run, tmp_path / "server.log", *options)
    try:
        thread, _ = in_background(url, heavy(sources), timeout=TIMEOUT)
        wait_until(url, lambda h: h["in_flight"] >= 1, "the long request never arrived")
        waiting, _ = in_background(url, {"text": sources[:2]}, timeout=TIMEOUT)
        wait_until(url, lambda h: h["waiting_lines"] == 2, "the second request is not waiting")
        refused = post(url, {"text": sources[:1]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["limit"] == "max_queue_lines"
        assert int(refused.headers["retry-after"]) >= 1
        thread.join(TIMEOUT)
        waiting.join(TIMEOUT)
    finally:
        stop_server(proc)


def test_request_character_cap_and_truncated_lines(trained_run, sources):
    from fastapi.testclient import TestClient

    from nmt.serving.app import Limits, create_app, load_models

    limits = Limits(max_line_chars=20_000, max_request_chars=30_000, max_body_bytes=200_000)
    long_line = " ".join(sources * 3)[:6000]  # far over the model's 1,023 source tokens
    with TestClient(create_app(load_models([trained_run], device="cpu"), limits)) as client:
        over = client.post("/translate", json={"text": [long_line] * 6})
        assert over.status_code == 413 and over.json()["limit"] == "max_request_chars"
        answer = client.post("/translate", json={"text": [sources[0], long_line], "beam_size": 1})
        assert answer.status_code == 200, answer.text
        assert answer.json()["truncated"] == [1]  # said to the client, not only in the log
        plain = client.post("/translate", json={"text": sources[:2]}).json()
        assert "truncated" not in plain


def test_models_health_and_openapi(server, trained_run):
    models = httpx.get(f"{server}/models", timeout=TIMEOUT).json()
    [model] = models["models"]
    translator = Translator.load(trained_run, device="cpu")
    assert model["name"] == trained_run.name
    assert (model["source_language"], model["target_language"]) == ("en", "de")
    assert model["parameters"] == sum(p.numel() for p in translator.model.parameters())
    assert model["attention"] == {
        "encoder": "multihead",
        "decoder": "multihead",
        "cross": "multihead",
    }
    assert model["decode"]["beam_size"] == 3 and model["decode"]["method"] == "beam"
    assert models["limits"]["max_lines"] == 64 and models["limits"]["max_body_bytes"] == 10000

    health = httpx.get(f"{server}/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["models"] == [trained_run.name]

    schema = httpx.get(f"{server}/openapi.json", timeout=TIMEOUT).json()
    assert {"/translate", "/health", "/models"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["TranslateRequest"]
    assert {"text", "model", "beam_size", "nbest", "length_penalty"} <= set(request["properties"])
    missing = httpx.get(f"{server}/nowhere", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_answers_the_requests_in_flight(trained_run, sources, offline, tmp_path, sig):
    # Batches wait up to a second for company: the requests are surely in flight at the signal.
    log = tmp_path / "server.log"
    proc, url = start_server(trained_run, log, "--max-wait-ms", "1000")
    try:
        requests = [sources[2 * i : 2 * i + 2] for i in range(8)]
        answers: list = [None] * len(requests)

        def send(i: int) -> None:
            answers[i] = post(url, {"text": requests[i]})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        while httpx.get(f"{url}/health", timeout=TIMEOUT).json()["in_flight"] < len(requests):
            assert time.monotonic() < deadline, "the requests never arrived"
            time.sleep(0.02)
        proc.send_signal(sig)
        for t in threads:
            t.join(timeout=TIMEOUT)
        # A stop asked for is a clean exit, whichever signal asked (SIGTERM gave 143).
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()
    finally:
        stop_server(proc)
    wanted = {s: best[0].text for s, best in zip(sources, offline(sources))}
    for request, answer in zip(requests, answers):
        assert answer is not None and answer.status_code == 200, answer
        assert answer.json()["translations"] == [wanted[s] for s in request]
        # Answered during the shutdown: the client must not reuse the connection.
        assert answer.headers.get("connection") == "close", answer.headers
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)


@pytest.mark.timeout(120)  # a mistake here would serve forever; fail instead
def test_serve_refuses_bad_arguments(trained_run, tmp_path, monkeypatch):
    assert_user_error(nmt("serve", trained_run, "--max-lines", "0"), "--max-lines")
    assert_user_error(nmt("serve", trained_run, "--max-wait-ms", "-1"), "--max-wait-ms")
    assert_user_error(nmt("serve", tmp_path), "no checkpoint")
    assert_user_error(nmt("serve", trained_run, trained_run), "two models are named")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_user_error(nmt("serve", trained_run, "--port", port), "cannot listen", port)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import now fails
    monkeypatch.delitem(sys.modules, "nmt.serving.app")
    assert_user_error(nmt("serve", trained_run), "pip install 'nmt[serve]'")


# The scheduler on its own: a stand-in model that upper-cases lines and records each call; a
# line "slow:N" takes N steps of 10 ms, calling the between-steps hook as a search does.


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[Options, list[str]]] = []
        self.fail_on = fail_on
        self.steps = 0  # steps taken by slow lines
        self.finished: list[str] = []  # lines, in the order their decode returned

    def __call__(self, options: Options, lines: list[str], *guides) -> list[list[Translation]]:
        self.calls.append((options, list(lines)))
        if self.fail_on in lines:
            raise RuntimeError("this line breaks the model")
        for line in lines:
            if line.startswith("slow:"):
                for _ in range(int(line[5:])):
                    pause()
                    time.sleep(0.01)
                    self.steps += 1
        self.finished += lines
        return [[Translation(line.upper(), 0.0, 0.0)] for line in lines]


def run_scheduler(decode, requests, batch_tokens=1000, batching=None, then=None) -> list:
    """Submit all `requests` ((lines, tokens, options[, timeout, delay]) each) at once, each
    after its delay in seconds; then the `then` ones. Returns results or exceptions."""

    async def main() -> list:
        scheduler = Scheduler(batching or Batching(max_wait_ms=50))
        scheduler.start()

        async def one(lines, tokens, options, timeout=TIMEOUT, delay=0.0):
            await asyncio.sleep(delay)
            return await scheduler.submit(
                "m", decode, batch_tokens, lines, tokens, options, timeout
            )

        try:
            results = []
            for group in (requests, then or []):
                gathered = asyncio.gather(*(one(*r) for r in group), return_exceptions=True)
                results += await asyncio.wait_for(gathered, TIMEOUT)
            return results
        finally:
            await asyncio.to_thread(scheduler.stop)

    return asyncio.run(main())


def texts(result) -> list[str]:
    return [best[0].text for best in result]


def test_batcher_decodes_queued_requests_together():
    decode = Recorder()
    requests = [([f"a{i}", f"b{i}"], 4, Options()) for i in range(16)]
    results = run_scheduler(decode, requests)
    assert [texts(r) for r in results] == [[f"A{i}", f"B{i}"] for i in range(16)]
    assert len(decode.calls) == 1 and len(decode.calls[0][1]) == 32


def test_batcher_keeps_to_its_token_budget():
    decode = Recorder()
    requests = [([f"s{i}"], 4, Options()) for i in range(5)]
    results = run_scheduler(decode, requests, batch_tokens=10)
    assert [texts(r) for r in results] == [[f"S{i}"] for i in range(5)]
    assert [lines for _, lines in decode.calls] == [["s0", "s1"], ["s2", "s3"], ["s4"]]


def test_batcher_decodes_other_options_apart():
    decode = Recorder()
    wide, aligned = Options(beam_size=8), Options(nbest=2, alignment=True)
    requests = [(["x"], 2, Options()), (["y"], 2, wide), (["z"], 2, Options()), (["w"], 2, aligned)]
    results = run_scheduler(decode, requests)
    assert [texts(r) for r in results] == [["X"], ["Y"], ["Z"], ["W"]]
    assert decode.calls == [(Options(), ["x", "z"]), (wide, ["y"]), (aligned, ["w"])]


def test_batcher_without_batching_decodes_each_request_alone():
    decode = Recorder()
    requests = [([f"s{i}"], 1, Options()) for i in range(4)]
    run_scheduler(decode, requests, batching=Batching(enabled=False))
    assert [lines for _, lines in decode.calls] == [["s0"], ["s1"], ["s2"], ["s3"]]


def test_a_failing_request_fails_alone_and_the_batcher_goes_on():
    decode = Recorder(fail_on="boom")
    requests = [(["a"], 2, Options()), (["boom"], 2, Options()), (["c"], 2, Options())]
    results = run_scheduler(decode, requests, then=[(["d"], 2, Options())])
    assert texts(results[0]) == ["A"] and texts(results[2]) == ["C"]
    assert isinstance(results[1], RuntimeError)
    assert texts(results[3]) == ["D"]


def test_short_requests_are_decoded_between_the_steps_of_a_long_one():
    decode = Recorder()
    long = (["slow:100"], 5000, Options(beam_size=16))  # 1 s of steps, over short_tokens
    shorts = [([f"s{i}"], 3, Options(), TIMEOUT, 0.1 + 0.1 * i) for i in range(3)]
    results = run_scheduler(decode, [long, *shorts])
    assert texts(results[0]) == ["SLOW:100"] and [texts(r) for r in results[1:]] == [
        ["S0"],
        ["S1"],
        ["S2"],
    ]
    # Each short request was answered while the long one was still decoding.
    assert decode.finished == ["s0", "s1", "s2", "slow:100"], decode.finished


def test_a_request_past_its_deadline_is_answered_and_its_search_stops():
    decode = Recorder()
    results = run_scheduler(decode, [(["slow:500"], 10, Options(), 0.3)])
    assert isinstance(results[0], DeadlineExceeded)
    assert decode.steps < 100  # 5 s of steps asked for; stopped after about 0.3 s


def test_a_request_whose_client_left_stops_its_search():
    decode = Recorder()

    async def main() -> Scheduler:
        scheduler = Scheduler(Batching(max_wait_ms=0))
        scheduler.start()
        try:
            task = asyncio.ensure_future(
                scheduler.submit("m", decode, 1000, ["slow:500"], 10, Options(), TIMEOUT)
            )
            await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.2)
            return scheduler
        finally:
            await asyncio.to_thread(scheduler.stop)

    scheduler = asyncio.run(main())
    assert scheduler.cancelled == 1 and decode.steps < 100 and decode.finished == []


def test_a_full_queue_refuses_with_the_time_to_retry():
    decode = Recorder()
    batching = Batching(max_wait_ms=0, max_queue_lines=3, short_tokens=0)
    requests = [
        (["slow:30"], 10, Options()),  # decoding: not waiting
        (["a", "b"], 2, Options(), TIMEOUT, 0.1),  # waits: 2 lines
        (["c", "d"], 2, Options(), TIMEOUT, 0.15),  # 2 more: over 3
    ]
    results = run_scheduler(decode, requests, batching=batching)
    assert texts(results[0]) == ["SLOW:30"] and texts(results[1]) == ["A", "B"]
    assert isinstance(results[2], Overloaded) and results[2].waiting == 2
    assert results[2].retry_after >= 1


# -- fuzzing the app in this process (no network): never a 5xx, always a JSON body ----------

# Lone surrogates are frequent: JSON's \ud800 escapes carry them, and they once made a 500.
_char = st.one_of(
    st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.just("a")
)
_text = st.text(alphabet=_char, max_size=70)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_requests = st.fixed_dictionaries(
    {"text": st.one_of(st.lists(_text, max_size=5), _json)},
    optional={
        name: st.one_of(st.integers(-2, 20), st.integers(), st.floats(allow_nan=True), _json)
        for name in ("beam_size", "nbest", "length_penalty")
    }
    | {name: st.one_of(st.booleans(), _json) for name in ("scores", "alignment")}
    | {"model": st.one_of(st.text(max_size=8), _json)},
)
# LibreTranslate's shape, which the same /translate path takes.
_libre = st.fixed_dictionaries(
    {"q": st.one_of(_text, st.lists(_text, max_size=5), _json)},
    optional={
        name: st.one_of(st.sampled_from(["en", "de", "auto", "fr"]), _json)
        for name in ("source", "target", "format", "api_key")
    }
    | {"alternatives": st.one_of(st.integers(-3, 20), st.integers(), _json)},
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def app_client(trained_run):
    from fastapi.testclient import TestClient

    from nmt.serving.app import Limits, create_app, load_models

    limits = Limits(max_lines=4, max_line_chars=60, max_body_bytes=4000)
    with TestClient(create_app(load_models([trained_run], device="cpu"), limits)) as client:
        yield client


def _assert_answered(client, body: bytes, content_type: str = "application/json") -> None:
    response = client.post("/translate", content=body, headers={"content-type": content_type})
    # The documented statuses only: no 5xx, and no 400 "error parsing the body" either (400 is
    # LibreTranslate's answer to a bad request in its shape).
    libre = b'"q"' in body or content_type == "application/x-www-form-urlencoded"
    allowed = (200, 400, 404, 413, 422) if libre else (200, 404, 413, 422)
    assert response.status_code in allowed, (body[:200], response.text)
    answer = response.json()  # a JSON body, whatever the status
    if response.status_code == 200 and "translatedText" in answer:  # LibreTranslate's shape
        assert libre and isinstance(answer["translatedText"], (str, list))
    elif response.status_code == 200:
        assert isinstance(answer["translations"], list)
    else:
        assert isinstance(answer["error"], str) and answer["error"] and "\n" not in answer["error"]
    good = client.post("/translate", json={"text": ["A dog."]})
    assert good.status_code == 200 and len(good.json()["translations"]) == 1


@FUZZ
@given(st.one_of(_requests, _libre, _json))
def test_fuzz_any_json_gets_an_answer_and_no_5xx(app_client, value):
    _assert_answered(app_client, json.dumps(value).encode("utf-8"))


@FUZZ
@given(
    st.binary(max_size=300),
    st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]),
)
def test_fuzz_any_bytes_get_an_answer_and_no_5xx(app_client, body, content_type):
    _assert_answered(app_client, body, content_type)


# -- access and observability, in this process -----------------------------------------------


def _client_for(trained_run, **options):
    from fastapi.testclient import TestClient

    from nmt.serving.app import create_app, load_models

    return TestClient(create_app(load_models([trained_run], device="cpu"), **options))


def test_api_keys_and_rate_limits(trained_run, tmp_path):
    from nmt.serving.access import Access, KeyRing, RateLimiter

    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nalpha-key\n\nbeta-key\n")
    access = Access(KeyRing.from_file(keys), RateLimiter(3))
    body = {"text": ["A dog."]}
    with _client_for(trained_run, access=access) as client:
        missing = client.post("/translate", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/translate", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and "not accepted" in wrong.json()["error"]
        alpha = {"Authorization": "Bearer alpha-key"}
        assert [
            client.post("/translate", json=body, headers=alpha).status_code for _ in range(3)
        ] == [200] * 3
        over = client.post("/translate", json=body, headers=alpha)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert "3 requests a minute" in over.json()["error"]
        # Another key has its own allowance; health and readiness need no key.
        beta = client.post("/translate", json=body, headers={"X-API-Key": "beta-key"})
        assert beta.status_code == 200
        assert client.get("/models").status_code == 401
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    assert_user_error(nmt("serve", trained_run, "--api-keys", tmp_path / "none"), "--api-keys")


def test_cors_origins(trained_run):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    with _client_for(trained_run, cors_origins=["https://example.org"]) as client:
        allowed = client.options("/translate", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://example.org"
        answer = client.post(
            "/translate", json={"text": ["A dog."]}, headers={"Origin": "https://example.org"}
        )
        assert answer.headers["access-control-allow-origin"] == "https://example.org"
        other = client.options(
            "/translate", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
    with _client_for(trained_run) as client:  # no origins given: no CORS headers at all
        answer = client.post(
            "/translate", json={"text": ["A dog."]}, headers={"Origin": "https://example.org"}
        )
        assert "access-control-allow-origin" not in answer.headers


def test_prometheus_metrics_and_readiness(trained_run):
    pytest.importorskip("prometheus_client")
    with _client_for(trained_run, metrics=True) as client:
        assert client.post("/translate", json={"text": ["A dog.", "A cat."]}).status_code == 200
        assert client.post("/translate", json={"text": "A dog."}).status_code == 422
        text = client.get("/metrics").text
        assert 'nmt_requests_total{endpoint="/translate",status="200"} 1.0' in text
        assert 'nmt_errors_total{status="422"} 1.0' in text
        assert "nmt_lines_total 2.0" in text and "nmt_batch_lines_count 1.0" in text
        assert 'nmt_request_seconds_count{endpoint="/translate"} 2.0' in text
        assert "nmt_queue_lines 0.0" in text and "nmt_in_flight" in text
        assert client.get("/ready").json() == {"status": "ready"}
        client.app.state.service.stop()
        stopping = client.get("/ready")
        assert stopping.status_code == 503 and stopping.json()["error"] == "stopping"
    with _client_for(trained_run) as client:  # without --metrics there is no /metrics
        assert client.get("/metrics").status_code == 404


# -- LibreTranslate's API, spoken by its own Python client ------------------------------------


def test_libretranslate_client_gets_our_translations(server, sources, offline):
    libretranslatepy = pytest.importorskip("libretranslatepy")
    client = libretranslatepy.LibreTranslateAPI(server)
    wanted = [best[0].text for best in offline(sources[:3])]
    assert [client.translate(line, "en", "de") for line in sources[:3]] == wanted
    assert client.languages() == [{"code": "en", "name": "English", "targets": ["de"]}]
    # The same under /libretranslate/, for clients that take a base URL.
    prefixed = libretranslatepy.LibreTranslateAPI(f"{server}/libretranslate/")
    assert prefixed.translate(sources[0], "auto", "de") == wanted[0]
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        client.translate(sources[0], "en", "fr")
    assert refused.value.code == 400
    assert "en->fr is not served" in json.loads(refused.value.read())["error"]


def test_libretranslate_json_lists_alternatives_and_keys(trained_run, sources, offline, tmp_path):
    from nmt.serving.access import Access, KeyRing

    keys = tmp_path / "keys"
    keys.write_text("secret\n")
    with _client_for(trained_run, access=Access(KeyRing.from_file(keys))) as client:
        body = {"q": sources[:2], "source": "auto", "target": "de", "alternatives": 2}
        assert client.post("/translate", json=body).status_code == 401
        answer = client.post("/translate", json={**body, "api_key": "secret"})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["translatedText"] == [best[0].text for best in offline(sources[:2])]
        assert [len(a) for a in result["alternatives"]] == [2, 2]
        assert result["detectedLanguage"][0] == {"confidence": 100.0, "language": "en"}
        form = client.post(
            "/translate",
            data={"q": sources[0], "source": "en", "target": "de", "api_key": "secret"},
        )
        assert form.json() == {"translatedText": result["translatedText"][0]}
        html = client.post("/translate", json={**body, "api_key": "secret", "format": "html"})
        assert html.status_code == 400 and "format" in html.json()["error"]
        # Our own API on the same path is untouched.
        ours = client.post(
            "/translate", json={"text": sources[:1]}, headers={"X-API-Key": "secret"}
        )
        assert ours.json()["translations"] == result["translatedText"][:1]


def test_per_request_prefixes_constraints_lengths_and_sampling(trained_run, sources, offline):
    lines = sources[:3]
    with _client_for(trained_run) as client:

        def ask(**body):
            answer = client.post("/translate", json={"text": lines, **body})
            assert answer.status_code == 200, answer.text
            return answer.json()["translations"]

        base = [best[0].text for best in offline(lines)]
        prefixes = [" ".join(t.split()[:2]) for t in base]
        with_prefix = ask(prefixes=prefixes)
        assert all(t.startswith(p) for t, p in zip(with_prefix, prefixes))
        word = base[0].split()[-1]
        constrained = ask(constraints=[[word], [], [word]])
        assert word in constrained[0] and word in constrained[2]
        short = ask(max_len_a=0.0, max_len_b=2)
        assert short == [best[0].text for best in offline(lines, max_len_a=0.0, max_len_b=2)]
        assert all(len(s) < len(b) for s, b in zip(short, base))
        sampled = ask(method="sample", temperature=1.5, seed=7)
        assert sampled == ask(method="sample", temperature=1.5, seed=7)  # reproducible
        wanted = offline(lines, method="sample", temperature=1.5, sampling_seed=7)
        assert sampled == [best[0].text for best in wanted]
        for body, fragment in (
            ({"method": "sample", "temperature": 0.0}, "decode.temperature"),
            ({"top_p": 2.0}, "decode.top_p"),
            ({"method": "greedy", "constraints": [["x"], [], []]}, "constraints need beam"),
            ({"prefixes": ["Ein"]}, "prefixes has 1 entries for 3 lines"),
            ({"method": "Beam"}, "method"),
        ):
            refused = client.post("/translate", json={"text": lines, **body})
            assert refused.status_code == 422, (body, refused.text)
            assert fragment in refused.json()["error"], refused.json()


# -- the web page, in a real browser ----------------------------------------------------------


def _browser() -> str | None:
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((path for name in names if (path := shutil.which(name))), None)


def test_web_page_translates_in_a_real_browser(server, sources, offline, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    lines = sources[:2]
    # The page fills its text box from ?text= and translates at once with auto=1.
    url = f"{server}/?" + urllib.parse.urlencode({"text": "\n".join(lines), "auto": "1"})
    headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(
        [*headless, "--dump-dom", url], capture_output=True, text=True, timeout=TIMEOUT
    ).stdout
    for best in offline(lines):
        assert f'class="translation">{html.escape(best[0].text, quote=False)}' in dom, dom[-2000:]
    assert dom.count('<table class="heatmap"') == 2  # the attention of each line
    shot = tmp_path / "page.png"
    subprocess.run(
        [*headless, "--window-size=1000,800", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=TIMEOUT,
    )
    from matplotlib import image

    rgb = image.imread(shot)[..., :3]
    assert rgb.shape[:2] == (800, 1000)
    assert rgb.std() > 0.05  # not blank: text, boxes and cells on the white page
    heat = (rgb[..., 2] - rgb[..., 0]) > 0.03  # the heatmap's blue cells
    assert heat.mean() > 0.002, heat.mean()


def test_rate_limiter_forgets_idle_clients(monkeypatch):
    from nmt.serving import access

    clock = [1000.0]
    monkeypatch.setattr(access.time, "monotonic", lambda: clock[0])
    limiter = access.RateLimiter(2)
    assert limiter.take("a") is None and limiter.take("a") is None
    assert limiter.take("a") == 30  # one request every 30 s
    for i in range(10_001):
        limiter.take(f"scanner {i}")
    clock[0] += 61.0  # everyone's bucket is full again
    limiter.take("b")
    assert len(limiter._buckets) <= 2 and limiter.take("a") is None


def test_compiled_models_warm_up_before_serving(monkeypatch, trained_run):
    """`nmt serve --compile`: each model translates one sentence alone and two together while
    loading (the compiler's time), not inside the first requests; without it, nothing."""
    import nmt.serving.app as app_module

    calls: list[tuple[bool, list[str]]] = []
    load = app_module.Translator.load

    def recording_load(path, **options):
        translator = load(path, **{**options, "compile": False})  # the compiler is not the point
        translate = translator.translate
        translator.translate = lambda lines: (
            calls.append((options["compile"], lines)) or translate(lines)
        )
        return translator

    monkeypatch.setattr(app_module.Translator, "load", staticmethod(recording_load))
    app_module.load_models([trained_run], device="cpu")
    assert calls == []
    app_module.load_models([trained_run], device="cpu", compile=True)
    assert [len(lines) for compiled, lines in calls] == [1, 2] and all(c for c, _ in calls)


def test_the_listening_socket_gets_connections_without_nagles_delay():
    """asyncio turns Nagle's algorithm off only on sockets that say TCP; without it an answer
    written in two parts waited for the client's delayed ACK (44 ms a request)."""
    import nmt.serving.app as app_module

    listener = app_module._bind("127.0.0.1", 0)
    nodelay: list[int] = []

    async def main() -> None:
        async def accepted(reader, writer) -> None:
            sock = writer.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        for _ in range(100):
            if nodelay:
                break
            await asyncio.sleep(0.05)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert nodelay and nodelay[0] != 0
