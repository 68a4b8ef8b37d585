"""hello: greets {"name": ...}; fails with ValueError on an empty name."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lambda_runtime  # noqa: E402


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    if not name:
        raise ValueError("name must not be empty")
    return {"greeting": f"hello, {name}", "function": context.function_name}


if __name__ == "__main__":
    lambda_runtime.run(handler)
