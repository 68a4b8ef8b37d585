"""probe: a test function on the hand-written stdlib Runtime API client.

The event selects a behaviour (see tests/integration/exec.rs):
  {"sleep_ms": N}           sleep first
  {"whoami": true}          pid, selected env, context fields, cwd
  {"exit": N}               exit with code N mid-invocation (crash)
  {"child_pid_file": PATH}  start `sleep 300`, write its pid to PATH, hang
  {"alloc_mb": N}           allocate N MiB
  {"error": T, "message": M} raise an exception of type T
  {"print": S}              print S to stdout and stderr
anything else is echoed. PROBE_EXIT_ON_START=N exits with N before `next`.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "edge-config", "functions"))
import lambda_runtime  # noqa: E402

ENV = ["AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_FUNCTION_NAME",
       "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
       "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_REGION", "AWS_DEFAULT_REGION",
       "LAMBDA_TASK_ROOT", "_HANDLER", "PROBE_SETTING",
       "FNROUTE_ADDRESS_SPACE_MB"]


def handler(event, context):
    e = event if isinstance(event, dict) else {}
    if "print" in e:
        print(e["print"], flush=True)
        print(e["print"], file=sys.stderr, flush=True)
    if "sleep_ms" in e:
        time.sleep(int(e["sleep_ms"]) / 1000)
    if e.get("whoami"):
        return {
            "pid": os.getpid(),
            "env": {k: os.environ.get(k) for k in ENV},
            "request_id": context.aws_request_id,
            "arn": context.invoked_function_arn,
            "deadline_ms": context.deadline_ms,
            "trace": context.trace_id,
            "cwd": os.getcwd(),
        }
    if "child_pid_file" in e:
        child = subprocess.Popen(["sleep", "300"])
        with open(e["child_pid_file"], "w") as f:
            f.write(str(child.pid))
        time.sleep(300)
    if "exit" in e:
        os._exit(int(e["exit"]))
    if "alloc_mb" in e:
        block = bytearray(int(e["alloc_mb"]) * 1024 * 1024)
        return {"allocated": len(block)}
    if "error" in e:
        raise type(str(e["error"]), (Exception,), {})(e.get("message", "requested error"))
    return event


if __name__ == "__main__":
    if os.environ.get("PROBE_EXIT_ON_START"):
        sys.exit(int(os.environ["PROBE_EXIT_ON_START"]))
    lambda_runtime.run(handler)
