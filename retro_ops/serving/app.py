"""The HTTP API (FastAPI): generate, retrieve, health, deployment, and an admin hot swap.

Every response names the model version and the exact retrieval-set version that served it.
The admin swap needs a bearer token configured at start (never a default); request bodies,
prompt tokens and max_new_tokens are capped with clear 4xx errors.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from retro_ops.errors import IndexIntegrityError, RetrievalSetError, UnknownRetrievalSetError
from retro_ops.serving.deployment import DeploymentHolder


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_prompt_tokens: int = 512
    max_new_tokens: int = 256
    max_k: int = 50


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, le=5.0)
    seed: int = 0


class RetrieveRequest(BaseModel):
    text: str = Field(min_length=1)
    k: int = Field(default=5, ge=1)


class SwapRequest(BaseModel):
    retrieval_set: str = Field(min_length=1)


def create_app(holder: DeploymentHolder, *, admin_token: str | None, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="retro-ops serving", version="1",
                  description="RETRO generation and retrieval with a hot-swappable retrieval set.")

    @app.middleware("http")
    async def cap_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_body_bytes:
            return JSONResponse({"detail": f"request body of {length} bytes exceeds "
                                           f"{limits.max_body_bytes}"}, status_code=413)
        return await call_next(request)

    def admin(authorization: str | None = Header(default=None)) -> str:
        if not admin_token:
            raise HTTPException(403, "admin endpoints are disabled: start the server with a token")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        return given

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **holder.current.describe()}

    @app.get("/deployment")
    def deployment() -> dict:
        return holder.current.describe()

    @app.post("/retrieve")
    def retrieve(body: RetrieveRequest) -> dict:
        if body.k > limits.max_k:
            raise HTTPException(422, f"k={body.k} exceeds the limit of {limits.max_k}")
        current = holder.current  # this request is served by exactly this deployment
        with holder.compute_lock:
            [neighbours] = current.retriever.retrieve([body.text], k=body.k)
        return {**_served_by(current), "neighbours": [n.as_dict() for n in neighbours]}

    @app.post("/generate")
    def generate(body: GenerateRequest) -> dict:
        if body.max_new_tokens > limits.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens={body.max_new_tokens} exceeds the limit of "
                                     f"{limits.max_new_tokens}")
        current = holder.current
        with holder.compute_lock:
            prompt_tokens = len(current.tokenizer(body.prompt, add_special_tokens=False)["input_ids"])
            if prompt_tokens > limits.max_prompt_tokens:
                raise HTTPException(413, f"prompt has {prompt_tokens} tokens; the limit is "
                                         f"{limits.max_prompt_tokens}")
            result = current.generator().generate(body.prompt, max_new_tokens=body.max_new_tokens,
                                                  temperature=body.temperature, seed=body.seed)
        return {**_served_by(current), "text": result.text, "prompt_tokens": result.prompt_tokens,
                "new_tokens": result.new_tokens,
                "retrieval_ms": round(result.retrieval_seconds * 1000, 2),
                "model_ms": round(result.model_seconds * 1000, 2),
                "chunks": [{"chunk": r.chunk, "text": r.text,
                            "neighbours": [{"chunk_id": n.chunk_id, "doc_id": n.doc_id, "score": n.score,
                                            "text": n.text, "continuation_text": n.continuation_text,
                                            "source": _source(holder, n.doc_id)}
                                           for n in r.neighbours]}
                           for r in result.retrievals]}

    @app.put("/deployment/retrieval-set")
    def swap(body: SwapRequest, token: str = Depends(admin)) -> dict:
        old = holder.current.describe()
        try:
            new = holder.swap(body.retrieval_set, token)
        except UnknownRetrievalSetError as exc:
            raise HTTPException(404, str(exc)) from exc
        except (RetrievalSetError, IndexIntegrityError) as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"previous": old, "current": new.describe()}

    return app


def _served_by(current) -> dict:
    return {"model": current.model_info.ref, "retrieval_set": current.retrieval_set,
            "retrieval_set_version": current.set_version}


def _source(holder: DeploymentHolder, doc_id: str) -> str:
    sources = holder.ws.catalog.document_sources(doc_id)
    return sources[0] if sources else ""
