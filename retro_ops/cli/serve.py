"""`retro-ops serve`: the HTTP API for one model and a hot-swappable retrieval set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from retro_ops.cli.common import ModelOpt, err, fail, set_option, settings
from retro_ops.errors import RetroOpsError

TOKEN_ENV = "RETRO_OPS_ADMIN_TOKEN"


def admin_token(token_file: Path | None) -> str | None:
    """From --token-file or $RETRO_OPS_ADMIN_TOKEN; None disables the admin endpoint."""
    if token_file is not None:
        token = token_file.read_text().strip()
        if len(token) < 16:
            fail(f"{token_file}: an admin token needs at least 16 characters")
        return token
    return os.environ.get(TOKEN_ENV) or None


def serve_command(
    model: ModelOpt = "retro",
    retrieval_set: Annotated[str, set_option("Served first; swap it at run time with PUT "
                                             "/deployment/retrieval-set.")] = "sotu",
    host: Annotated[str, typer.Option(help="Interface to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token_file: Annotated[Optional[Path], typer.Option(
        help=f"File holding the admin bearer token (else ${TOKEN_ENV}; without either, the "
             "swap endpoint is disabled).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Cap on max_new_tokens per request.")] = 256,
    max_prompt_tokens: Annotated[int, typer.Option(min=1, help="Cap on prompt tokens.")] = 512,
) -> None:
    """Serve /generate, /retrieve, /health, /deployment and PUT /deployment/retrieval-set
    (OpenAPI schema at /docs). Every start and swap is recorded in the catalog."""
    import uvicorn

    from retro_ops.serving.app import Limits, create_app
    from retro_ops.serving.deployment import DeploymentHolder
    from retro_ops.workspace import Workspace

    token = admin_token(token_file)
    try:
        holder = DeploymentHolder.start(Workspace.open(settings()), model, retrieval_set,
                                        f"http://{host}:{port}", token)
    except (RetroOpsError, ValueError) as exc:
        fail(str(exc))
    app = create_app(holder, admin_token=token,
                     limits=Limits(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens))
    described = holder.current.describe()
    err.print(f"serving {described['model']} with retrieval set {described['retrieval_set']} "
              f"v{described['retrieval_set_version']} on http://{host}:{port} (docs: /docs); "
              f"admin swap {'enabled' if token else 'disabled (no token)'}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
