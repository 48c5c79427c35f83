"""Serving under load: `nmt serve` with 1, 8 and 32 concurrent clients on loopback, side by side
with offline translation of the same lines.

    python bench/serve_load.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \\
        --clients 1,8,32 --modes batching,no-batching

Modes: `batching` (the default server), `no-batching` (`--no-batching`), `compile` (batching and
`--compile`; the server builds or loads its libraries before it answers). Offline is
`Translator.translate` over all the lines (what `nmt translate` runs: length-sorted
batches of decode.batch_tokens), timed after loading; its passes alternate with the served ones. Each mode then starts its own server
(`python -m nmt serve`, same device and threads), warms it up, and for each client count
sends every line once: each client posts `--lines-per-request` lines and waits for the answer
before it sends the next (keep-alive HTTP/1.1 written by hand, so the clients cost little CPU).
Reported per pass: total sentences/s (lines / wall time), p50 and p95 request latency, the
throughput as a share of offline, and how many translations equal the offline ones. Each figure
is the median pass of `--repeats`. The clients run on the same machine as the server: on a
2-core machine they take some of its CPU, which offline translation does not pay.

`--mixed` measures fairness instead: 31 clients each send one line at a time (`--limit` lines
in all), first alone, then while a 32nd client keeps sending the largest requests the server's
limits allow (by default 50 lines of 2,000 characters, the 100,000-character cap; beam 16,
16-best, alignments); it reports the
one-line clients' p50 and p99 latency in both passes and their ratio (alternating passes,
median of `--repeats`).

    python bench/serve_load.py RUN --mixed --limit 300 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, body=b""
) -> tuple[int, bytes]:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _client(port: int, lines: list[str], chunks: Iterator[int], per: int, out: dict) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for start in chunks:  # shared by all clients: each takes the next chunk
            body = json.dumps({"text": lines[start : start + per]}).encode()
            sent = time.perf_counter()
            status, answer = await _request(reader, writer, "POST", "/translate", body)
            out["latencies"].append(time.perf_counter() - sent)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")
            out["outputs"][start : start + per] = json.loads(answer)["translations"]
    finally:
        writer.close()


async def _pass(port: int, lines: list[str], clients: int, per: int) -> dict:
    out: dict = {"latencies": [], "outputs": [None] * len(lines)}
    chunks = iter(range(0, len(lines), per))
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, lines, chunks, per, out) for _ in range(clients)))
    out["seconds"] = time.perf_counter() - start
    return out


async def _heavy(port: int, lines: list[str], stop: asyncio.Event, out: dict) -> None:
    """The largest requests the server's limits allow (GET /models), one after another, until
    `stop`; hangs up on the one in flight."""
    reader, writer = await asyncio.open_connection(HOST, port)
    limits = json.loads((await _request(reader, writer, "GET", "/models"))[1])["limits"]
    writer.close()
    size = limits["max_line_chars"]
    count = min(limits["max_lines"], limits.get("max_request_chars", 10**9) // size)
    text = " ".join(lines)
    line = (text * (size // max(1, len(text)) + 1))[:size]
    beam = limits["max_beam_size"]
    request_body = {"text": [line] * count, "beam_size": beam, "nbest": beam, "alignment": True}
    body = json.dumps(request_body).encode()
    out["heavy"] = f"{count} lines of {size} characters, beam {beam}, {beam}-best, alignment"
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            request = asyncio.ensure_future(_request(reader, writer, "POST", "/translate", body))
            waiting = asyncio.ensure_future(stop.wait())
            await asyncio.wait({request, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if request.done():
                status, answer = request.result()
                if status != 200:
                    raise RuntimeError(f"the heavy request got HTTP {status}: {answer[:200]!r}")
                out["heavy_answers"] = out.get("heavy_answers", 0) + 1
            request.cancel()
            waiting.cancel()
        finally:
            writer.close()


async def _mixed_pass(port: int, lines: list[str], heavy: bool) -> dict:
    out: dict = {"latencies": [], "outputs": [None] * len(lines)}
    stop = asyncio.Event()
    background = asyncio.ensure_future(_heavy(port, lines, stop, out)) if heavy else None
    if heavy:
        await asyncio.sleep(1.0)  # the heavy request is decoding
    chunks = iter(range(len(lines)))
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, lines, chunks, 1, out) for _ in range(31)))
    out["seconds"] = time.perf_counter() - start
    stop.set()
    if background is not None:
        await background
    return out


def _mixed(args: argparse.Namespace, lines: list[str]) -> None:
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"threads {args.threads or 'default'}, {args.run}, {len(lines)} lines of {args.input}"
    )
    print("| pass | one-line p50 ms | one-line p99 ms | sentences/s |")
    print("| --- | --- | --- | --- |")
    rows: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        with _server(args, "batching", Path(folder) / "mixed.log") as port:
            asyncio.run(_pass(port, lines[:64], 8, 1))  # warm-up
            for _ in range(args.repeats):
                for heavy in (False, True):
                    run = asyncio.run(_mixed_pass(port, lines, heavy))
                    if heavy:
                        print(f"# heavy client: {run['heavy']}")
                    ms = sorted(1000 * s for s in run["latencies"])
                    rows[heavy].append(
                        {
                            "p50": statistics.median(ms),
                            "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
                            "per_s": len(lines) / run["seconds"],
                        }
                    )
    for heavy, name in ((False, "31 one-line clients alone"), (True, "the same + 1 heavy client")):
        p50 = statistics.median(r["p50"] for r in rows[heavy])
        p99 = statistics.median(r["p99"] for r in rows[heavy])
        per_s = statistics.median(r["per_s"] for r in rows[heavy])
        print(f"| {name} | {p50:.0f} | {p99:.0f} | {per_s:.1f} |")
    ratio = statistics.median(r["p99"] for r in rows[True]) / statistics.median(
        r["p99"] for r in rows[False]
    )
    print(f"\np99 with the heavy client / without: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


async def _healthy(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    try:
        return (await _request(reader, writer, "GET", "/health"))[0] == 200
    finally:
        writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(args: argparse.Namespace, mode: str, log: Path) -> Iterator[int]:
    port = _free_port()
    command = [sys.executable, "-m", "nmt", "serve", args.run, "--port", str(port)]
    command += ["--device", args.device, "--max-wait-ms", str(args.max_wait_ms)]
    command += ["--max-lines", str(max(256, args.lines_per_request))]
    if mode == "no-batching":
        command.append("--no-batching")
    if mode == "compile":
        command.append("--compile")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while not asyncio.run(_healthy(port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


class _Offline:
    """Offline translation in this process, timed a pass at a time (between served passes)."""

    def __init__(self, args: argparse.Namespace, lines: list[str]) -> None:
        import torch

        from nmt.decoding.translator import Translator

        if args.threads:
            torch.set_num_threads(args.threads)
        self.translator = Translator.load(args.run, device=args.device)
        self.translator.translate(lines[:32])  # warm-up
        self.lines, self.seconds, self.outputs = lines, [], []
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.run}, "
            f"{len(lines)} lines of {args.input}, decode {self.translator.decode}"
        )

    def run(self) -> None:
        start = time.perf_counter()
        self.outputs = self.translator.translate(self.lines)
        self.seconds.append(time.perf_counter() - start)


def _row(
    setting: str, clients: str, per_s: float, offline_per_s: float, p50="-", p95="-", same="-"
):
    share = f"{100 * per_s / offline_per_s:.0f}%"
    return f"| {setting} | {clients} | {per_s:.1f} | {p50} | {p95} | {share} | {same} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder or checkpoint")
    parser.add_argument("-i", "--input", default=str(ROOT / "data/multi30k/test_2016_flickr.en"))
    parser.add_argument("--limit", type=int, default=0, help="only the first N lines (0: all)")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument(
        "--modes", default="batching,no-batching", help="batching, no-batching, compile"
    )
    parser.add_argument("--lines-per-request", type=int, default=1)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=1, help="passes per figure (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--mixed", action="store_true", help="the fairness scenario (see above)")
    args = parser.parse_args()
    lines = Path(args.input).read_text(encoding="utf-8").splitlines()
    lines = lines[: args.limit] if args.limit else lines
    if args.mixed:
        _mixed(args, lines)
        return
    clients = [int(c) for c in args.clients.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if any(m not in ("batching", "no-batching", "compile") for m in modes):
        sys.exit("--modes takes batching, no-batching and/or compile")

    offline = _Offline(args, lines)
    served: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            with _server(args, mode, Path(folder) / f"{mode}.log") as port:
                asyncio.run(_pass(port, lines[:64], 8, args.lines_per_request))  # warm-up
                # Offline and served passes alternate, so that a slower minute of a shared
                # machine falls on both.
                for _ in range(args.repeats):
                    offline.run()
                    for n in clients:
                        run = asyncio.run(_pass(port, lines, n, args.lines_per_request))
                        served.setdefault((mode, n), []).append(run)
    offline_per_s = len(lines) / statistics.median(offline.seconds)
    print("| setting | clients | sentences/s | p50 ms | p95 ms | of offline | same as offline |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(_row("offline `Translator.translate`", "-", offline_per_s, offline_per_s))
    figures: list[dict] = [
        {"setting": "offline", "sentences_per_s": offline_per_s, "seconds": offline.seconds}
    ]
    for (mode, n), passes in served.items():
        run = sorted(passes, key=lambda p: p["seconds"])[len(passes) // 2]
        per_s = len(lines) / run["seconds"]
        ms = sorted(1000 * s for s in run["latencies"])
        p50, p95 = statistics.median(ms), ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        same = sum(a == b for a, b in zip(run["outputs"], offline.outputs))
        print(
            _row(
                f"`nmt serve` {mode}",
                str(n),
                per_s,
                offline_per_s,
                f"{p50:.0f}",
                f"{p95:.0f}",
                f"{same}/{len(lines)}",
            )
        )
        figures.append(
            {
                "setting": mode,
                "clients": n,
                "sentences_per_s": per_s,
                "p50_ms": p50,
                "p95_ms": p95,
                "same_as_offline": same,
                "seconds": [p["seconds"] for p in passes],
            }
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
