"""Generate text with a RETRO model, retrieving for every completed chunk as it goes.

Each time the text completes a chunk of m tokens, that chunk is decoded, embedded with the
frozen BERT exactly like database chunks, and its k neighbours (chunk + continuation) are
fetched; they condition every later token through chunked cross-attention. Tokens go through
the model one at a time with cached keys, values and encoded neighbours (`IncrementalDecoder`):
the logits of a full pass over the window, without recomputing it for every token. The result (a
`Generation`, defined with the log that records it) says which neighbours each chunk used, so
every generation is explainable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from retro_ops.errors import GenerationTimeoutError
from retro_ops.generations.records import ChunkRetrieval, Generation
from retro_ops.model import Retro
from retro_ops.model.decoding import IncrementalDecoder
from retro_ops.retrieval.retriever import Neighbour, Retriever
from retro_ops.training.vocab import Vocabulary


Fetch = Callable[[str, int], list[Neighbour]]  # (chunk text, k) -> its neighbours, best first


class Generator:
    """`fetch` replaces the retriever's own one-query call for each completed chunk (a server
    passes its micro-batcher's); it must answer exactly as `retriever.retrieve([text], k)[0]`."""

    def __init__(self, model: Retro, vocab: Vocabulary, tokenizer, retriever: Retriever | None,
                 fetch: Fetch | None = None):
        self.model, self.vocab, self.tokenizer, self.retriever = model.eval(), vocab, tokenizer, retriever
        self.m = model.config.chunk_size
        self.k = model.config.n_neighbours
        self._fetch = fetch

    def _retrieve(self, chunk_ids: list[int], index: int) -> tuple[ChunkRetrieval, np.ndarray]:
        text = self.tokenizer.decode(self.vocab.decode(np.asarray(chunk_ids)).tolist())
        if self.retriever is None:
            hits = []
        elif self._fetch is not None:
            hits = self._fetch(text, self.k)
        else:
            hits = self.retriever.retrieve([text], k=self.k)[0]
        tokens = np.zeros((self.k, 2 * self.m), dtype=np.int64)  # [PAD] = masked
        for slot, hit in enumerate(hits[:self.k]):
            value = self.vocab.encode(np.asarray(hit.token_ids[:2 * self.m]))
            tokens[slot, :len(value)] = value
        return ChunkRetrieval(index, text, hits), tokens

    @torch.inference_mode()
    def generate(self, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.8,
                 seed: int = 0, deadline: float | None = None) -> Generation:
        """`deadline` (time.monotonic()) stops a generation that runs too long between two
        model steps, so that a server can free its slot (GenerationTimeoutError)."""
        source_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = self.vocab.encode(np.asarray(source_ids, dtype=np.int64)).tolist()
        if not ids:
            raise ValueError("empty prompt: give some text to continue")
        result = Generation(prompt, "", len(ids), 0)
        values: list[np.ndarray] = []  # neighbour tokens of each completed chunk
        generator = torch.Generator().manual_seed(seed)
        decoder, n, m = IncrementalDecoder(self.model), self.model.config.seq_len, self.m
        window_start = 0  # the model sees at most n tokens, starting at a chunk boundary
        started = time.perf_counter()
        for _ in range(max_new_tokens):
            start = max(0, (len(ids) - n + m - 1) // m * m) if len(ids) > n else 0
            if start != window_start:  # slide: positions restart, so the caches do too
                window_start = start
                decoder.reset()
            for j in range(window_start + decoder.position, len(ids)):
                if deadline is not None and time.monotonic() > deadline:
                    raise GenerationTimeoutError(
                        f"generation stopped after {len(ids) - result.prompt_tokens} of "
                        f"{max_new_tokens} new tokens: past its time limit")
                neighbours = None
                if (j + 1) % m == 0 and self.retriever is not None:
                    neighbours = torch.from_numpy(self._neighbours_of(j // m, ids, values, result))
                logits = decoder.step(ids[j], neighbours)
            next_logits = logits.float()
            if temperature <= 0:
                token = int(next_logits.argmax())
            else:
                probs = torch.softmax(next_logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            ids.append(token)
        result.model_seconds = time.perf_counter() - started - result.retrieval_seconds
        new = ids[result.prompt_tokens:]
        result.new_tokens = len(new)
        result.text = self.tokenizer.decode(self.vocab.decode(np.asarray(new)).tolist())
        return result

    def _neighbours_of(self, chunk: int, ids: list[int], values: list[np.ndarray],
                       result: Generation) -> np.ndarray:
        """Retrieved once per chunk of the whole text (a window slide re-feeds, never re-retrieves)."""
        while len(values) <= chunk:
            u = len(values)
            started = time.perf_counter()
            retrieval, tokens = self._retrieve(ids[u * self.m:(u + 1) * self.m], u)
            result.retrieval_seconds += time.perf_counter() - started
            result.retrievals.append(retrieval)
            values.append(tokens)
        return values[chunk]
