"""hello-wasm: an example fnroute WebAssembly function (wasi:http/proxy, WASI 0.2).

Built into hello.wasm by edge-config/functions/build-wasm.sh with
componentize-py (see .ci/deps-wasm.sh). The host runs a fresh instance per
request and calls `IncomingHandler.handle` once.

Paths (the tests use them to probe the host's limits):
  /            200 JSON {"hello": "wasm", "method", "path", "body_bytes"}
  /env         200 JSON of os.environ (only the topology's env should be there)
  /raise       raises: a guest error (the instance traps)
  /big         200 with a 10 MiB body
  /stall       200 headers and a first chunk, then never finishes the body
  /outbound?url=http://127.0.0.1:PORT/...
               an outgoing wasi:http request; answers with the upstream's
               status and body, or 502 with the error code's text
  /bomb        allocates until MemoryError, then 507 "MemoryError"
  /echo        the request body, with the request's content-type
  /ticks       server-sent events: five `data: <ns since the epoch>`, 100 ms
               apart, each flushed as written (for `streaming = true`)
  /ticks-raise two events, then raises: a trap after the first byte
  anything else: as /

Written in the blocking style (pollable.block(), blocking_read,
blocking_write_and_flush) rather than componentize-py's asyncio poll_loop:
one request per instance needs no concurrency.
"""

import json
import os
import time
from urllib import parse

from componentize_py_types import Ok, Err
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    Method_Connect,
    Method_Delete,
    Method_Get,
    Method_Head,
    Method_Options,
    Method_Other,
    Method_Patch,
    Method_Post,
    Method_Put,
    Method_Trace,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme,
    Scheme_Http,
    Scheme_Https,
    Scheme_Other,
)

# blocking-write-and-flush accepts at most 4096 bytes per call.
WRITE_CHUNK = 4096
READ_CHUNK = 64 * 1024

METHODS = {
    Method_Get: "GET",
    Method_Head: "HEAD",
    Method_Post: "POST",
    Method_Put: "PUT",
    Method_Delete: "DELETE",
    Method_Connect: "CONNECT",
    Method_Options: "OPTIONS",
    Method_Trace: "TRACE",
    Method_Patch: "PATCH",
}


def method_name(method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    return METHODS.get(type(method), "?")


def read_body(body: IncomingBody) -> bytes:
    """Read an incoming body to its end (blocking)."""
    stream = body.stream()
    parts = []
    while True:
        try:
            parts.append(stream.blocking_read(READ_CHUNK))
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            raise
    # The child stream must be dropped before its body is finished.
    stream.__exit__(None, None, None)
    IncomingBody.finish(body)
    return b"".join(parts)


def write_all(stream, data: bytes) -> None:
    view = memoryview(data)
    for off in range(0, len(view), WRITE_CHUNK):
        stream.blocking_write_and_flush(bytes(view[off : off + WRITE_CHUNK]))


def respond(response_out: ResponseOutparam, status: int, content_type: str, data: bytes) -> None:
    """Send a complete response with a known length."""
    headers = [("content-type", content_type.encode()), ("content-length", str(len(data)).encode())]
    response = OutgoingResponse(Fields.from_list(headers))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    write_all(stream, data)
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)


def respond_json(response_out: ResponseOutparam, status: int, value) -> None:
    respond(response_out, status, "application/json", json.dumps(value).encode())


def outbound(url: str):
    """GET `url` with wasi:http/outgoing-handler. Returns (status, content-type, body)."""
    u = parse.urlparse(url)
    if u.scheme == "http":
        scheme: Scheme = Scheme_Http()
    elif u.scheme == "https":
        scheme = Scheme_Https()
    else:
        scheme = Scheme_Other(u.scheme)
    request = OutgoingRequest(Fields.from_list([]))
    request.set_method(Method_Get())
    request.set_scheme(scheme)
    request.set_authority(u.netloc)
    request.set_path_with_query((u.path or "/") + ("?" + u.query if u.query else ""))
    # No body: finish it so the request is complete.
    OutgoingBody.finish(request.body(), None)

    # handle() itself raises Err(error-code) when the host refuses at once
    # (e.g. HttpRequestDenied).
    future = outgoing_handler.handle(request, None)
    while True:
        result = future.get()
        if result is not None:
            break
        pollable = future.subscribe()
        pollable.block()
        pollable.__exit__(None, None, None)
    future.__exit__(None, None, None)
    if isinstance(result, Err):  # the future's value was already taken
        raise Err(result.value)
    inner = result.value
    if isinstance(inner, Err):
        raise inner
    response = inner.value
    status = response.status()
    ctype = b"application/octet-stream"
    for name, value in response.headers().entries():
        if name.lower() == "content-type":
            ctype = value
    data = read_body(response.consume())
    response.__exit__(None, None, None)
    return status, ctype.decode("latin-1"), data


def stall(response_out: ResponseOutparam) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(200)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    stream.blocking_write_and_flush(b"first chunk\n")
    while True:  # never finishes the body; the host must time it out
        time.sleep(1)


def ticks(response_out: ResponseOutparam, fail_after=None) -> None:
    """Server-sent events, each written and flushed when it happens."""
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/event-stream")]))
    response.set_status_code(200)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    for i in range(5):
        if i > 0:
            time.sleep(0.1)
        if fail_after == i:
            raise RuntimeError("hello-wasm: /ticks-raise broke its stream")
        stream.blocking_write_and_flush(f"data: {time.time_ns()}\n\n".encode())
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)


def bomb(response_out: ResponseOutparam) -> None:
    hog = []
    allocated = 0
    try:
        while True:
            hog.append(bytearray(1024 * 1024))
            allocated += 1
    except MemoryError:
        pass
    del hog  # give the memory back before answering
    print(f"bomb: MemoryError after {allocated} MiB")
    respond(response_out, 507, "text/plain", b"MemoryError")


class IncomingHandler(exports.IncomingHandler):
    """The exported wasi:http/incoming-handler."""

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = method_name(request.method())
        path_q = request.path_with_query() or "/"
        u = parse.urlsplit(path_q)
        path = u.path

        if path == "/env":
            respond_json(response_out, 200, dict(os.environ))
        elif path == "/raise":
            raise RuntimeError("hello-wasm: /raise asked for a guest error")
        elif path == "/big":
            respond(response_out, 200, "application/octet-stream", b"x" * (10 * 1024 * 1024))
        elif path == "/stall":
            stall(response_out)
        elif path == "/outbound":
            url = parse.parse_qs(u.query).get("url", [""])[0]
            if not url:
                respond(response_out, 400, "text/plain", b"outbound: missing ?url=")
                return
            try:
                status, ctype, data = outbound(url)
            except Err as e:
                respond(response_out, 502, "text/plain", f"outbound error: {e.value!r}".encode())
                return
            respond(response_out, status, ctype, data)
        elif path == "/bomb":
            bomb(response_out)
        elif path == "/ticks":
            ticks(response_out)
        elif path == "/ticks-raise":
            ticks(response_out, fail_after=2)
        elif path == "/echo":
            ctype = b"application/octet-stream"
            for name, value in request.headers().entries():
                if name.lower() == "content-type":
                    ctype = value
            data = read_body(request.consume())
            respond(response_out, 200, ctype.decode("latin-1"), data)
        else:
            data = read_body(request.consume())
            respond_json(
                response_out,
                200,
                {"hello": "wasm", "method": method, "path": path_q, "body_bytes": len(data)},
            )
