"""A minimal AWS Lambda Runtime API client (Python standard library only).

It speaks the same protocol as AWS's own runtime clients (awslambdaric):
GET  /2018-06-01/runtime/invocation/next
POST /2018-06-01/runtime/invocation/{id}/response
POST /2018-06-01/runtime/invocation/{id}/error
POST /2018-06-01/runtime/init/error
so the example functions run on a fresh machine with nothing installed.
"""
import http.client
import json
import os
import sys
import traceback

API = os.environ.get("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")
BASE = "/2018-06-01/runtime"


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        self.deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms", "0") or 0)
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
        self.trace_id = headers.get("Lambda-Runtime-Trace-Id", "")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")

    def get_remaining_time_in_millis(self):
        import time
        return max(0, self.deadline_ms - int(time.time() * 1000))


def _error_body(exc):
    return json.dumps({
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc)[-5:],
    }).encode()


def _post(conn, path, body, headers=None):
    conn.request("POST", path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.read()


def run(handler):
    """Serve invocations forever: event JSON in, handler result out."""
    conn = http.client.HTTPConnection(API, timeout=None)
    while True:
        conn.request("GET", BASE + "/invocation/next")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            sys.exit(f"runtime API answered {resp.status} to next")
        ctx = Context(resp.headers)
        rid = ctx.aws_request_id
        try:
            try:
                event = json.loads(body) if body else None
            except ValueError:
                event = body.decode("utf-8", "replace")
            result = handler(event, ctx)
            out = result if isinstance(result, (bytes, bytearray)) else json.dumps(result).encode()
            _post(conn, f"{BASE}/invocation/{rid}/response", out)
        except Exception as exc:  # noqa: BLE001 - reported to the runtime API
            _post(conn, f"{BASE}/invocation/{rid}/error", _error_body(exc),
                  {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
