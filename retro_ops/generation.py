"""Generate text with a RETRO model, retrieving for every completed chunk as it goes.

Each time the text completes a chunk of m tokens, that chunk is decoded, embedded with the
frozen BERT exactly like database chunks, and its k neighbours (chunk + continuation) are
fetched; they condition every later token through chunked cross-attention. The result says
which neighbours each chunk used, so every generation is explainable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from retro_ops.model import Retro
from retro_ops.retriever import Neighbour, Retriever
from retro_ops.training.vocab import Vocabulary


@dataclass(frozen=True)
class ChunkRetrieval:
    chunk: int  # index of the completed chunk in the whole text (prompt + generated)
    text: str  # the chunk as the model saw it (decoded tokens)
    neighbours: list[Neighbour]


@dataclass
class Generation:
    prompt: str
    text: str  # the generated continuation only
    prompt_tokens: int
    new_tokens: int
    retrievals: list[ChunkRetrieval] = field(default_factory=list)
    retrieval_seconds: float = 0.0
    model_seconds: float = 0.0


class Generator:
    def __init__(self, model: Retro, vocab: Vocabulary, tokenizer, retriever: Retriever | None):
        self.model, self.vocab, self.tokenizer, self.retriever = model.eval(), vocab, tokenizer, retriever
        self.m = model.config.chunk_size
        self.k = model.config.n_neighbours

    def _retrieve(self, chunk_ids: list[int], index: int) -> tuple[ChunkRetrieval, np.ndarray]:
        text = self.tokenizer.decode(self.vocab.decode(np.asarray(chunk_ids)).tolist())
        hits = self.retriever.retrieve([text], k=self.k)[0] if self.retriever else []
        tokens = np.zeros((self.k, 2 * self.m), dtype=np.int64)  # [PAD] = masked
        for slot, hit in enumerate(hits[:self.k]):
            value = self.vocab.encode(np.asarray(hit.token_ids[:2 * self.m]))
            tokens[slot, :len(value)] = value
        return ChunkRetrieval(index, text, hits), tokens

    @torch.inference_mode()
    def generate(self, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.8,
                 seed: int = 0) -> Generation:
        source_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = self.vocab.encode(np.asarray(source_ids, dtype=np.int64)).tolist()
        if not ids:
            raise ValueError("empty prompt: give some text to continue")
        result = Generation(prompt, "", len(ids), 0)
        values: list[np.ndarray] = []  # neighbour tokens of each completed chunk
        generator = torch.Generator().manual_seed(seed)
        n = self.model.config.seq_len
        for _ in range(max_new_tokens):
            while len(values) < len(ids) // self.m:  # retrieve for newly completed chunks
                u = len(values)
                started = time.perf_counter()
                retrieval, tokens = self._retrieve(ids[u * self.m:(u + 1) * self.m], u)
                result.retrieval_seconds += time.perf_counter() - started
                result.retrievals.append(retrieval)
                values.append(tokens)
            started = time.perf_counter()
            window_start = max(0, (len(ids) - n + self.m - 1) // self.m * self.m) if len(ids) > n else 0
            window = ids[window_start:]
            first_chunk = window_start // self.m
            used = values[first_chunk:first_chunk + len(window) // self.m]
            neighbours = torch.from_numpy(np.stack(used)[None]) if used and self.retriever else None
            logits, _ = self.model(torch.tensor([window]), neighbours)
            next_logits = logits[0, -1].float()
            if temperature <= 0:
                token = int(next_logits.argmax())
            else:
                probs = torch.softmax(next_logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            ids.append(token)
            result.model_seconds += time.perf_counter() - started
        new = ids[result.prompt_tokens:]
        result.new_tokens = len(new)
        result.text = self.tokenizer.decode(self.vocab.decode(np.asarray(new)).tolist())
        return result
