"""t2p's HTTP API as a FastAPI app, and what makes it safe to expose.

`create_api(limits, replica)` builds the app; `replica` is how a route finds the model and its
batches (in Serve: the replica this request reached, `serve.get_replica_context().servable_object`;
in tests: any object with `T2PServer`'s methods). Ray Serve mounts it with `serve.ingress`.

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
  checked before any work (`t2p.serve_requests`).
"""
# no `from __future__ import annotations` here: FastAPI reads the route annotations
import asyncio
import hmac
import ipaddress
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pose_format import Pose
from pydantic import BaseModel

from t2p.serve_requests import (CorrectRequest, GenerateRequest, parse_request, sequence_json, validate_composition,
                                validate_request)

if TYPE_CHECKING:
    from t2p.serve import ServeConfig, T2PServer

TOKEN_ENV = "T2P_API_TOKEN"
SEGMENTS_HEADER = "x-t2p-segments"


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


def serve_proxy_host() -> str | None:
    """The address Serve's HTTP proxy listens on, as the running Serve controller has it; None when
    it cannot be told (then a token is required, as for any address beyond loopback)."""
    try:
        from ray.serve.context import _get_global_client  # no public API says where the proxy listens
        return _get_global_client().http_config.host
    except Exception:
        return None


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

class Error(BaseModel):
    """Every error body: one line for the sender."""
    detail: str


ERRORS = {status: {"model": Error, "description": description} for status, description in {
    400: "the body is not a JSON object", 401: "no valid bearer token (when the server has one)",
    413: "the body is over max_body_bytes", 422: "a field is wrong or over a limit (the message names it)",
    504: "the request took longer than request_timeout_s"}.items()}
POSE_OR_JSON = {200: {"description": "`.pose` bytes (format pose) or JSON (format json); a sentence's segments "
                                     f"are in the JSON, or in the `{SEGMENTS_HEADER}` header (JSON) of a .pose",
                      "content": {"application/octet-stream": {}, "application/json": {}}}}


def current_replica() -> "T2PServer":
    """The Serve replica this request reached (the object its deployment class made)."""
    from ray import serve
    return serve.get_replica_context().servable_object


def create_api(limits: "ServeConfig", replica: Callable[[], "T2PServer"] = current_replica) -> FastAPI:
    """The HTTP API over `replica()` with these limits' CORS origins, body limit and timeout."""
    api = FastAPI(title="t2p", description="Sign language notation, glosses or spoken text to pose sequences.")
    bearer = HTTPBearer(auto_error=False, description=f"the server's token (auth_token_file or ${TOKEN_ENV})")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                   server: Any = Depends(replica)) -> Any:
        token = server.token
        if token is not None and (credentials is None or not hmac.compare_digest(
                credentials.credentials.encode(), token.encode())):
            raise HTTPException(status_code=401, detail="a valid bearer token is required: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        return server

    async def within_timeout(work):
        try:
            return await asyncio.wait_for(work, limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(status_code=504, detail=f"the request took longer than {limits.request_timeout_s:g} s "
                                                        "(request_timeout_s): ask for fewer steps or signs") from None

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/v1/model", responses={401: ERRORS[401]})
    async def describe(server: Any = Depends(authorized)) -> dict:
        return server.describe()

    @api.get("/v1/stats", responses={401: ERRORS[401]})
    async def batch_stats(server: Any = Depends(authorized)) -> dict:
        return server.stats.to_dict()

    @api.post("/v1/generate", response_model=None, responses={**POSE_OR_JSON, **ERRORS}, openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": GenerateRequest.model_json_schema()}}}})
    async def generate_route(http_request: Request, server: Any = Depends(authorized)) -> Response:
        """One sign (`text`), or a sentence (`texts` and/or `spoken_text`) composed with transitions."""
        async def work():
            request = parse_request(await http_request.body(), GenerateRequest)
            try:
                if request.is_sentence:
                    sentence = validate_composition(request, server.model, server.limits, server.lexicon)
                    composed = await server.compose(sentence)
                    return await asyncio.to_thread(sentence_response, server, composed, sentence.first_pose,
                                                   request.format)
                job = validate_request(request, server.model, server.limits)
                sequence = await server.generate(job)
            except ValueError as error:
                raise HTTPException(status_code=422, detail=str(error)) from None
            # serialised in a thread: the event loop stays free to gather the next batch
            return await asyncio.to_thread(pose_response, server, server.as_pose(sequence, job.first_pose),
                                           request.format)
        return await within_timeout(work())

    @api.post("/v1/correct", response_model=None, responses={**POSE_OR_JSON, **ERRORS}, openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": CorrectRequest.model_json_schema()}}}})
    async def correct_route(http_request: Request, server: Any = Depends(authorized)) -> Response:
        """A recording with missing frames or keypoints, completed; observed values kept exactly."""
        async def work():
            request = parse_request(await http_request.body(), CorrectRequest)
            try:
                corrected = await server.correct(request)
            except ValueError as error:
                raise HTTPException(status_code=422, detail=str(error)) from None
            return await asyncio.to_thread(pose_response, server, corrected, request.format)
        return await within_timeout(work())

    api.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if limits.cors_origins:  # added last, so outermost: a 413 or 401 reaches a browser's page too
        api.add_middleware(CORSMiddleware, allow_origins=limits.cors_origin_list(), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=[SEGMENTS_HEADER])
    return api


def pose_response(server: Any, pose: Pose, format: str, extra: dict | None = None) -> Response:
    """A written pose as .pose bytes, or as JSON (`sequence_json`) with `extra` keys."""
    from t2p.pose import to_sequence, write_pose
    if format == "json":
        written = to_sequence(pose, server.model.skeleton, normalize=False)
        return JSONResponse({**sequence_json(written, server.model.skeleton), **(extra or {})})
    headers = {"content-disposition": 'attachment; filename="t2p.pose"'}
    if extra:
        headers[SEGMENTS_HEADER] = json.dumps(extra["segments"])  # ASCII: glosses escaped
    return Response(write_pose(pose), media_type="application/octet-stream", headers=headers)


def sentence_response(server: Any, sentence, first_pose, format: str) -> Response:
    """A composed sentence with its segments: which gloss, from where, which frames."""
    segments = [asdict(segment) for segment in sentence.composition.segments]
    return pose_response(server, server.as_pose(sentence.composition.generated, first_pose), format,
                         {"segments": segments, "spoken_language": sentence.spoken_language})
