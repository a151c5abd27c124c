"""``mambakit serve`` under concurrent clients: aggregate generated tokens/s and time to first token for 1, 4,
16 and 64 clients at once, with and without the prefix-state cache, on a shared system prompt.

    .venv/bin/python benchmarks/serve.py                       # demo-sized and mamba-130m-shaped models
    .venv/bin/python benchmarks/serve.py --models demo --clients 1 4 16 --repeats 3

Each model (random weights; the 130m shape is d_model 768, 24 layers, vocab 50280, served with the byte
tokenizer and its non-byte output rows zeroed so its greedy tokens are bytes) is saved to a temporary
folder and served by ``mambakit serve`` in a subprocess on a free localhost port, once with the prefix cache
and once with ``--prefix-cache-mb 0``. A round sends N streaming chat requests at once, each the same system
prompt and a user message of its own (so only the system prompt can be reused), greedy, a fixed number of
new tokens; aggregate tokens/s = all tokens generated in the round / the round's wall time; time to first
token (TTFT) = from sending to the first content chunk, the median over the round's requests. Each figure is
the median over ``--repeats`` rounds after one warm-up round (which also fills the cache).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from mambakit import MambaConfig, MambaLMHeadModel

SHAPES = {
    "demo": {"d_model": 128, "n_layer": 3, "vocab_size": 256},
    "130m": {"d_model": 768, "n_layer": 24, "vocab_size": 50280},
}
SYSTEM = ("You are a careful assistant for questions about state-space models. Answer in one short "
          "paragraph, name the paper a claim comes from, and say when you are unsure. ")


def build_checkpoint(shape: str, folder: Path) -> Path:
    model = MambaLMHeadModel(MambaConfig(**SHAPES[shape]), generator=torch.Generator().manual_seed(0))
    if SHAPES[shape]["vocab_size"] > 256:
        with torch.no_grad():
            model.lm_head.weight[256:] = 0  # tied to the embedding: tokens past the bytes are never drawn
    path = folder / shape
    model.save_pretrained(path)
    return path


class Server:
    """``mambakit serve`` in a subprocess; ``url`` once its model has loaded."""

    def __init__(self, checkpoint: Path, flags: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "mambakit", "serve", "--checkpoint",
                                         str(checkpoint), "--port", "0", *flags],
                                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.process.stderr] + [lines.put("")],
                         daemon=True).start()
        self.url = ""
        while True:
            line = lines.get(timeout=300)
            if not line:
                raise RuntimeError("the server exited before it was ready")
            if "listening on http://" in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
            if " ready: " in line:
                return

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def one_request(client, url: str, body: dict) -> tuple[float, int]:
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    return (first or time.perf_counter()) - start, tokens


async def one_round(url: str, clients: int, new_tokens: int, tag: str) -> tuple[float, float]:
    """(aggregate tokens/s, median TTFT s) of ``clients`` requests sent at once."""
    import httpx

    bodies = [{"messages": [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": f"Question {tag}-{i}: what does the state hold?"}],
               "max_tokens": new_tokens, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}} for i in range(clients)]
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        endpoint = f"{url}/v1/chat/completions"
        results = await asyncio.gather(*(one_request(client, endpoint, b) for b in bodies))
        elapsed = time.perf_counter() - start
    return sum(t for _, t in results) / elapsed, statistics.median(t for t, _ in results)


def measure(checkpoint: Path, shape: str, cache: bool, args) -> dict[int, tuple[float, float]]:
    flags = ["--slots", str(max(args.clients)), "--prefix-cache-mb", "256" if cache else "0",
             "--max-new-tokens-limit", str(args.new_tokens), "--threads", str(args.threads)]
    if SHAPES[shape]["vocab_size"] > 256:
        flags += ["--tokenizer", "byte"]
    flags += args.server_flags
    server = Server(checkpoint, flags)
    out = {}
    try:
        for clients in args.clients:
            asyncio.run(one_round(server.url, clients, args.new_tokens, f"warm{clients}"))
            rounds = [asyncio.run(one_round(server.url, clients, args.new_tokens, f"r{r}-{clients}"))
                      for r in range(args.repeats if shape == "demo" else 1)]
            out[clients] = (statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds))
            print(f"  {shape} cache={'on' if cache else 'off'} clients={clients}: "
                  f"{out[clients][0]:.0f} tokens/s, TTFT {out[clients][1] * 1000:.0f} ms", flush=True)
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per figure (the 130m shape: 1)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--server-flags", nargs="*", default=[], help="more flags for mambakit serve")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in args.models:
            checkpoint = build_checkpoint(shape, Path(folder))
            on, off = measure(checkpoint, shape, True, args), measure(checkpoint, shape, False, args)
            base = on[args.clients[0]][0]
            for clients in args.clients:
                rows.append((shape, clients, off[clients], on[clients], on[clients][0] / base))
    print("\n| model | clients | tokens/s (cache off) | TTFT ms (off) | tokens/s (cache on) | TTFT ms (on) | "
          f"throughput vs {args.clients[0]} client | TTFT on/off |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape, clients, off, on, speedup in rows:
        print(f"| {shape} | {clients} | {off[0]:.0f} | {off[1] * 1000:.0f} | {on[0]:.0f} | "
              f"{on[1] * 1000:.0f} | {speedup:.1f}x | {on[1] / off[1]:.2f} |")


if __name__ == "__main__":
    main()
