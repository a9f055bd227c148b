"""The FastAPI application: `create_app(settings)` wires settings, models, metrics, middleware
and routes. Nothing here runs at import time."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import service
from service.api import routes_chat, routes_openai, routes_tgi, routes_tokenize, routes_translate
from service.api.errors import ApiError, error_response, install_error_handlers
from service.api.generation import ClientDisconnected
from service.api.metrics import Metrics
from service.api.registry import ModelRegistry, ServedModel
from service.api.settings import Settings

log = logging.getLogger("attnserve")
UNAUTHENTICATED_PATHS = {"/health", "/ready", "/metrics"}
# Pages with no data in them, which a browser must load before it can send the key: the
# playground (it asks for the key) and the API's docs. GET only: `POST /` is TGI's route.
PUBLIC_PAGES = {"/", "/docs", "/redoc", "/openapi.json"}
# Swagger UI's and ReDoc's scripts, as the fastapi-offline package ships them: /docs and /redoc
# load them from this server, not from a CDN, so they work where the server has no internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
GENERATION_PATHS = {
    "/v1/translate", "/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions"
}  # fmt: skip
MODEL_PATHS = "/models/"  # TGI's routes, one base URL per model (routes_tgi.py)


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FastAPI:
    """The app; models load at startup unless a registry is given (tests)."""
    metrics = Metrics()

    async def load() -> None:
        """Models load after the server listens, so /health and /ready answer meanwhile."""
        try:
            if app.state.registry is None:
                app.state.registry = await asyncio.to_thread(ModelRegistry.load, settings, metrics)
            await asyncio.to_thread(app.state.registry.warm_up)
        except Exception:
            log.exception("the models could not be loaded")
            app.state.status = "failed"
            app.state.on_failure()
            return
        if app.state.status != "starting":  # stopped while loading
            return
        app.state.registry.start()
        app.state.status = "ready"
        log.info("ready: %s", ", ".join(app.state.registry.models))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load())
        yield
        if app.state.status != "failed":  # the process's exit status says so
            app.state.status = "stopped"
        await loading
        if app.state.registry is not None:
            app.state.registry.shutdown()

    app = FastAPI(
        title="attnserve",
        version=service.__version__,
        lifespan=lifespan,
        docs_url=None,  # served below, with local assets
        redoc_url=None,
        # A body without a Content-Type is read as JSON (`requests.post(url, data=json.dumps(..))`),
        # as older FastAPI versions did; another content type is refused.
        strict_content_type=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    if registry is not None:
        for model_id, served in registry.models.items():
            metrics.watch(model_id, served.llm)
    app.state.status = "starting"  # → "ready" → "draining" → "stopped"; or "failed" to load
    app.state.on_failure = lambda: None  # the server sets how to exit when loading fails
    app.state.num_in_flight = 0
    install_error_handlers(app)
    # Inside the request middleware below (added later, so it wraps these): a 413 or 415 is
    # logged and counted like any other answer, and a HEAD as itself.
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        """Request id, auth, drain refusal, disconnects, metrics and one JSON log line."""
        request.state.arrival = time.perf_counter()
        request.state.request_id = _request_id(request.headers.get("x-request-id"))
        path = request.url.path
        is_generation = request.method == "POST" and (
            path in GENERATION_PATHS
            or (path.startswith(MODEL_PATHS) and not path.rstrip("/").endswith("/tokenize"))
        )
        app.state.num_in_flight += is_generation
        try:
            response = await _guarded(request, call_next, is_generation)
        finally:
            app.state.num_in_flight -= is_generation
        response.headers["X-Request-Id"] = request.state.request_id
        if is_generation:
            model = _model_label(app, request)
            metrics.requests.labels(model, _route_label(request), str(response.status_code)).inc()
            body = getattr(response, "body_iterator", None)  # call_next's responses stream
            if body is not None and response.headers.get("content-type", "").startswith(
                "text/event-stream"
            ):
                response.body_iterator = _logged_at_the_end(body, request, response)  # type: ignore[attr-defined]
            else:
                _log(request, response)
        return response

    async def _guarded(request: Request, call_next, is_generation: bool) -> Response:
        path = request.url.path
        try:
            if settings.api_key and _needs_key(request):
                scheme, _, key = request.headers.get("authorization", "").partition(" ")
                authorized = scheme.lower() == "bearer" and hmac.compare_digest(
                    key.strip().encode(), settings.api_key.encode()
                )
                if not authorized:
                    raise ApiError(
                        401,
                        "missing or wrong API key (Authorization: Bearer …)",
                        "authentication",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            if is_generation and app.state.status != "ready":
                raise ApiError(503, f"the server is {app.state.status}", "not_ready")
            return await call_next(request)
        except ApiError as error:
            return error_response(error, path)
        except ClientDisconnected:
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except Exception as error:  # answered here, so the connection stays usable
            log.exception("unexpected error on %s", path)
            return error_response(
                ApiError(500, f"internal error: {type(error).__name__}", "generation"), path
            )

    async def _logged_at_the_end(body, request: Request, response: Response):
        """A stream's log line is written when it ends, with its whole duration."""
        try:
            async for chunk in body:
                yield chunk
        finally:
            _log(request, response)

    def _log(request: Request, response: Response) -> None:
        log.info(
            json.dumps(
                {
                    "request_id": request.state.request_id,
                    "route": request.url.path,
                    "model": getattr(request.state, "model_id", ""),
                    "status": response.status_code,
                    "server_timing": response.headers.get("server-timing"),
                    "ms": round(1000 * (time.perf_counter() - request.state.arrival), 1),
                }
            )
        )

    app.include_router(routes_translate.router)
    app.include_router(routes_tokenize.router)
    # chat and completions at a model's base URL go before TGI's `/models/{id}` catch-all
    app.include_router(routes_chat.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_tgi.router)
    _add_operations(app, settings, metrics)
    return app


def _needs_key(request: Request) -> bool:
    path = request.url.path
    if path in UNAUTHENTICATED_PATHS:
        return False
    page = path in PUBLIC_PAGES or path.startswith("/docs-assets/")
    return not (page and request.method in ("GET", "HEAD"))


def _request_id(given: str | None) -> str:
    """The client's X-Request-Id when it is a sane one (1-128 visible ASCII characters, which
    logs and headers can carry as they are); otherwise a new one."""
    if given and len(given) <= 128 and all("!" <= c <= "~" for c in given):
        return given
    return uuid.uuid4().hex


def _model_label(app: FastAPI, request: Request) -> str:
    """The `model` label of a generation request: the model its route served it with; if it was
    refused before, the one its URL names, or its body's (a body refused as invalid: the model
    it names if served, the route's default if it names none); "" if none is known."""
    model = getattr(request.state, "model_id", "") or _model_in_path(app, request.url.path)
    body = getattr(request.state, "refused_body", None)
    registry = app.state.registry
    if model or not isinstance(body, dict) or registry is None:
        return model
    named = body.get("model")
    if not isinstance(named, str | None):
        return ""
    try:
        return registry.get(named, translation=request.url.path == "/v1/translate").model_id
    except ApiError:  # a model not served, or one this route does not serve (a generator)
        return named if named is not None and named in registry.models else ""


def _model_in_path(app: FastAPI, path: str) -> str:
    """The served model a `/models/{id}/...` URL names ("" if none): the label of a request
    refused before its route read the model (a body that does not parse, 413, 401, 503)."""
    registry = app.state.registry
    if registry is None or not path.startswith(MODEL_PATHS):
        return ""
    rest = path.removeprefix(MODEL_PATHS)
    named = [m for m in registry.models if rest == m or rest.startswith(m + "/")]
    return max(named, key=len, default="")


def _route_label(request: Request) -> str:
    """The `route` label: the matched route's template (`/models/{model_id}/generate`), not the
    URL, so that clients cannot add series by sending new URLs. Refused before routing (401,
    503, 413): the path if it is a route's, or `/models/{model_id}`."""
    route = request.scope.get("route")
    if route is not None:
        return route.path.replace(":path}", "}")
    path = request.url.path
    return path if path in GENERATION_PATHS else MODEL_PATHS + "{model_id}"


def _add_operations(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    @app.get("/health")
    async def health():
        if app.state.status == "failed":  # the models could not load: restart me
            return JSONResponse({"status": "failed"}, status_code=503)
        registry = app.state.registry
        if app.state.status == "ready" and registry is not None:
            stopped = [m for m, s in registry.models.items() if not s.async_engine.is_running]
            if stopped:  # an engine thread died: nothing would ever answer (restart me)
                return JSONResponse({"status": "failed", "stopped": stopped}, status_code=503)
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "loading, failed to load, or draining"}})
    async def ready():
        status = app.state.status
        return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info():
        registry = app.state.registry
        server_limits = {
            "max_running_requests": settings.max_running_requests,
            "max_queued_requests": settings.max_queued_requests,
            "max_tokens_per_step": settings.max_tokens_per_step,
            "kv_cache_mb": settings.kv_cache_mb,
            "request_timeout_s": settings.request_timeout_s,
            "batching": settings.batching,
        }

        def limits(served: ServedModel) -> dict:
            """The server's limits, within what this model's positions allow (a decoder-only
            model's prompt and new tokens share them; the decoder's start takes one)."""
            return {
                "max_input_tokens": served.llm.max_input_tokens,
                "max_new_tokens": served.max_new_tokens(settings.max_new_tokens),
                **server_limits,
            }

        models = [] if registry is None else [
            {"id": m.model_id, "task": "translation" if m.is_translation else "generation",
             **m.llm.describe(), "limits": limits(m)}
            for m in registry.models.values()
        ]  # fmt: skip
        return {
            "name": "attnserve",
            "version": service.__version__,
            "status": app.state.status,
            "models": models,
        }

    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    def docs_urls(request: Request) -> tuple[str, str]:
        """The schema's URL and the assets' folder, behind a proxy's root path too."""
        root = request.scope.get("root_path", "")
        return f"{root}/openapi.json", f"{root}/docs-assets"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request):
        openapi_url, assets = docs_urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title="attnserve - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        openapi_url, assets = docs_urls(request)
        return get_redoc_html(
            openapi_url=openapi_url,
            title="attnserve - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )

    playground = (Path(__file__).parent / "playground.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        """The playground: run a model, see the tokens stream, the timings and the alignment."""
        return playground


class HeadAsGet:
    """HEAD wherever GET is (load balancers and link checkers send it): the GET's status and
    headers, without its body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class BodySizeLimit:
    """413 for bodies over the limit, by Content-Length or, for a chunked body, by reading it
    here first (an error raised while the app reads it would turn into a 400); 415 for a
    compressed body (it would read as bad JSON)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        if encoding not in ("", "identity") and scope["method"] in ("POST", "PUT", "PATCH"):
            why = f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
            error = ApiError(415, why, "validation", param="Content-Encoding")
            return await error_response(error, scope["path"])(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        if length is not None:  # the server stops reading at Content-Length
            return await self.app(scope, receive, send)
        body, message = b"", await receive()
        while message["type"] == "http.request":
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
            message = await receive()
        replay: list[Message] = [
            message
            if message["type"] != "http.request"
            else {"type": "http.request", "body": body, "more_body": False}
        ]

        async def replaying_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replaying_receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(413, f"the body is over {self.max_bytes} bytes", "validation")
        await error_response(error, scope["path"])(scope, receive, send)
