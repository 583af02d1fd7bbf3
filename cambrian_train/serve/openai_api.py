"""The OpenAI-compatible HTTP routes: ``POST /v1/chat/completions``, ``GET /v1/models``.

Requests follow OpenAI's chat-completions format: ``messages`` whose ``content`` is a string or
a list of ``{"type": "text"}`` and ``{"type": "image_url", "image_url": {"url": ...}}`` parts
(``data:`` URLs with base64 images; local paths or ``file://`` URLs only with
``--allow-local-files``), ``temperature``, ``top_p``, ``max_tokens`` (or
``max_completion_tokens``), ``seed``, ``stop``, ``stream`` (server-sent ``chat.completion.chunk``
events ending with ``data: [DONE]``; ``stream_options.include_usage`` adds the usage chunk), and
``top_k`` as an extension. A field left out takes the server's default (``cambrian-serve
--temperature/--top-p/--max-new-tokens``). Fields that would change the answer in ways this
server does not implement (``n`` > 1, tools, logprobs, penalties, a JSON response format) are
refused with 400 rather than ignored.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status: 400 a
bad request, 401 a missing or wrong API key (``Authorization: Bearer``), 404 an unknown model,
503 a full queue, 500 a failure inside generation. Requests go through the same
:class:`~cambrian_train.serve.engine.Engine` queue as the web page's.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Tuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from cambrian_train.infer.chat import ChatOptions
from cambrian_train.serve.engine import Engine, GenerationError, Job
from cambrian_train.serve.info import ModelInfo
from cambrian_train.serve.prompts import Message, RequestError, build_prompt, image_from_url

log = logging.getLogger(__name__)

UNSUPPORTED = {  # field -> its only accepted value(s)
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
}


@dataclass
class ApiSettings:
    """How the routes treat requests (from the command line)."""

    model_id: str
    defaults: ChatOptions  # decoding of fields a request leaves out
    max_new_tokens_limit: int = 2048
    allow_local_files: bool = False
    api_key: Optional[str] = None
    request_timeout_s: float = 600.0


def error_body(message: str, status: int, param=None, code=None) -> Dict[str, Any]:
    kind = {401: "authentication_error", 404: "not_found_error", 503: "server_busy"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(error_body(str(err), err.status, err.param, err.code), err.status)


def _number(body: dict, key: str, default, low, high, integer=False, low_open=False):
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestError(
            f"{key}={value!r} must be {'an integer' if integer else 'a number'}", key
        )
    if value < low or (low_open and value == low) or (high is not None and value > high):
        span = f"{'(' if low_open else '['}{low}, {high if high is not None else '∞'}]"
        raise RequestError(f"{key}={value!r} must be in {span}", key)
    return value


def _content(content, where: str, allow_local_files: bool) -> Tuple[str, List]:
    """A message's content → (its text, its images in order)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of parts", where)
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(image_from_url(url, allow_local_files, f"{at}.image_url"))
        else:
            raise RequestError(f"{at}: parts are {{type: text, text}} or {{type: image_url}}", at)
    return "\n".join(texts), images


def parse_messages(raw, allow_local_files: bool) -> List[Message]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("messages must be a non-empty list", "messages")
    out = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(f"{where} must be an object with role and content", where)
        role = {"developer": "system"}.get(msg.get("role"), msg.get("role"))
        text, images = _content(msg.get("content"), where, allow_local_files)
        out.append(Message(role, text, images))
    return out


def parse_options(body: dict, settings: ApiSettings) -> ChatOptions:
    for key, accepted in UNSUPPORTED.items():
        if key in body and body[key] is not None and body[key] not in accepted:
            raise RequestError(f"{key}={body[key]!r} is not supported by this server", key)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise RequestError(
            f"response_format={response_format!r}: only text answers", "response_format"
        )
    d = settings.defaults
    tokens_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    limit = settings.max_new_tokens_limit
    max_new = _number(body, tokens_key, d.max_new_tokens, 1, limit, integer=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
    ):
        raise RequestError(f"stop={body['stop']!r} must be a string or a list of strings", "stop")
    return replace(
        d,
        max_new_tokens=max_new,
        temperature=float(_number(body, "temperature", d.temperature, 0, 2)),
        top_p=float(_number(body, "top_p", d.top_p, 0, 1, low_open=True)),
        top_k=_number(body, "top_k", d.top_k, 0, None, integer=True),
        seed=_number(body, "seed", d.seed, -(2**63), 2**64 - 1, integer=True),
        stop=list(stop) if stop is not None else list(d.stop),
    )


def parse_request(body, settings: ApiSettings) -> Tuple[List[Message], ChatOptions, bool, bool]:
    """A request body → (messages, decoding, stream, include usage in the stream)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != settings.model_id:
        raise RequestError(
            f"model={model!r} is not served here; this server has {settings.model_id!r}",
            "model",
            status=404,
            code="model_not_found",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream={stream!r} must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError(f"stream_options={stream_options!r} must be an object", "stream_options")
    messages = parse_messages(body.get("messages"), settings.allow_local_files)
    return (
        messages,
        parse_options(body, settings),
        stream,
        bool(stream_options.get("include_usage")),
    )


def _chunk(cid: str, created: int, model: str, delta: dict, finish=None, usage=None) -> str:
    data = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n"


def _usage(job: Job) -> Dict[str, int]:
    prompt = job.prompt.num_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": job.num_tokens,
        "total_tokens": prompt + job.num_tokens,
    }


def _events(job: Job, settings: ApiSettings, include_usage: bool) -> Iterator[str]:
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), settings.model_id
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    try:
        for delta in job.stream(settings.request_timeout_s):
            yield _chunk(cid, created, model, {"content": delta})
        yield _chunk(cid, created, model, {}, finish=job.finish_reason)
        if include_usage:
            yield _chunk(cid, created, model, {}, usage=_usage(job))
    except GenerationError as err:  # the status line is sent: the error goes in the stream
        yield f"data: {json.dumps(error_body(str(err), 500))}\n\n"
    yield "data: [DONE]\n\n"


def build_router(engine: Engine, info: ModelInfo, settings: ApiSettings) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), settings.api_key.encode()
        ):
            raise RequestError(
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                status=401,
                code="invalid_api_key",
            )

    def model_card() -> Dict[str, Any]:
        return {
            "id": info.model_id,
            "object": "model",
            "created": info.created,
            "owned_by": "cambrian-train",
            "cambrian": info.as_dict(),
        }

    @router.get("/models")
    def list_models(request: Request):
        try:
            check_key(request)
        except RequestError as err:
            return error_response(err)
        return {"object": "list", "data": [model_card()]}

    @router.get("/models/{model_id:path}")
    def get_model(model_id: str, request: Request):
        try:
            check_key(request)
            if model_id != info.model_id:
                raise RequestError(f"model {model_id!r} is not served here", status=404)
        except RequestError as err:
            return error_response(err)
        return model_card()

    def prepare(raw: bytes) -> Tuple[Job, bool, bool]:
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise RequestError(f"the request body is not JSON: {err}") from None
        messages, options, stream, include_usage = parse_request(body, settings)
        return engine.submit(build_prompt(engine.encoder, messages), options), stream, include_usage

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            check_key(request)
            # tokenising and decoding images is CPU work: off the event loop, like the wait
            job, stream, include_usage = await run_in_threadpool(prepare, await request.body())
            if stream:
                return StreamingResponse(
                    _events(job, settings, include_usage),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            text = await run_in_threadpool(job.result, settings.request_timeout_s)
        except RequestError as err:
            return error_response(err)
        except GenerationError as err:
            return JSONResponse(error_body(str(err), 500), 500)
        except Exception as err:  # a bug must not take the server down: 500, logged
            log.exception("chat completion failed")
            return JSONResponse(error_body(f"{type(err).__name__}: {err}", 500), 500)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": settings.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": job.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(job),
        }

    return router
