"""echo: returns the event it was given (Lambda Runtime API worker)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lambda_runtime  # noqa: E402


def handler(event, context):
    return event


if __name__ == "__main__":
    lambda_runtime.run(handler)
