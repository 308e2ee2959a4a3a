"""Models behind `lmcompress serve`, under concurrent load from real HTTP clients on localhost.

    .venv/bin/python benchmarks/serve_load.py runs/demo/teacher runs/demo/auto/best --concurrency 1 8 32 64 \
        --seconds 10 --rounds 3 --soak-s 600

One `lmcompress serve` process per model (all started first, bound to 127.0.0.1, `--threads` each), then for every
concurrency level and round, each model in turn is driven for `--seconds` by N clients (aiohttp, one asyncio loop,
each client sending one rotten-tomatoes test review per request and waiting for the answer before the next), so
models are interleaved round by round and share the machine alike: clients and server on the same cores. Per
model and level: requests/s, texts/s, p50/p95/p99 latency, errors, lost requests (sent, never answered); the texts/s
ratio to the first model (the teacher) per round, its median and range. The soak then drives the last model at
`--soak-concurrency` for `--soak-s`, sampling the server's resident memory (VmRSS) every 5 s.

Writes benchmarks/results/raw/NAME.json and benchmarks/results/NAME.md with the processor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from lmcompress.config import DataConfig
from lmcompress.data import load_task
from lmcompress.machine import processor
from lmcompress.runs.manifest import data_config_for

RESULTS = Path(__file__).parent / "results"


def start_server(run: str, threads: int, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="300")
    process = subprocess.Popen([sys.executable, "-m", "lmcompress", "serve", "--model", run, "--port", "0",
                                "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms",
                                str(max_wait_ms), "--quiet"], stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if not found:
        process.kill()
        raise SystemExit(f"serve {run} did not start: {line}")
    base = found.group(1)
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"serve {run} never answered /health")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


async def drive(base: str, texts: list[str], concurrency: int, seconds: float, sample=None) -> dict:
    """`concurrency` clients posting one text each until `seconds` pass -> counts and latencies (ms). aiohttp, not
    httpx: httpx's async client topped out near 100 requests/s on these 2 cores, where aiohttp drove 1,000."""
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "errors": 0, "lost": 0}
    deadline = time.perf_counter() + seconds

    async def client(worker: int, http: aiohttp.ClientSession) -> None:
        i = worker
        while time.perf_counter() < deadline:
            counts["sent"] += 1
            started = time.perf_counter()
            try:
                async with http.post(f"{base}/predict", json={"text": texts[i % len(texts)]}) as reply:
                    answer = await reply.json(content_type=None)
                    ok = reply.status == 200 and len(answer["predictions"]) == 1
            except (aiohttp.ClientError, TimeoutError):
                counts["lost"] += 1
                continue
            if ok:
                counts["ok"] += 1
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                counts["errors"] += 1
            i += concurrency

    async def sampler() -> None:
        while time.perf_counter() < deadline:
            sample()
            await asyncio.sleep(5)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        tasks = [client(w, http) for w in range(concurrency)] + ([sampler()] if sample else [])
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return counts | {"wall_s": round(wall, 2), "requests_per_s": round(counts["ok"] / wall, 1),
                     "texts_per_s": round(counts["ok"] / wall, 1), "p50_ms": round(cuts[49], 1),
                     "p95_ms": round(cuts[94], 1), "p99_ms": round(cuts[98], 1)}


def load_table(servers: dict[str, tuple[subprocess.Popen, str]], texts: list[str], levels: list[int], rounds: int,
               seconds: float) -> list[dict]:
    rows = []
    names = list(servers)
    for concurrency in levels:
        draws: dict[str, list[dict]] = {name: [] for name in names}
        for round_ in range(rounds):
            for name in names:
                result = asyncio.run(drive(servers[name][1], texts, concurrency, seconds))
                draws[name].append(result)
                print(f"c={concurrency} round {round_ + 1} {name}: {result['texts_per_s']} texts/s, "
                      f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}", flush=True)
        for name in names:
            ratios = [d["texts_per_s"] / t["texts_per_s"] for d, t in zip(draws[name], draws[names[0]])]
            merged = {key: sum(d[key] for d in draws[name]) for key in ("sent", "ok", "errors", "lost")}
            rows.append({"model": name, "concurrency": concurrency, **merged,
                         "texts_per_s": round(statistics.median(d["texts_per_s"] for d in draws[name]), 1),
                         "p50_ms": round(statistics.median(d["p50_ms"] for d in draws[name]), 1),
                         "p95_ms": round(statistics.median(d["p95_ms"] for d in draws[name]), 1),
                         "p99_ms": round(statistics.median(d["p99_ms"] for d in draws[name]), 1),
                         "ratio_to_teacher": round(statistics.median(ratios), 2),
                         "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)], "rounds": draws[name]})
    return rows


def soak(process: subprocess.Popen, base: str, texts: list[str], concurrency: int, seconds: float) -> dict:
    curve: list[tuple[float, float]] = []
    start = time.perf_counter()

    def sample() -> None:
        curve.append((round(time.perf_counter() - start, 1), round(rss_mb(process.pid), 1)))

    result = asyncio.run(drive(base, texts, concurrency, seconds, sample))
    sample()
    settled = [mb for t, mb in curve if t >= min(60.0, seconds / 4)] or [mb for _, mb in curve]
    growth = (settled[-1] - settled[0]) / settled[0]
    return result | {"rss_mb": curve, "rss_growth_after_warmup": round(growth, 4)}


def markdown(payload: dict) -> str:
    cpu = payload["processor"]
    lines = ["# Serving under load", "", f"Command: `{payload['command']}`  ",
             f"Processor: {cpu['model']} ({', '.join(cpu['isa']) or 'no AVX2'}), {cpu['cores']} cores shared by "
             f"clients and servers; server threads {payload['threads']}, max batch {payload['max_batch']}, max wait "
             f"{payload['max_wait_ms']} ms; one text per request; {payload['rounds']} rounds of "
             f"{payload['seconds']} s per model and level, interleaved.", "",
             "| model | clients | texts/s | x teacher (range) | p50 ms | p95 ms | p99 ms | requests | errors | lost |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in payload["load"]:
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['texts_per_s']:,} | {r['ratio_to_teacher']}x "
                     f"({r['ratio_range'][0]}-{r['ratio_range'][1]}) | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} "
                     f"| {r['ok']:,} | {r['errors']} | {r['lost']} |")
    if payload.get("soak"):
        s = payload["soak"]
        curve = ", ".join(f"{t:.0f}s {mb:.0f}" for t, mb in s["rss_mb"][::max(1, len(s["rss_mb"]) // 12)])
        lines += ["", f"Soak: {payload['soak_model']} at {s['concurrency']} clients for {s['wall_s']} s: "
                  f"{s['ok']:,} answered, {s['errors']} errors, {s['lost']} lost, {s['texts_per_s']} texts/s, "
                  f"p99 {s['p99_ms']} ms; server RSS growth after warm-up {s['rss_growth_after_warmup']:.1%} "
                  f"(MB: {curve})."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories; the first is the teacher")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="per model, level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soak-s", type=float, default=0.0, help="soak the last model this long (0: no soak)")
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--name", default="serve_load")
    args = parser.parse_args()
    texts = load_task(data_config_for(DataConfig(), Path(args.runs[0]))).splits["test"]["text"].tolist()
    names = [Path(run).name if Path(run).name != "best" else f"{Path(run).parent.name}/best" for run in args.runs]
    servers = {name: start_server(run, args.threads, args.max_batch, args.max_wait_ms)
               for name, run in zip(names, args.runs)}
    try:
        payload = {"command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]), "processor": processor(),
                   "runs": dict(zip(names, args.runs)), "threads": args.threads, "max_batch": args.max_batch,
                   "max_wait_ms": args.max_wait_ms, "rounds": args.rounds, "seconds": args.seconds,
                   "rss_mb_before": {name: rss_mb(p.pid) for name, (p, _) in servers.items()}}
        payload["load"] = load_table(servers, texts, args.concurrency, args.rounds, args.seconds)
        if args.soak_s:
            process, base = servers[names[-1]]
            payload["soak_model"] = names[-1]
            payload["soak"] = soak(process, base, texts, args.soak_concurrency, args.soak_s) | {
                "concurrency": args.soak_concurrency}
    finally:
        for process, _ in servers.values():
            process.terminate()
        exits = {name: process.wait(timeout=60) for name, (process, _) in servers.items()}
    payload["server_exit_codes"] = exits
    payload["lscpu"] = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (RESULTS / f"{args.name}.md").write_text(markdown(payload), encoding="utf-8")
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
