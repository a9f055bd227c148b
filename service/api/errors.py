"""Every error the API returns, in one place: native/TGI shape or OpenAI shape by route."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

OPENAI_PATHS = ("/v1/completions", "/v1/models", "/v1/chat/completions")
OPENAI_TYPES = {
    "validation": "invalid_request_error",
    "overloaded": "server_overloaded",
    "not_ready": "server_unavailable",
    "timeout": "timeout",
    "generation": "server_error",
    "authentication": "authentication_error",
    "not_found": "invalid_request_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "validation",
        param: str | None = None,
        status_openai: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        # OpenAI clients expect 400 for invalid requests where our native routes say 422.
        self.status_openai = status_openai or (400 if status == 422 else status)
        self.code = code
        self.headers = headers or {}


def is_openai_route(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


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


def _validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    if len(exc.errors()) > 1:
        message += f" (and {len(exc.errors()) - 1} more problems)"
    return ApiError(422, message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "not_found" if exc.status_code in (404, 405) else "validation"
        return error_response(
            ApiError(exc.status_code, str(exc.detail), error_type), request.url.path
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error: {type(exc).__name__}", "generation")
        return error_response(error, request.url.path)
