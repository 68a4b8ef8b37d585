"""Shared helpers of the document demo (function source routing).

Every step appends {"step", "trace"} to the event's "trail", so the result
shows which steps ran and that one W3C trace id ran through all of them
(the Lambda-Runtime-Trace-Id the edge passes is the step's traceparent).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lambda_runtime  # noqa: E402,F401  (re-exported for the step files)


def document(event):
    """The event as a document dict (a bare string becomes its text)."""
    if isinstance(event, dict):
        return event
    return {"text": "" if event is None else str(event)}


def mark(doc, step, context):
    doc.setdefault("trail", []).append({"step": step, "trace": context.trace_id})
    return doc


def serve(handler):
    lambda_runtime.run(handler)
