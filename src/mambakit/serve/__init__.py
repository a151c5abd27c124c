"""``mambakit serve``: an OpenAI-compatible HTTP server with continuous batching over recurrent states and a
prefix-state cache (see docs/serve.md).

- :mod:`.engine`: the scheduler thread, the slot pool of states, chunked prefill, batched decode steps;
- :mod:`.prefix_cache`: the LRU cache of states after a prompt's prefixes;
- :mod:`.text`: tokens to text as they come, stop sequences;
- :mod:`.chat`: the chat template;
- :mod:`.params`: the request bodies, checked; OpenAI-style errors;
- :mod:`.app`: the routes (Starlette); :mod:`.metrics`: the Prometheus counters;
- :mod:`.server`: binding, background loading, uvicorn.

The engine and the cache need only torch; the HTTP modules need the ``serve`` extra (starlette, uvicorn).
"""
