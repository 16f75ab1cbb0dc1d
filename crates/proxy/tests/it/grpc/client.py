"""A gRPC load loop for the proxy's tests, bounded in count and time.

Usage: client.py TARGET AUTHORITY STOP_FILE MAX_SECONDS MAX_CALLS [FAIL_EVERY]. Alternates unary calls and
server-streaming calls (3 messages) on one channel until STOP_FILE exists, MAX_SECONDS pass or MAX_CALLS
calls were made, then prints one JSON line:
{"ok": N, "failed": N, "errors": [...], "versions": {"A": N, ...}, "failed_as_asked": N}
Every FAIL_EVERY-th call (default 10; 0 for none) is `Fail`, which must end in INTERNAL: it counts in
`failed_as_asked`, not `failed`.
"""

import json
import os
import sys
import time

import grpc


def identity(data):
    return data


def main():
    target, authority, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
    max_seconds, max_calls = float(sys.argv[4]), int(sys.argv[5])
    fail_every = int(sys.argv[6]) if len(sys.argv) > 6 else 10
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
    unary = channel.unary_unary("/demo.Echo/Unary", request_serializer=identity, response_deserializer=identity)
    stream = channel.unary_stream("/demo.Echo/Stream", request_serializer=identity, response_deserializer=identity)
    fail = channel.unary_unary("/demo.Echo/Fail", request_serializer=identity, response_deserializer=identity)
    ok = failed = failed_as_asked = 0
    errors = []
    versions = {}
    deadline = time.monotonic() + max_seconds
    call = 0
    while call < max_calls and time.monotonic() < deadline and not os.path.exists(stop_file):
        call += 1
        try:
            if fail_every and call % fail_every == 0:
                try:
                    fail(b"x", timeout=10)
                    failed += 1
                    errors.append("Fail answered OK")
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.INTERNAL:
                        failed_as_asked += 1
                    else:
                        failed += 1
                        errors.append(f"Fail: {error.code()} {error.details()}")
                continue
            if call % 2 == 0:
                answer = unary(b"hello", timeout=10)
                version, _, echoed = answer.partition(b":")
                if echoed != b"hello":
                    raise ValueError(f"unary answered {answer!r}")
            else:
                answers = list(stream(bytes([3]), timeout=10))
                version = answers[0].partition(b":")[0] if answers else b"?"
                if [a.partition(b":")[2] for a in answers] != [b"0", b"1", b"2"]:
                    raise ValueError(f"stream answered {answers!r}")
            ok += 1
            versions[version.decode()] = versions.get(version.decode(), 0) + 1
        except Exception as error:  # noqa: BLE001 - every failure is counted and reported
            failed += 1
            if len(errors) < 10:
                errors.append(str(error))
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors, "versions": versions,
                      "failed_as_asked": failed_as_asked}), flush=True)


if __name__ == "__main__":
    main()
