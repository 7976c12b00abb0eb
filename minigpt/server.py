"""An OpenAI-compatible HTTP server over the continuous-batching scheduler.

Implements the part of OpenAI's API that text generation needs, as documented at
platform.openai.com/docs/api-reference: `GET /v1/models`, `POST /v1/completions`
and `POST /v1/chat/completions` (the conversation rendered through the model's own
chat template, `minigpt.chat`), with `stream: true` sent as server-sent events
ending in `data: [DONE]`, `usage` counts, and errors in OpenAI's JSON shape
`{"error": {"message", "type", "param", "code"}}`. The official `openai` client
talks to it unchanged; the tests use it.

One background thread, the `Engine`, owns the model and the `Scheduler` and runs
the steps; the HTTP handlers, on uvicorn's asyncio event loop, hand it requests
through a thread-safe queue and get their events back through asyncio queues.
A client that goes away has its request cancelled, which frees its batch slot
and KV blocks. FastAPI and uvicorn are imported only here, and only when a server
is made: they are the optional extra `serve`.

Leaves out on purpose: authentication (it binds 127.0.0.1 unless told otherwise),
`n` > 1, log probabilities, tools and function calling, and several models at once.
"""

# no `from __future__ import annotations` here: FastAPI reads the handlers'
# annotations as objects, and `Http` below is imported inside create_app
import asyncio
import json
import math
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from minigpt.chat import end_of_turn_ids, render_chat
from minigpt.scheduler import Event, Request, Scheduler

__all__ = ["ApiError", "Engine", "create_app", "parse_request", "start_server"]


# --8<-- [start:engine]
class Engine:
    """The model and its scheduler on a thread of their own, fed through a queue."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler, self.inbox = scheduler, queue.Queue()  # (what, item, deliver)
        self.deliver: dict[str, Callable[[Event], None]] = {}  # engine thread only
        self.thread = threading.Thread(target=self.run, name="engine", daemon=True)
        self.thread.start()

    def submit(self, request: Request, deliver: Callable[[Event], None]) -> None:
        """Hand a request over; deliver(event) is called for each of its events."""
        self.scheduler.check(request)  # reads no state: safe from any thread
        self.inbox.put(("add", request, deliver))

    def cancel(self, request_id: str) -> None:
        self.inbox.put(("cancel", request_id, None))

    def stop(self) -> None:
        self.inbox.put(("stop", None, None))
        self.thread.join()

    def run(self) -> None:
        """Apply each message; when none is waiting, run a step. Idle: sleep."""
        while True:
            try:  # block only when no request runs: then there is nothing to do
                idle = not (self.scheduler.running or self.scheduler.waiting)
                what, item, deliver = self.inbox.get(block=idle)
            except queue.Empty:
                self.step()
                continue
            if what == "stop":
                return
            if what == "add":
                self.deliver[item.id] = deliver
                self.scheduler.add(item)
            else:
                self.deliver.pop(item, None)
                self.scheduler.cancel(item)

    def step(self) -> None:
        """One scheduler step; each event goes to its request's deliver."""
        try:
            events = self.scheduler.step()
        except Exception:  # a bug must not leave every client waiting forever
            events = [Event(i, "", "error", 0) for i in self.deliver]
            for request_id in self.deliver:
                self.scheduler.cancel(request_id)
        for event in events:
            send = self.deliver.get(event.id) if event.finish is None \
                else self.deliver.pop(event.id, None)
            if send:
                send(event)
# --8<-- [end:engine]


# --8<-- [start:api-error]
class ApiError(ValueError):
    """A refused request: its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind,
                          "param": self.param, "code": self.code}}


async def read_json(http, limit: int) -> dict:
    """The request's JSON object, refused as soon as it passes `limit` bytes."""
    body = b""
    async for piece in http.stream():  # as the pieces arrive: no huge buffer
        body += piece
        if len(body) > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data
# --8<-- [end:api-error]


# --8<-- [start:parse-request]
def field(body: dict, name: str, kinds: tuple, default, ok: Callable, want: str):
    """body[name] if present and fine, else default; ApiError naming the field."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kinds) or not ok(value):
        raise ApiError(400, f"{name} must be {want}, got {value!r}", param=name)
    return value


def parse_request(body: dict, request_id: str, ids: list[int], n_ctx: int,
                  default_max: int, stop_ids: frozenset = frozenset()) -> Request:
    """A Request from an OpenAI body, every field checked."""
    if body.get("max_tokens") is None:  # the chat API's newer name for it
        body = {**body, "max_tokens": body.get("max_completion_tokens")}
    number, room = (int, float), n_ctx - len(ids)
    if not ids or room < 1:
        raise ApiError(400, f"the prompt is {len(ids)} tokens; the model reads "
                       f"1 to {n_ctx - 1} with room to answer", param="prompt")
    field(body, "n", (int,), 1, lambda n: n == 1, "1")
    stop = field(body, "stop", (str, list), [], lambda s: isinstance(s, str) or (
        len(s) <= 4 and all(isinstance(x, str) for x in s)), "a string or up to 4")
    return Request(
        request_id, tuple(ids),
        field(body, "max_tokens", (int,), min(default_max, room),
              lambda n: 1 <= n <= room, f"1 to {room} (the context left)"),
        temperature=float(field(body, "temperature", number, 1.0, lambda t: t == 0
                                or 1e-5 <= t < math.inf, "0 or >= 1e-5")),
        top_k=field(body, "top_k", (int,), None, lambda k: k >= 1, "an integer >= 1"),
        top_p=field(body, "top_p", number, None, lambda p: 0 < p <= 1, "in (0, 1]"),
        min_p=field(body, "min_p", number, None, lambda p: 0 <= p <= 1, "in [0, 1]"),
        repetition_penalty=float(field(body, "repetition_penalty", number, 1.0,
                                       lambda r: 0 < r < math.inf, "a number > 0")),
        seed=field(body, "seed", (int,), None, lambda s: s >= 0, "an integer >= 0"),
        stop=tuple([stop] if isinstance(stop, str) else stop), stop_ids=stop_ids)
# --8<-- [end:parse-request]


# --8<-- [start:response-bodies]
def response(kind: str, request_id: str, model: str, text: str,
             finish: str | None, stream: bool) -> dict:
    """An answer, or one chunk of it, in OpenAI's shape for kind "text" or "chat"."""
    message = {"role": "assistant", "content": text}
    part = {"text": text} if kind == "text" else \
        {"delta": message} if stream else {"message": message}
    obj = "text_completion" if kind == "text" else \
        "chat.completion.chunk" if stream else "chat.completion"
    choice = {"index": 0, **part, "logprobs": None, "finish_reason": finish}
    return {"id": request_id, "object": obj, "created": int(time.time()),
            "model": model, "choices": [choice]}


def usage(request: Request, event: Event) -> dict:
    return {"prompt_tokens": len(request.prompt), "completion_tokens": event.tokens,
            "total_tokens": len(request.prompt) + event.tokens}
# --8<-- [end:response-bodies]


# --8<-- [start:follow-events]
def submit(engine: Engine, request: Request) -> asyncio.Queue:
    """Hand a request to the engine; its events arrive on the queue returned."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def deliver(event: Event) -> None:  # runs on the engine thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass
    try:
        engine.submit(request, deliver)
    except ValueError as exc:  # e.g. token ids the model does not know
        raise ApiError(400, str(exc), param="prompt") from None
    return events


async def follow(engine: Engine, http, request: Request,
                 events: asyncio.Queue) -> AsyncIterator[Event]:
    """The request's events as they come; if the client goes away, or whoever
    reads this stops early, the request is cancelled and its slot freed."""
    finished = False
    try:
        while not finished:
            event = await events.get()
            if await http.is_disconnected():  # asked at every event: it does not wait
                return
            if event.finish == "error":
                raise ApiError(500, event.text or "engine failure", kind="server_error")
            finished = event.finish is not None
            yield event
    finally:
        if not finished:
            engine.cancel(request.id)
# --8<-- [end:follow-events]


# --8<-- [start:complete]
async def complete(engine: Engine, http, request: Request, kind: str, model: str,
                   body: dict):
    """The whole answer as one JSON object, or a stream of server-sent events."""
    from fastapi.responses import StreamingResponse

    events = submit(engine, request)  # refused here, before any answer starts
    if not body.get("stream"):
        text, event = "", None
        async for event in follow(engine, http, request, events):
            text += event.text
        if event is None or event.finish not in ("stop", "length"):
            return None  # the client has gone: no one reads an answer
        out = response(kind, request.id, model, text, event.finish, stream=False)
        return {**out, "usage": usage(request, event)}
    with_usage = (body.get("stream_options") or {}).get("include_usage")

    async def chunks() -> AsyncIterator[str]:
        try:
            async for event in follow(engine, http, request, events):
                chunk = response(kind, request.id, model, event.text, event.finish,
                                 stream=True)
                yield f"data: {json.dumps(chunk)}\n\n"
            if with_usage:
                chunk = {**response(kind, request.id, model, "", None, True),
                         "choices": [], "usage": usage(request, event)}
                yield f"data: {json.dumps(chunk)}\n\n"
        except ApiError as exc:  # mid-stream, an error is one more event
            yield f"data: {json.dumps(exc.body())}\n\n"
        yield "data: [DONE]\n\n"
    return StreamingResponse(chunks(), media_type="text/event-stream")
# --8<-- [end:complete]


# --8<-- [start:create-app]
def create_app(engine: Engine, tokenizer, model: str, chat: dict | None = None,
               max_body: int = 1 << 20):
    """The FastAPI application: three routes, OpenAI's errors for everything.
    chat: the model's tokenizer_config.json with its chat_template, or None."""
    from fastapi import FastAPI
    from fastapi import Request as Http
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    app, n_ctx = FastAPI(title="minigpt"), engine.scheduler.model.config.n_ctx

    @app.exception_handler(ApiError)
    async def refuse(_, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)  # FastAPI's own: unknown route, method
    async def http_error(_, exc: HTTPException) -> JSONResponse:
        return await refuse(_, ApiError(exc.status_code, str(exc.detail)))

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model",
                                            "created": 0, "owned_by": "minigpt"}]}

    def checked(body: dict, needs: str) -> None:
        if body.get("model") not in (None, model):
            raise ApiError(404, f"model {body['model']!r} does not exist; this "
                           f"server has {model!r}", "model", "model_not_found")
        if needs not in body:
            raise ApiError(400, f"{needs} is required", param=needs)

    @app.post("/v1/completions")
    async def completions(http: Http):
        body = await read_json(http, max_body)
        checked(body, "prompt")
        prompt = body["prompt"]
        if isinstance(prompt, str):
            prompt = tokenizer.encode(prompt)
        elif not (isinstance(prompt, list) and all(type(i) is int for i in prompt)):
            raise ApiError(400, "prompt must be a string or a list of token ids",
                           param="prompt")
        request = parse_request(body, f"cmpl-{uuid.uuid4().hex}", prompt, n_ctx, 16)
        return await complete(engine, http, request, "text", model, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Http):
        body = await read_json(http, max_body)
        checked(body, "messages")
        if chat is None:
            raise ApiError(400, f"model {model!r} has no chat template; use "
                           f"/v1/completions", "messages", "no_chat_template")
        messages = body["messages"]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and
                isinstance(m.get("content"), str) for m in messages)):
            raise ApiError(400, "messages must be a list of {role, content} "
                           "strings", param="messages")
        try:
            prompt = encode_chat(tokenizer, render_chat(chat, messages))
        except ValueError as exc:  # the template refused them (raise_exception)
            raise ApiError(400, str(exc), param="messages") from None
        ends = frozenset(end_of_turn_ids(engine.scheduler.model, tokenizer, chat))
        request = parse_request(body, f"chatcmpl-{uuid.uuid4().hex}", prompt, n_ctx,
                                n_ctx, stop_ids=ends)
        return await complete(engine, http, request, "chat", model, body)
    return app
# --8<-- [end:create-app]


# --8<-- [start:encode-chat]
def encode_chat(tokenizer, text: str) -> list[int]:
    """A rendered conversation's ids: control tokens as such, and no second BOS."""
    try:  # the template wrote BOS itself, if the model wants one
        return tokenizer.encode(text, allowed_special="all", add_special_tokens=False)
    except TypeError:  # GPT-2's byte-level BPE never adds one: it has no such option
        return tokenizer.encode(text, allowed_special="all")
# --8<-- [end:encode-chat]


# --8<-- [start:start-server]
def start_server(app, host: str = "127.0.0.1", port: int = 0):
    """Serve app with uvicorn on a thread (port 0: any free port).
    -> (server, thread, url); stop with server.should_exit = True, thread.join()"""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here, so the port is known before serving
    sock.listen(128)  # connections wait in the queue until uvicorn takes them
    where = f"[{host}]" if family == socket.AF_INET6 else host
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              daemon=True)  # a crashed caller still exits
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    return server, thread, f"http://{where}:{sock.getsockname()[1]}/v1"
# --8<-- [end:start-server]
