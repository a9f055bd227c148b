"""Every error the API returns, in one place: native/TGI shape or OpenAI shape by route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.schemas import FieldError

NATIVE_V1_PATHS = ("/v1/translate",)  # every other /v1/ path answers in OpenAI's shape
OPENAI_TYPES = {
    "validation": "invalid_request_error",
    "overloaded": "server_overloaded",
    "not_ready": "server_unavailable",
    "timeout": "timeout",
    "generation": "server_error",
    "authentication": "authentication_error",
    "not_found": "invalid_request_error",
    "method_not_allowed": "invalid_request_error",
}
# What FastAPI answers (400) when a body cannot even be decoded: not UTF-8, nested too deeply.
UNPARSEABLE_BODY = "There was an error parsing the body"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "validation",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        # OpenAI clients expect 400 for invalid requests where our native routes say 422.
        self.status_openai = 400 if status == 422 else status
        self.code = code
        self.headers = headers or {}


# What /openapi.json says the errors look like (FastAPI would document its own 422 shape).


class NativeError(BaseModel):
    error: str  # names the field at fault, for invalid requests
    error_type: str  # validation, overloaded, not_ready, timeout, generation, authentication,
    # not_found, method_not_allowed


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


def documented_errors(openai: bool) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a router's routes: every 4xx and 5xx in the route's error shape."""
    model = OpenAIError if openai else NativeError
    invalid = "400" if openai else "422"
    return {
        "4XX": {
            "model": model,
            "description": f"{invalid}: invalid request (the message names the field); 401: no "
            "or a wrong API key; 404: unknown model or route; 413: body too large; 429: "
            "overloaded, retry after Retry-After",
        },
        "5XX": {
            "model": model,
            "description": "500: generation failed; 503: loading or shutting down; 504: the "
            "request's deadline passed",
        },
    }


# A streamed answer (`"stream": true`, or a streaming route): server-sent events.
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or server-sent events when streaming",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def is_openai_route(path: str) -> bool:
    return path.startswith("/v1/") and not path.startswith(NATIVE_V1_PATHS)


def error_body(error: ApiError, openai: bool) -> dict:
    if openai:
        return {
            "error": {
                "message": error.message,
                "type": OPENAI_TYPES.get(error.error_type, error.error_type),
                "param": error.param,
                "code": error.code,
            }
        }
    return {"error": error.message, "error_type": error.error_type}


def error_response(error: ApiError, path: str) -> JSONResponse:
    openai = is_openai_route(path)
    return JSONResponse(
        error_body(error, openai),
        status_code=error.status_openai if openai else error.status,
        headers=error.headers,
    )


def _validation_error(exc: RequestValidationError, content_type: str) -> ApiError:
    errors = exc.errors()
    first = errors[0]
    # The field's path: names and list indices, without pydantic's tags for union members
    # ("constrained-str", "list[...]") or the leading "body".
    location = [
        str(part)
        for part in first.get("loc", ())
        if part != "body" and (isinstance(part, int) or str(part).isidentifier())
    ]
    cause = (first.get("ctx") or {}).get("error")
    param = cause.field if isinstance(cause, FieldError) else ".".join(location) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        param, message = None, f"the body is not valid JSON ({first.get('ctx', {}).get('error')})"
    elif first.get("type") == "missing" and not location:
        message = "the body is empty: a JSON object is required"
    elif first.get("type") == "model_attributes_type" and "json" not in content_type:
        message = "the body must be a JSON object, sent with Content-Type: application/json"
    elif first.get("type") == "model_attributes_type" and not location:  # [1, 2], "text", null
        message = "the body must be a JSON object"
    elif param and not message.startswith(param):
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return ApiError(422, message, param=param)


def _methods_of(request: Request, allowed: str) -> str:
    """Every method the request's path has, from the API's schema (Starlette's `allowed`
    names one route's), and HEAD wherever GET is (app.HeadAsGet answers it)."""
    operations = request.app.openapi()["paths"].get(request.url.path) or {}
    methods = {method.upper() for method in operations} | set(allowed.split(", "))
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.refused_body = exc.body  # its model labels the request's counter
        content_type = request.headers.get("content-type", "")
        return error_response(_validation_error(exc, content_type), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == UNPARSEABLE_BODY:  # an invalid body: 422
            error = ApiError(422, f"the body could not be parsed as JSON ({exc.__cause__})")
        elif exc.status_code == 404 and exc.detail == "Not Found":  # no such route
            routes = sorted(request.app.openapi()["paths"])  # every route the app has
            message = (
                f"no route {request.method} {request.url.path}; the routes: {', '.join(routes)}"
            )
            error = ApiError(404, message, "not_found")
        else:
            error_type = {404: "not_found", 405: "method_not_allowed"}.get(
                exc.status_code, "validation"
            )
            headers = dict(exc.headers or {})
            if exc.status_code == 405 and "Allow" in headers:
                headers["Allow"] = _methods_of(request, headers["Allow"])
            error = ApiError(exc.status_code, str(exc.detail), error_type, headers=headers)
        return error_response(error, request.url.path)
