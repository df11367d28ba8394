"""OpenAI's error body, and pydantic's validation errors turned into it (a 400 naming the field).

Every error has the body {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from chatbaker_megatron.serve.schemas import FieldError


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body, status_code=err.status, headers=err.headers)


# pydantic's tags for the members of a union (`str`, `list[str]`) inside an error's location.
_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """`messages[1].role` from pydantic's ("body", "messages", 1, "role", ...)."""
    param = ""
    for part in loc[1:]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part.isidentifier() and part not in _UNION_TAGS:
            param += f".{part}" if param else part
        else:
            break
    return param or None


def validation_error(err: RequestValidationError) -> APIError:
    first = err.errors()[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "cannot parse")
        return APIError(400, f"the request body is not valid JSON: {reason} at {first['loc'][-1]}")
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):  # a check across fields names its field itself
        return APIError(400, str(cause), param=cause.field)
    param = _param(tuple(first["loc"]))
    if param is None:
        return APIError(400, "the request body must be a JSON object")
    if first["type"] == "extra_forbidden":
        return APIError(
            400, f"{param}: unknown field (not in OpenAI's API for this route)", param=param
        )
    got = first.get("input")
    shown = (
        "" if first["type"] == "missing" else f" (got {json.dumps(got, ensure_ascii=False)[:80]})"
    )
    return APIError(400, f"{param}: {first['msg']}{shown}", param=param)
