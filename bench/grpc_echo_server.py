"""A Python grpcio server answering snakepit.bench.v1.Echo/Echo: the gRPC
peer a Python user would put in front of their function.

    grpc_echo_server.py [THREADS [UNIX_PATH]]

Listens on 127.0.0.1 on a port the kernel picks, and on the unix socket
UNIX_PATH when given, prints the port on stdout, and serves until its
stdin reaches end of file (the bench's end). No generated code: a
generic handler receives the serialized request as bytes and returns it
unchanged as the serialized reply (the request and reply messages are
the same type, bench/echo.proto).
"""

import concurrent.futures
import sys

import grpc

_UNLIMITED = [("grpc.max_receive_message_length", -1),
              ("grpc.max_send_message_length", -1)]


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads),
        options=_UNLIMITED)
    handler = grpc.method_handlers_generic_handler(
        "snakepit.bench.v1.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    if len(sys.argv) > 2:
        server.add_insecure_port("unix:" + sys.argv[2])
    server.start()
    print(port, flush=True)
    sys.stdin.buffer.read()
    server.stop(None)


if __name__ == "__main__":
    main()
