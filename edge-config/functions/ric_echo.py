"""ric_echo: a handler for AWS's Python runtime interface client.

Run as `python -m awslambdaric functions/ric_echo.handler` from this
folder's parent (awslambdaric is installed by .ci/deps-exec.sh). Echoes the
event; {"error": "SomeType", "message": "..."} raises an exception of that
type; {"sleep_ms": N} sleeps first.
"""
import time


def handler(event, context):
    if isinstance(event, dict):
        if "sleep_ms" in event:
            time.sleep(int(event["sleep_ms"]) / 1000)
        if "error" in event:
            kind = type(str(event["error"]), (Exception,), {})
            raise kind(event.get("message", "requested error"))
    return event
