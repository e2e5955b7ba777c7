"""t2p's HTTP API as a FastAPI app, and what makes it safe to expose.

`create_api(limits, replica)` builds the app; `replica` is how a route finds the model and its
batches (in Serve: the replica this request reached, `serve.get_replica_context().servable_object`;
in tests: any object with those methods, `Replica`). Ray Serve mounts it with `serve.ingress`.

Safe to expose:
- Bearer tokens: a replica reads its token from `auth_token_file`, else `$T2P_API_TOKEN`, and
  compares it in constant time (`hmac.compare_digest`); every route but /healthz, /docs and
  /openapi.json then needs `Authorization: Bearer <token>` (401 otherwise). A replica refuses to
  start without a token when Serve's proxy listens beyond loopback (`require_token_if_exposed`).
- CORS: `cors_origins` (comma-separated; none by default) through Starlette's CORSMiddleware.
- Body size: `BodyLimit` answers 413 from the Content-Length header before reading the body, and
  stops reading a body without one (chunked) once it passes `max_body_bytes`. Ray Serve's proxy
  still drains the upload it was sent; for a hard limit at the network edge, put a reverse proxy
  (e.g. nginx `client_max_body_size`) in front.
- A request that takes longer than `request_timeout_s` is answered 504 with a message (the batch it
  is part of still finishes, for the other requests in it).
- Caps on characters, signs (before and after fingerspelling), frames, steps and steps x frames are
  checked before any work (`t2p.serving.requests`).
"""
# no `from __future__ import annotations` here: FastAPI reads the route annotations
import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from t2p.generation.sentence import Sentence
from t2p.pose import Keypoints, Pose, PoseSequence, to_sequence, write_pose
from t2p.serving.config import TOKEN_ENV, ServeConfig, ServedModel
from t2p.serving.requests import (
    CompositionJob,
    CorrectRequest,
    GenerateRequest,
    Job,
    parse_request,
    sequence_json,
    validate_composition,
    validate_request,
)
from t2p.serving.schemas import Error, Health, ModelDescription, ModelList, PoseBody, SegmentBody, Stats, StepEvent

logger = logging.getLogger(__name__)
SEGMENTS_HEADER = "x-t2p-segments"


class Replica(Protocol):
    """What the routes ask of the replica a request reached (`t2p.serving.app.T2PServer`)."""
    token: str | None
    lexicon: str | None

    def health(self) -> dict: ...
    def list_models(self) -> dict: ...
    def describe(self, served: ServedModel | None = None) -> dict: ...
    def batch_stats(self) -> dict: ...
    async def get_model(self, name: str | None = None) -> ServedModel: ...
    async def generate(self, served: ServedModel, job: Job) -> Keypoints: ...
    def stream(self, served: ServedModel, job: Job) -> AsyncIterator[Keypoints]: ...
    async def compose(self, served: ServedModel, sentence: CompositionJob) -> Sentence: ...
    async def correct(self, served: ServedModel, request: CorrectRequest) -> Pose: ...
    def as_pose(self, served: ServedModel, sequence: Keypoints, first_pose: PoseSequence | None) -> Pose: ...


# --- tokens -------------------------------------------------------------------------------------

def load_token(token_file: str = "") -> str | None:
    """The API token: the first line of `token_file` if given, else $T2P_API_TOKEN; None when neither."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise FileNotFoundError(f"auth_token_file {path} not found")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"auth_token_file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str | None) -> bool:
    """Whether an address the server listens on is reachable only from this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False  # a name or "" (every interface)


def require_token_if_exposed(host: str | None, token: str | None) -> None:
    """Refuse to serve without a token on an address other machines can reach."""
    if token is None and not is_loopback(host):
        where = f"listens on {host!r}, beyond this machine" if host is not None else "cannot tell where it listens"
        raise ValueError(f"the server {where}: set ${TOKEN_ENV} or auth_token_file "
                         "(clients then send Authorization: Bearer <token>), or listen on 127.0.0.1")


# --- body size ----------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, decided from Content-Length before reading
    it, or while reading a body sent without one."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = JSONResponse({"detail": self._too_large(length.decode("latin-1"))}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised in the route's body read: FastAPI answers it
                    raise HTTPException(status_code=413, detail=self._too_large(f"more than {self.max_bytes}"))
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, size: str) -> str:
        return f"body of {size} bytes; the limit is {self.max_bytes} (max_body_bytes)"


# --- the app ------------------------------------------------------------------------------------

class HeadAsGet:
    """HEAD wherever GET is: the GET route answers, its body left out (FastAPI routes take only the
    methods they name; a route declared for both documents itself twice)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)
        await self.app({**scope, "method": "GET"}, receive, headers_only)


ERRORS = {status: {"model": Error, "description": description} for status, description in {
    400: "the body is not a JSON object", 401: "no valid bearer token (when the server has one)",
    408: "the body took longer than body_timeout_s to arrive",
    413: "the body is over max_body_bytes", 422: "a field is wrong or over a limit, or an unknown model (the message names it)",
    500: "the server failed (not the request's fault)",
    504: "the request took longer than request_timeout_s"}.items()}
POSE_OR_JSON = {200: {"description": "`.pose` bytes (format pose) or JSON (format json); a sentence's segments "
                                     f"are in the JSON, or in the `{SEGMENTS_HEADER}` header (JSON) of a .pose",
                      "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                  "application/json": {"schema": {"$ref": "#/components/schemas/PoseBody"}}}}}
GENERATED = {200: {"description": POSE_OR_JSON[200]["description"] + '; with `"stream": true`, one StepEvent per '
                                   "refinement step as newline-delimited JSON (application/x-ndjson), or as server-sent "
                                   "events (`event: step` or `event: error`, `data: <StepEvent>`) when the request "
                                   "accepts text/event-stream",
                   "content": {**POSE_OR_JSON[200]["content"],
                               "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/StepEvent"}},
                               "text/event-stream": {"schema": {"$ref": "#/components/schemas/StepEvent"}}}}}
MODEL_HEADER = "serve_multiplexed_model_id"  # Ray Serve's: its router also sends the request to a replica holding the model
MODEL_HEADER_PARAMETER = {"name": MODEL_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                          "description": 'a model by name (GET /v1/models), as the "model" field does'}




def current_replica() -> Replica:
    """The Serve replica this request reached (the object its deployment class made)."""
    from ray import serve
    return serve.get_replica_context().servable_object


def requested_model(http_request: Request, named: str | None) -> str | None:
    """The model a request names: its "model" field, or Serve's multiplexed-model header."""
    header = http_request.headers.get(MODEL_HEADER) or None
    if named and header and named != header:
        raise HTTPException(status_code=422, detail=f'"model" {named!r} and the {MODEL_HEADER} header {header!r} differ')
    return named or header


def create_api(limits: ServeConfig, replica: Callable[[], Replica] = current_replica) -> FastAPI:
    """The HTTP API over `replica()` with these limits' CORS origins, body limit and timeout."""
    api = FastAPI(title="t2p", description="Sign language notation, glosses or spoken text to pose sequences.")
    the_replica, authorized = _access(replica)
    _read_routes(api, the_replica, authorized)
    _generate_route(api, authorized, limits)
    _correct_route(api, authorized, limits)
    api.add_exception_handler(Exception, _server_error)
    _document_schemas(api, [StepEvent, PoseBody, SegmentBody])
    api.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    api.add_middleware(HeadAsGet)
    if limits.cors_origins:  # added last, so outermost: a 413 or 401 reaches a browser's page too
        api.add_middleware(CORSMiddleware, allow_origins=limits.cors_origin_list(), allow_methods=["GET", "HEAD", "POST"],
                           allow_headers=["Authorization", "Content-Type", MODEL_HEADER],
                           expose_headers=[SEGMENTS_HEADER])
    return api


def _access(replica: Callable[[], Replica]):
    """The routes' dependencies: the replica, and the replica once the request's token is checked."""
    bearer = HTTPBearer(auto_error=False, description=f"the server's token (auth_token_file or ${TOKEN_ENV})")

    # dependencies are coroutines: FastAPI runs a plain `def` one in a worker thread, two thread hops
    # per request that cost more than the check itself
    async def the_replica() -> Any:
        return replica()

    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                         server: Any = Depends(the_replica)) -> Any:
        token = server.token
        if token is not None and (credentials is None or not hmac.compare_digest(
                credentials.credentials.encode(), token.encode())):
            raise HTTPException(status_code=401, detail="a valid bearer token is required: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        return server

    return the_replica, authorized


async def _within_timeout(work, limits: ServeConfig):
    try:
        return await asyncio.wait_for(work, limits.request_timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(status_code=504, detail=timeout_message(limits)) from None


async def read_body(http_request: Request, limits: ServeConfig) -> bytes:
    """The request's body, or 408 once it has taken `body_timeout_s` to arrive: a client that
    uploads slowly (or stops) is answered and let go, and never holds a place in a batch."""
    try:
        return await asyncio.wait_for(http_request.body(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(status_code=408, detail=f"the body did not arrive within {limits.body_timeout_s:g} s "
                                                    "(body_timeout_s): the upload was too slow") from None


async def _served_model(server: Replica, name: str | None) -> ServedModel:
    try:
        return await server.get_model(name)
    except ValueError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None


PAGE = "page.html"  # beside this module: the page at / (served as it is, nothing fetched from elsewhere)


def _read_routes(api: FastAPI, the_replica, authorized) -> None:
    """The page (/), /healthz (neither needs a token) and the routes that describe the server."""
    page = (Path(__file__).with_name(PAGE)).read_text(encoding="utf-8")

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> HTMLResponse:
        """A page to try the API from a browser: type a sign, watch its refinement step by step."""
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    @api.get("/healthz")
    async def healthz(server: Any = Depends(the_replica)) -> Health:
        return Health(**server.health())

    @api.get("/v1/models", responses={401: ERRORS[401]})
    async def list_models(server: Any = Depends(authorized)) -> ModelList:
        """The models this server has, by the names requests pick them with."""
        return ModelList(**server.list_models())

    @api.get("/v1/model", responses={401: ERRORS[401], 422: ERRORS[422]})
    async def describe(http_request: Request, model: str | None = None,
                       server: Any = Depends(authorized)) -> ModelDescription:
        """A model's skeleton, notations, languages, lexicon and limits (`?model=NAME`, else the default)."""
        served = await _served_model(server, requested_model(http_request, model))
        return ModelDescription(**server.describe(served))

    @api.get("/v1/stats", responses={401: ERRORS[401]})
    async def batch_stats(server: Any = Depends(authorized)) -> Stats:
        return Stats(**server.batch_stats())


def _generate_route(api: FastAPI, authorized, limits: ServeConfig) -> None:
    @api.post("/v1/generate", response_model=None, responses={**GENERATED, **ERRORS}, openapi_extra={
        "parameters": [MODEL_HEADER_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": GenerateRequest.model_json_schema()}}}})
    async def generate_route(http_request: Request, server: Any = Depends(authorized)) -> Response:
        """One sign (`text`), or a sentence (`texts` and/or `spoken_text`) composed with transitions;
        `"stream": true` (one sign): its sequence after every refinement step, as it is made."""
        deadline = asyncio.get_running_loop().time() + limits.request_timeout_s
        body = await read_body(http_request, limits)

        async def work():
            request = parse_request(body, GenerateRequest)
            served = await _served_model(server, requested_model(http_request, request.model))
            try:
                if request.is_sentence:
                    sentence = validate_composition(request, served.model, served.limits, server.lexicon)
                    composed = await server.compose(served, sentence)
                    return await asyncio.to_thread(sentence_response, server, served, composed, sentence.first_pose,
                                                   request.format)
                job = validate_request(request, served.model, served.limits)
                if request.stream:
                    sse = "text/event-stream" in http_request.headers.get("accept", "")
                    return streamed(server, served, job, request.format, sse, deadline, limits)
                sequence = await server.generate(served, job)
            except ValueError as error:
                raise HTTPException(status_code=422, detail=str(error)) from None
            # serialised in a thread: the event loop stays free to gather the next batch
            return await asyncio.to_thread(pose_response, served, server.as_pose(served, sequence, job.first_pose),
                                           request.format)
        return await _within_timeout(work(), limits)


def _correct_route(api: FastAPI, authorized, limits: ServeConfig) -> None:
    @api.post("/v1/correct", response_model=None, responses={**POSE_OR_JSON, **ERRORS}, openapi_extra={
        "parameters": [MODEL_HEADER_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": CorrectRequest.model_json_schema()}}}})
    async def correct_route(http_request: Request, server: Any = Depends(authorized)) -> Response:
        """A recording with missing frames or keypoints, completed; observed values kept exactly."""
        body = await read_body(http_request, limits)

        async def work():
            request = parse_request(body, CorrectRequest)
            served = await _served_model(server, requested_model(http_request, request.model))
            try:
                corrected = await server.correct(served, request)
            except ValueError as error:
                raise HTTPException(status_code=422, detail=str(error)) from None
            return await asyncio.to_thread(pose_response, served, corrected, request.format)
        return await _within_timeout(work(), limits)


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("request failed", exc_info=error)  # the body is ERRORS' Error, as every other
    return JSONResponse({"detail": f"the server failed ({type(error).__name__}); not a fault of the request"},
                        status_code=500)


def _document_schemas(api: FastAPI, models: list[type[BaseModel]]) -> None:
    """Adds schemas that only raw responses name (by $ref) to the app's OpenAPI components."""
    build = api.openapi

    def openapi() -> dict:
        if api.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                described = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(described.pop("$defs", {}))
                components.setdefault(model.__name__, described)
        return api.openapi_schema
    api.openapi = openapi


def timeout_message(limits: ServeConfig) -> str:
    return f"the request took longer than {limits.request_timeout_s:g} s (request_timeout_s): ask for fewer steps or signs"


def streamed(server: "Replica", served: ServedModel, job: Job, format: str, sse: bool, deadline: float,
             limits: ServeConfig) -> StreamingResponse:
    """A one-sign request's sequence after each of its steps: NDJSON lines, or server-sent events."""
    async def events():
        loop = asyncio.get_running_loop()
        steps = server.stream(served, job)
        step = 0
        try:
            while True:
                try:
                    sequence = await asyncio.wait_for(anext(steps), max(0.0, deadline - loop.time()))
                except StopAsyncIteration:
                    return
                step += 1
                body = await asyncio.to_thread(step_body, served, server.as_pose(served, sequence, job.first_pose),
                                               format)
                yield {"step": step, "steps": job.request.steps, **body}
        except asyncio.TimeoutError:
            yield {"error": timeout_message(limits), "status": 504}
        except ValueError as error:
            yield {"error": str(error), "status": 422}
        except Exception as error:  # noqa: BLE001: the status line is sent; the stream says what happened
            logger.exception("stream failed")
            yield {"error": f"the server failed ({type(error).__name__})", "status": 500}
        finally:
            await steps.aclose()

    async def framed():
        async for event in events():
            text = json.dumps(event)
            if sse:
                yield f"event: {'error' if 'error' in event else 'step'}\ndata: {text}\n\n"
            else:
                yield text + "\n"

    return StreamingResponse(framed(), media_type="text/event-stream" if sse else "application/x-ndjson",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def written_json(served: ServedModel, pose: Pose) -> dict:
    written = to_sequence(pose, served.model.skeleton, normalize=False)
    return sequence_json(written, served.model.skeleton)


def step_body(served: ServedModel, pose: Pose, format: str) -> dict:
    """One streamed step as JSON fields, or as base64 .pose bytes."""
    if format == "json":
        return written_json(served, pose)
    return {"pose": base64.b64encode(write_pose(pose)).decode()}


def pose_response(served: ServedModel, pose: Pose, format: str, extra: dict | None = None) -> Response:
    """A written pose as .pose bytes, or as JSON (`sequence_json`) with `extra` keys."""
    if format == "json":
        return JSONResponse({**written_json(served, pose), **(extra or {})})
    headers = {"content-disposition": 'attachment; filename="t2p.pose"'}
    if extra:
        headers[SEGMENTS_HEADER] = json.dumps(extra["segments"])  # ASCII: glosses escaped
    return Response(write_pose(pose), media_type="application/octet-stream", headers=headers)


def sentence_response(server: "Replica", served: ServedModel, sentence: Sentence, first_pose: PoseSequence | None,
                      format: str) -> Response:
    """A composed sentence with its segments: which gloss, from where, which frames."""
    segments = [asdict(segment) for segment in sentence.composition.segments]
    return pose_response(served, server.as_pose(served, sentence.composition.keypoints, first_pose), format,
                         {"segments": segments, "spoken_language": sentence.spoken_language})
