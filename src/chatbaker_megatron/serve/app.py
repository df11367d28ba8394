"""The HTTP API: OpenAI's chat/completions, completions and models routes, /health, the page.

    GET  /                       the web chat page (static/index.html)
    GET  /favicon.ico            the page's icon
    GET  /static/<file>          the page's other files (serve/static/)
    GET  /health                 {"status": "ok", "model", "running", "waiting", counters}
    GET  /v1/models              the one model served
    GET  /v1/models/{id}         that model, or 404
    POST /v1/chat/completions    messages -> reply, streamed (SSE, ends `data: [DONE]`) or not
    POST /v1/completions         raw prompt(s) -> continuation, streamed or not

Every error is OpenAI's body {"error": {"message", "type", "param", "code"}}
(serve/errors.py): 400 for bad input (param names the field, e.g.
`messages[1].role`) and for a field the server does not implement, 400 with
code `content_filter` for an input the filter refused (the model never sees
it), 401 for a missing or wrong key (when the server has --api-key), 404 for
an unknown model, 413 for a body over --max-body-bytes, 429 when the engine
holds all it may or the key is over its --rate-limit (with Retry-After), 500
when generating this request failed, 503 when the moderation service cannot
be reached.

With `--upstream` the same routes, checks, screening, keys, rate limits and
request log stand in front of another OpenAI-compatible engine
(serve/upstream.py, which adds 502/503/504 for the upstream failing).

This module only wires the app: the state is serve/server.py's `Server`, the
routes are serve/routes/, screening serve/screening.py, and the two backends
serve/generate.py (the built-in engine) and serve/forwarding.py (an upstream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatbaker_megatron.serve.errors import APIError, error_response, validation_error
from chatbaker_megatron.serve.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from chatbaker_megatron.serve.routes import openai, site
from chatbaker_megatron.serve.server import Server


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # uvicorn's lifespan: the engine runs while the server does.
    server: Server = app.state.server
    server.start()
    yield
    await server.stop()


# Starlette types an exception handler as taking any Exception; each is registered
# (create_app) for one class only.


async def _on_api_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, APIError)
    return error_response(err)


async def _on_invalid(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    return error_response(validation_error(err))


async def _on_http(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, StarletteHTTPException)
    kind = "not_found" if err.status_code == 404 else None
    return error_response(APIError(err.status_code, str(err.detail), code=kind))


def create_app(server: Server, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The API over `server`; uvicorn's lifespan starts and stops its engine."""
    app = FastAPI(title="chatbaker serve", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.include_router(site.router)
    app.include_router(openai.router)
    app.mount("/static", StaticFiles(directory=site.STATIC_DIR, check_dir=False), name="static")
    return app
