"""`retro-ops serve`: the HTTP API for one model and a hot-swappable retrieval set."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from retro_ops.cli.common import ModelOpt, err, fail, set_option, settings
from retro_ops.default_corpora import DEMO_RETRIEVAL_SET
from retro_ops.errors import AdminTokenError, RetroOpsError, SettingsError
from retro_ops.serving.security import check_admin_token, check_bind

#: the admin bearer token of PUT /deployment/retrieval-set (16+ characters; without it, or
#: --token-file, that endpoint is disabled)
TOKEN_ENV = "RETRO_OPS_ADMIN_TOKEN"


def admin_token(token_file: Path | None) -> str | None:
    """From --token-file or $RETRO_OPS_ADMIN_TOKEN (the same >= 16 characters rule for both);
    None disables the admin endpoint."""
    try:
        if token_file is not None:
            token = check_admin_token(token_file.read_text(), str(token_file))
            if token is None:
                fail(f"{token_file}: the token file is empty")
            return token
        return check_admin_token(os.environ.get(TOKEN_ENV), f"${TOKEN_ENV}")
    except OSError as exc:
        fail(f"{token_file}: cannot read the token file: {exc.strerror}")
    except AdminTokenError as exc:
        fail(str(exc))


def serve_command(
    model: ModelOpt = "retro",
    retrieval_set: Annotated[str, set_option("Served first; swap it at run time with PUT "
                                             "/deployment/retrieval-set.")] = DEMO_RETRIEVAL_SET,
    host: Annotated[str, typer.Option(help="Interface to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token_file: Annotated[Optional[Path], typer.Option(
        help=f"File holding the admin bearer token (else ${TOKEN_ENV}; without either, the "
             "swap endpoint is disabled).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Cap on max_new_tokens per request.")] = 256,
    max_prompt_tokens: Annotated[int, typer.Option(min=1, help="Cap on prompt tokens.")] = 512,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests waiting behind the running one; "
                                           "beyond them 503 + Retry-After.")] = 8,
    generate_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a generation may run "
                                                    "before it is stopped (504).")] = 30.0,
    queue_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request may wait for "
                                                 "its turn before a 503.")] = 15.0,
    retrieve_timeout: Annotated[float, typer.Option(min=0.01, help="Seconds a /retrieve may take, "
                                                    "its wait for a turn included, before a "
                                                    "504.")] = 10.0,
    header_timeout: Annotated[float, typer.Option(min=0.01, help="Seconds a client may take to send "
                                                  "a request's headers (from connecting, or from "
                                                  "the previous response) before a 408 and a "
                                                  "close.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(min=0.01, help="Seconds a client may take to send a "
                                                "whole request body after its headers before a 408 "
                                                "and a close.")] = 30.0,
    max_connections: Annotated[int, typer.Option(min=1, help="Open connections beyond which a new "
                                                 "one gets 503 at once; must stay below the "
                                                 "open-file limit (ulimit -n) minus 256.")] = 512,
    max_wait: Annotated[float, typer.Option(min=0.0, help="Admit a request only while the work ahead "
                                            "of it is at most this many of its own (measured) service "
                                            "times; keeps accepted latency flat under overload. 0 = "
                                            "only the queue bound.")] = 2.0,
    generation_log: Annotated[bool, typer.Option(
        help="Keep every generation in the LanceDB generation log (+ MLflow traces); "
             "settings from $RETRO_OPS_GENERATION_LOG* (see `retro-ops generations --help`).")] = True,
    batch_wait_ms: Annotated[float, typer.Option(min=-1.0, help="Micro-batch concurrent /retrieve "
                                                 "and generation queries into one encoder call, the "
                                                 "first waiting for more until none came for this "
                                                 "long; -1 = one by one.")] = 2.0,
    batch_gather_ms: Annotated[float, typer.Option(min=0.0, help="A batch also waits for as many "
                                                   "/retrieve queries as the last one answered, "
                                                   "at most this long; 0 = no such wait.")] = 0.0,
) -> None:
    """Serve /generate, /retrieve, /health, /deployment and PUT /deployment/retrieval-set
    (OpenAPI schema at /docs). Every start and swap is recorded in the catalog."""
    import uvicorn

    from retro_ops.serving.admission import AdmissionConfig
    from retro_ops.serving.app import Limits, create_app
    from retro_ops.serving.batching import BatchConfig
    from retro_ops.serving.connections import ConnectionLimits, check_open_file_limit, guarded_protocol
    from retro_ops.serving.deployment import DeploymentHolder
    from retro_ops.workspace import Workspace

    token = admin_token(token_file)
    connections = ConnectionLimits(header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                                   max_connections=max_connections)
    try:
        check_bind(host, token)
        check_open_file_limit(max_connections)
    except (AdminTokenError, SettingsError) as exc:
        fail(str(exc))
    admission = AdmissionConfig(max_queue=max_queue, generate_timeout_s=generate_timeout,
                                queue_timeout_s=queue_timeout, max_wait_services=max_wait or None,
                                retrieve_timeout_s=retrieve_timeout)
    from retro_ops.cli.generations import open_generation_log

    try:
        ws = Workspace.open(settings())
        log = open_generation_log(ws) if generation_log else None  # a bad setting: before any record
        holder = DeploymentHolder.start(ws, model, retrieval_set, f"http://{host}:{port}", token,
                                        admission)
    except (RetroOpsError, ValueError) as exc:
        fail(str(exc))
    batching = BatchConfig(max_wait_s=batch_wait_ms / 1000, max_gather_s=batch_gather_ms / 1000) \
        if batch_wait_ms >= 0 else None
    app = create_app(holder, admin_token=token, generation_log=log, batching=batching,
                     limits=Limits(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens))
    # The model, tokenizer, index and imports are never garbage: move them out of the collector's
    # view, or each full collection walks them all while holding the GIL (0.7 s stalls of /health
    # measured with a test process's heap).
    gc.collect()
    gc.freeze()
    described = holder.current.describe()
    err.print(f"serving {described['model']} with retrieval set {described['retrieval_set']} "
              f"v{described['retrieval_set_version']} on http://{host}:{port} (docs: /docs); "
              f"admin swap {'enabled' if token else 'disabled (no token)'}")
    uvicorn.run(app, host=host, port=port, log_level="warning", http=guarded_protocol(connections))
