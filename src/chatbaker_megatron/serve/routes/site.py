"""The web chat page, its icon and /health: no key needed, not rate-limited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from chatbaker_megatron.serve.errors import APIError
from chatbaker_megatron.serve.server import ServerDep

STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/")
async def page() -> FileResponse:
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise APIError(404, f"{index}: the web page is not installed", code="not_found")
    return FileResponse(index)


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/health")
async def health(server: ServerDep) -> dict[str, Any]:
    return {"status": "ok", "model": server.model_id, **server.engine.state()}
