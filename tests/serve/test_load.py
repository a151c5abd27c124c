"""A bounded load test: 32 concurrent streaming clients, 3 requests each, against one server with fewer
slots than clients (so requests queue, join and leave between steps). Every request is answered, no stream is
cut or mixed with another, greedy outputs equal the sequential ones, and the server's memory stays flat."""

import asyncio
import time

import openai
import pytest
from serve_helpers import ServerProcess, library_tokens

from mambakit import MambaLMHeadModel
from mambakit.data import ByteTokenizer

CLIENTS, ROUNDS = 32, 3
TOK = ByteTokenizer()


def job(client: int, round_: int) -> tuple[str, int]:
    """Client ``client``'s prompt in round ``round_``, and its max_tokens (lengths differ, so requests leave
    at different steps)."""
    prompt = f"Client {client} asks question {round_}: " + "why? " * (client % 5)
    return prompt, 16 + (client * 7 + round_) % 25


@pytest.fixture(scope="module", params=["loop", "thread"])
def server(checkpoint, request):
    """The scheduler on the HTTP event loop (the default), or on a thread of its own."""
    flags = ["--slots", "8", "--prefill-chunk", "64", "--prefix-cache-mb", "1"]
    process = ServerProcess(checkpoint, *flags, *(["--engine-thread"] if request.param == "thread" else []))
    yield process
    process.stop()


async def one_stream(client, model_id, prompt, max_tokens):
    stream = await client.completions.create(model=model_id, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0, stream=True)
    ids, pieces, finish, start, first = set(), [], None, time.perf_counter(), None
    async for chunk in stream:
        first = first or time.perf_counter()
        ids.add(chunk.id)
        assert finish is None, "a chunk after the finish"
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason
    assert len(ids) == 1 and finish == "length", (ids, finish)
    return "".join(pieces), first - start


async def client_loop(base_url, model_id, client_no):
    async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120) as client:
        return [await one_stream(client, model_id, *job(client_no, r)) for r in range(ROUNDS)]


async def load(base_url, model_id):
    return await asyncio.gather(*(client_loop(base_url, model_id, c) for c in range(CLIENTS)))


def test_concurrent_streams_are_answered_whole_and_unmixed(server, checkpoint):
    model = MambaLMHeadModel.from_pretrained(checkpoint).eval()
    expected = {(c, r): TOK.decode(library_tokens(model, TOK.encode(job(c, r)[0]), job(c, r)[1]))
                for c in range(CLIENTS) for r in range(ROUNDS)}
    memory = []
    for _ in range(3):  # the whole load three times over: memory after each
        start = time.perf_counter()
        results = asyncio.run(load(f"{server.url}/v1", checkpoint.name))
        elapsed = time.perf_counter() - start
        memory.append(server.rss_bytes())
        for c, rounds in enumerate(results):
            for r, (text, _) in enumerate(rounds):
                assert text == expected[(c, r)], (c, r)
        tokens = sum(job(c, r)[1] for c in range(CLIENTS) for r in range(ROUNDS))
        ttft = sorted(t for rounds in results for _, t in rounds)
        print(f"{CLIENTS * ROUNDS} streams, {tokens} tokens in {elapsed:.2f}s ({tokens / elapsed:.0f} "
              f"tokens/s), median time to first token {ttft[len(ttft) // 2] * 1000:.0f} ms, "
              f"RSS {memory[-1] / 2**20:.1f} MiB")
    assert memory[-1] - memory[0] < 16 * 2**20, [m / 2**20 for m in memory]
