#!/usr/bin/env python3
"""A Lambda custom runtime that streams its responses as AWS specifies,
with real HTTP trailers (Python's http.client cannot send trailers, so the
response POST is written on a raw socket).

Each event is {"lines": N, "error": "Type" or absent}: N lines, then
either the end of the body or the trailers Lambda-Runtime-Function-Error-Type
and Lambda-Runtime-Function-Error-Body (base64 of a JSON error document,
as AWS's Node runtime sends it).
"""
import base64
import http.client
import json
import os
import socket
import time

host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
base = "/2018-06-01/runtime/invocation"

while True:
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("GET", base + "/next")
    resp = conn.getresponse()
    rid = resp.getheader("Lambda-Runtime-Aws-Request-Id")
    event = json.loads(resp.read() or b"{}")
    conn.close()
    s = socket.create_connection((host, int(port)))
    s.sendall(
        (
            f"POST {base}/{rid}/response HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Lambda-Runtime-Function-Response-Mode: streaming\r\n"
            "Transfer-Encoding: chunked\r\n"
            "Content-Type: text/plain\r\n"
            "Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n"
            "\r\n"
        ).encode()
    )
    for i in range(int(event.get("lines", 3))):
        data = f"line {i}\n".encode()
        s.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        time.sleep(0.05)
    if event.get("error"):
        doc = json.dumps({"errorType": event["error"], "errorMessage": "broke mid-stream", "trace": []})
        b64 = base64.b64encode(doc.encode()).decode()
        s.sendall(
            (
                "0\r\n"
                f"Lambda-Runtime-Function-Error-Type: {event['error']}\r\n"
                f"Lambda-Runtime-Function-Error-Body: {b64}\r\n"
                "\r\n"
            ).encode()
        )
    else:
        s.sendall(b"0\r\n\r\n")
    s.recv(4096)
    s.close()
