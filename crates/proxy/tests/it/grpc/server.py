"""A gRPC service for the proxy's tests: raw-bytes methods, no generated code.

Usage: server.py VERSION. Listens on 127.0.0.1:$PORT (or a free port without PORT), prints the port on its
first line, then serves until killed. `grpc.health.v1.Health/Check` answers SERVING. Methods of service
`demo.Echo`:
- Unary: answers `VERSION:` + the request.
- Stream: answers as many messages as the request's first byte says, each `VERSION:i`.
- Fail: aborts with INTERNAL.
"""

import os
import sys
from concurrent import futures

import grpc

VERSION = sys.argv[1].encode()


def unary(request, context):
    return VERSION + b":" + request


def stream(request, context):
    count = request[0] if request else 1
    for index in range(count):
        yield VERSION + b":" + str(index).encode()


def fail(request, context):
    context.abort(grpc.StatusCode.INTERNAL, "asked to fail")


def health_check(request, context):
    # HealthCheckResponse { status: SERVING (1) }: field 1, varint.
    return b"\x08\x01"


def identity(data):
    return data


def main():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=identity, response_serializer=identity
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=identity, response_serializer=identity
        ),
        "Fail": grpc.unary_unary_rpc_method_handler(
            fail, request_deserializer=identity, response_serializer=identity
        ),
    }
    health = {
        "Check": grpc.unary_unary_rpc_method_handler(
            health_check, request_deserializer=identity, response_serializer=identity
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("demo.Echo", handlers),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),
        )
    )
    port = server.add_insecure_port(f"127.0.0.1:{os.environ.get('PORT', '0')}")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
