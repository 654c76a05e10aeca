"""The HTTP API (FastAPI): generate, retrieve, health, deployment, and an admin hot swap.

Every response names the model version and the exact retrieval-set version that served it.
The admin swap needs a bearer token of >= 16 characters configured at start (never a default).
Under overload the server sheds load instead of queueing without bound: a request beyond the
queue gets 503 + Retry-After at once, a generation or a retrieval past its time limit 504 (its
slot freed), and `/health` runs on the event loop so it answers while every worker computes.
Slow clients are cut at the connection level (`connections.py`). Bodies are capped
by bytes actually received (a chunked body has no Content-Length to trust); every field is
bounded so a hostile value is a 422, never a 500.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import anyio
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from retro_ops.errors import (
    ExclusionListError,
    GenerationTimeoutError, IndexIntegrityError, RetrievalSetError, RetrieveTimeoutError,
    ServerOverloadedError, UnknownRetrievalSetError,
)
from retro_ops.generations.records import new_request_id, record_of
from retro_ops.serving.batching import BatchConfig, RetrieveBatcher
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.serving.security import check_admin_token

INT64 = 2**63
MIN_TEMPERATURE = 0.01  # below it softmax(logits / t) overflows to NaN; 0 means greedy
MAX_PROMPT_CHARS = 16_000  # far above max_prompt_tokens of text; the token cap is the real one
MAX_TEXT_CHARS = 4_000  # a retrieval query: the embedder reads a few hundred tokens at most


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_prompt_tokens: int = 512
    max_new_tokens: int = 256
    max_k: int = 50
    drain_bytes: int = 1024 * 1024  # read (and drop) this much of an oversized body, then 413


#: status codes besides 200 that the routes answer, as the OpenAPI schema (and /docs) lists them
TOO_LARGE = {413: {"description": "Body or prompt over its cap (bytes actually received; prompt tokens)"}}
INVALID = {422: {"description": "A field out of its bounds (the error says which field, never echoes the value)"}}
BUSY = {503: {"description": "Overloaded (with Retry-After, in ms), or the exclusion list unreadable "
                             "(retrieval fails closed)"},
        504: {"description": "Past the time limit (--generate-timeout / --retrieve-timeout); its slot is freed"}}
ADMIN = {401: {"description": "Missing or wrong bearer token"},
         403: {"description": "Admin endpoints disabled: the server was started without a token"},
         404: {"description": "No such retrieval set; the old set keeps serving"},
         409: {"description": "The set's index fails its checks; the old set keeps serving"}}


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, le=5.0, allow_inf_nan=False)
    seed: int = Field(default=0, ge=-INT64, lt=INT64)

    @field_validator("temperature")
    @classmethod
    def _greedy_or_sane(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value


class RetrieveRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    k: int = Field(default=5, ge=1)


class SwapRequest(BaseModel):
    retrieval_set: str = Field(min_length=1, max_length=200)


class BodyLimit:
    """ASGI middleware: reads the whole body counting bytes (Content-Length or not), answers 413
    past the cap, and replays the body to the app. An oversized body is drained up to
    `drain_bytes` first so that the client, still sending, reads the 413 instead of a reset."""

    def __init__(self, app, max_bytes: int, drain_bytes: int):
        self.app, self.max_bytes, self.drain_bytes = app, max_bytes, drain_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, int(declared), declared=True)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            more = message.get("more_body", False)
            if total > self.max_bytes:
                while more and total <= self.drain_bytes:
                    message = await receive()
                    total += len(message.get("body", b""))
                    more = message.get("more_body", False) and message["type"] != "http.disconnect"
                return await self._refuse(scope, receive, send, total, declared=False)
            chunks.append(chunk)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: int, declared: bool) -> None:
        what = f"request body of {size} bytes" if declared else f"request body of at least {size} bytes"
        response = JSONResponse({"detail": f"{what} exceeds {self.max_bytes}"}, status_code=413,
                                headers={"Connection": "close"})
        await response(scope, receive, send)


def create_app(holder: DeploymentHolder, *, admin_token: str | None, limits: Limits = Limits(),
               generation_log=None, batching: BatchConfig | None = None) -> FastAPI:
    """`generation_log` (a `generations.log.GenerationLog`, or None when opted out) keeps every
    generation; it is flushed and closed when the server stops cleanly. `batching`: micro-batch
    concurrent /retrieve queries, and the chunk queries of concurrent generations, into one
    encoder call (None: one by one)."""
    admin_token = check_admin_token(admin_token, "admin token")
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        try:
            holder.close()  # a stopped server closes its deployments row
        finally:
            if generation_log is not None:
                generation_log.close()  # commits the last batch

    app = FastAPI(title="retro-ops serving", version="1", lifespan=lifespan,
                  description="RETRO generation and retrieval with a hot-swappable retrieval set.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, drain_bytes=limits.drain_bytes)
    gate = holder.gate
    batcher = RetrieveBatcher(gate, batching) if batching is not None else None
    app.state.batcher = batcher  # its counters: encoder calls and the queries they answered

    @app.exception_handler(ServerOverloadedError)
    async def overloaded(request: Request, exc: ServerOverloadedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(gate.config.retry_after_s)})

    @app.exception_handler(ExclusionListError)
    async def exclusions_unreadable(request: Request, exc: ExclusionListError) -> JSONResponse:
        # fail closed: without the exclusion list no neighbour may be served
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes each bad input back; a NaN or Infinity (Python's json reads both) cannot
        # be written as JSON and turned the 422 into a 500. Say where and what, not the value.
        return JSONResponse({"detail": [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
                                        for e in exc.errors()]}, status_code=422)

    @app.exception_handler(GenerationTimeoutError)
    async def timed_out(request: Request, exc: GenerationTimeoutError) -> JSONResponse:
        return JSONResponse({"detail": f"{exc} ({gate.config.generate_timeout_s:g} s)"},
                            status_code=504)

    @app.exception_handler(RetrieveTimeoutError)
    async def retrieve_timed_out(request: Request, exc: RetrieveTimeoutError) -> JSONResponse:
        return JSONResponse({"detail": f"{exc} ({gate.config.retrieve_timeout_s:g} s)"},
                            status_code=504)

    def admin(authorization: str | None = Header(default=None)) -> str:
        if not admin_token:
            raise HTTPException(403, "admin endpoints are disabled: start the server with a token")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        return given

    @app.get("/health")
    async def health() -> dict:  # on the event loop: never waits for a worker thread
        """Liveness and what is served: model, retrieval-set version, requests admitted, the
        generation log's and the batcher's counters. Answers while every worker computes."""
        logged = generation_log.stats.as_dict() if generation_log is not None else None
        batched = {"encoder_calls": batcher.batches, "queries": batcher.queries} if batcher else None
        return {"status": "ok", "admitted": gate.admitted, **holder.current.describe(),
                "generation_log": logged, "batching": batched}

    @app.get("/deployment")
    async def deployment() -> dict:
        """The model version and the exact retrieval-set version serving now."""
        return holder.current.describe()

    @app.post("/retrieve", responses={**TOO_LARGE, **INVALID, **BUSY})
    async def retrieve(body: RetrieveRequest) -> JSONResponse:
        """The k nearest chunks of a text in the served retrieval set (excluded chunks never
        come back), each with its score, source and neighbour value (chunk + continuation)."""
        if body.k > limits.max_k:
            raise HTTPException(422, f"k={body.k} exceeds the limit of {limits.max_k}")
        limit = gate.config.retrieve_timeout_s
        deadline = time.monotonic() + limit
        if batcher is not None:  # admitted per batch by the batcher
            current = holder.current
            neighbours = await _within(limit, batcher.retrieve, current.retriever, body.text,
                                       body.k, deadline=deadline)
            return _retrieved(current, neighbours)
        place = gate.admit("retrieve")  # 503 now, before a worker thread is taken, when full
        current = holder.current  # this request is served by exactly this deployment

        def run():
            with gate.turn(place):  # gives the place back, late or not
                if time.monotonic() > deadline:  # answered 504 already: skip the work
                    raise RetrieveTimeoutError("retrieval past its time limit")
                return current.retriever.retrieve([body.text], k=body.k)

        try:
            [neighbours] = await _within(limit, run)
        except RetrieveTimeoutError:
            raise  # the worker still holds the place: it gives it back when it is done
        except BaseException:
            place.release()
            raise
        place.release()
        return _retrieved(current, neighbours)

    @app.post("/generate", responses={**TOO_LARGE, **INVALID, **BUSY})
    async def generate(body: GenerateRequest) -> dict:
        """Continue a prompt. The answer names the request id (its generation-log row), the model
        version, the retrieval-set version and the neighbours each completed chunk read."""
        if body.max_new_tokens > limits.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens={body.max_new_tokens} exceeds the limit of "
                                     f"{limits.max_new_tokens}")
        place = gate.admit("generate")
        try:
            return await run_in_threadpool(_generate, holder, place, body, limits, generation_log,
                                           batcher)
        finally:
            place.release()

    @app.put("/deployment/retrieval-set", responses={**ADMIN, **INVALID})
    def swap(body: SwapRequest, token: str = Depends(admin)) -> dict:
        """Swap the served retrieval set (admin: bearer token). The new set's index is loaded and
        verified completely first; requests in flight finish on the old set; the swap is recorded."""
        old = holder.current.describe()
        try:
            new = holder.swap(body.retrieval_set, token)
        except UnknownRetrievalSetError as exc:
            raise HTTPException(404, str(exc)) from exc
        except (RetrievalSetError, IndexIntegrityError) as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"previous": old, "current": new.describe()}

    return app


def _generate(holder: DeploymentHolder, place, body: GenerateRequest, limits: Limits,
              generation_log=None, batcher: RetrieveBatcher | None = None) -> dict:
    """In a worker thread: wait for the turn, generate under the time limit, then (the compute
    gate released) look up sources, build the response and queue its log record. With a
    `batcher`, each completed chunk's query steps out of the turn into the micro-batcher (with
    the other generations' and /retrieve's queries) and queues for the turn again; the time
    limit counts from the first turn, waits included."""
    gate, current, deployment_id = holder.gate, holder.current, holder.deployment_id
    started, request_id = datetime.now(timezone.utc), new_request_id()
    with gate.turn(place) as turn:
        prompt_tokens = len(current.tokenizer(body.prompt, add_special_tokens=False)["input_ids"])
        if prompt_tokens > limits.max_prompt_tokens:
            raise HTTPException(413, f"prompt has {prompt_tokens} tokens; the limit is "
                                     f"{limits.max_prompt_tokens}")
        deadline = time.monotonic() + gate.config.generate_timeout_s
        fetch = None
        if batcher is not None:
            def fetch(text: str, k: int) -> list:
                with turn.stepped_out():
                    return batcher.retrieve(current.retriever, text, k, admitted=True)
        result = current.generator(fetch).generate(body.prompt, max_new_tokens=body.max_new_tokens,
                                                   temperature=body.temperature, seed=body.seed,
                                                   deadline=deadline)
    if generation_log is not None:
        generation_log.record(record_of(
            result, source="http", model_info=current.model_info, retriever=current.retriever,
            params={"max_new_tokens": body.max_new_tokens, "temperature": body.temperature,
                    "seed": body.seed},
            request_id=request_id, started=started, deployment_id=deployment_id))
    return {**_served_by(current), "request_id": request_id, "text": result.text,
            "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens,
            "retrieval_ms": round(result.retrieval_seconds * 1000, 2),
            "model_ms": round(result.model_seconds * 1000, 2),
            "chunks": [{"chunk": r.chunk, "text": r.text,
                        "neighbours": [{"chunk_id": n.chunk_id, "doc_id": n.doc_id, "score": n.score,
                                        "text": n.text, "continuation_text": n.continuation_text,
                                        "continuation_excluded_by": n.continuation_excluded_by,
                                        "source": _source(holder, n.doc_id)}
                                       for n in r.neighbours]}
                       for r in result.retrievals]}


async def _within(seconds: float, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a worker thread, or RetrieveTimeoutError after `seconds`: the
    thread is left to finish (or to find its deadline passed) on its own; the client is answered
    now."""
    try:
        with anyio.fail_after(seconds):
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), abandon_on_cancel=True)
    except TimeoutError as exc:
        if isinstance(exc, RetrieveTimeoutError):
            raise
        raise RetrieveTimeoutError("retrieval past its time limit") from None


def _retrieved(current, neighbours) -> JSONResponse:
    """The /retrieve answer, encoded directly: plain str/int/float only, so FastAPI's recursive
    `jsonable_encoder` (7x the cost of json.dumps on 5 neighbours with their 640 token ids, on
    the event loop every response waits for) has nothing to convert."""
    return JSONResponse({**_served_by(current), "neighbours": [n.as_dict() for n in neighbours]})


def _served_by(current) -> dict:
    return {"model": current.model_info.ref, "retrieval_set": current.retrieval_set,
            "retrieval_set_version": current.set_version}


def _source(holder: DeploymentHolder, doc_id: str) -> str:
    sources = holder.ws.catalog.document_sources(doc_id)
    return sources[0] if sources else ""
