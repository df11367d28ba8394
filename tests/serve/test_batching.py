"""The batched decoder's rows against the one-at-a-time HF backend (its own cache, no padding).

Rows of different lengths join a running batch together (one padded prefill),
a row leaves, and every remaining row's logits stay those of its sequence
decoded alone. The engine hands a step's text and ends out before that step's
forward.
"""

from __future__ import annotations

import asyncio
import threading

import torch

from chatbaker_megatron.inference.backends import HFBackend
from chatbaker_megatron.inference.sampling import SamplingConfig
from chatbaker_megatron.serve.batching import BatchedDecoder
from chatbaker_megatron.serve.engine import Engine, GenerationRequest


def test_rows_joining_together_and_leaving_decode_as_if_alone(served_hf):
    backend = HFBackend(served_hf)
    encode = backend.tokenizer.encode
    prompts = [encode("하나 둘 셋 넷 다섯"), encode("안녕"), encode("The capital of Korea is")]
    assert len({len(p) for p in prompts}) == 3, "the prompts must need different padding"

    def alone(prompt: list[int], steps: int) -> list[torch.Tensor]:
        """Logits after the prompt, then after each greedy token, decoded alone."""
        logits = [backend.forward(prompt, 0)]
        sequence = list(prompt)
        for _ in range(steps):
            sequence.append(int(logits[-1].argmax()))
            logits.append(backend.forward(sequence[-1:], len(sequence) - 1))
        return logits

    expected = [alone(p, 6) for p in prompts]
    decoder = BatchedDecoder(backend.model)
    got = [list(decoder.add(prompts[:1]))]
    # The first row runs a step alone, then the other two join it in one prefill.
    got[0] += list(decoder.step([int(got[0][-1].argmax())]))
    got += [[logits] for logits in decoder.add(prompts[1:])]
    for step in range(5):
        if step == 2:
            decoder.remove([1])  # the shortest row leaves with the padding only it needed
            expected.pop(1)
            got.pop(1)
        tokens = [int(row[-1].argmax()) for row in got]
        for row, logits in zip(got, decoder.step(tokens)):
            row.append(logits)
    for want, have in zip(expected, got):
        assert len(have) >= 6
        for w, h in zip(want, have):
            torch.testing.assert_close(h, w, atol=1e-4, rtol=1e-4)


def test_a_request_hears_of_its_end_before_the_next_forward(served_hf):
    backend = HFBackend(served_hf)
    engine = Engine(backend.model, backend.tokenizer, backend.max_length)
    released = threading.Event()
    forward = engine.decoder.step

    def held(tokens: list[int]) -> torch.Tensor:
        released.wait(timeout=60)  # the forward after the first draws, held
        return forward(tokens)

    engine.decoder.step = held
    prompt = backend.tokenizer.encode("The capital of Korea is")
    short, long = (
        GenerationRequest(prompt, SamplingConfig(greedy=True, max_new_tokens=n)) for n in (1, 8)
    )

    async def until_short_ends() -> None:
        for job in (short, long):
            job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        engine.submit(short, long)
        async for _ in short.pieces():
            pass

    engine.start()
    try:
        asyncio.run(asyncio.wait_for(until_short_ends(), timeout=20))
        assert long.finish is None, "the held forward should keep the long request running"
    finally:
        released.set()
        engine.stop()
    assert short.finish.reason == "length" and len(short.token_ids) == 1
