"""Calls a snakepitd node from Python with Debian's python3-grpcio.

    /usr/bin/python3 examples/python_client.py 127.0.0.1:50051 \\
        lab.stats '{"values": [1, 2, 3]}'

It needs the message classes protoc generates from
proto/snakepit/v1/snakepit.proto; `scripts/build` writes them to
build/proto_gen/python (set SNAKEPIT_PROTO_PY to use another folder).
Arguments and results travel as JSON here; msgpack works the same way
with content type application/msgpack.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterator, Optional

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get(
    "SNAKEPIT_PROTO_PY", os.path.join(HERE, "..", "build", "proto_gen",
                                      "python")))

from snakepit.v1 import snakepit_pb2 as pb  # noqa: E402

JSON = "application/json"
SERVICE = "/snakepit.v1.Snakepit/"


class SnakepitError(Exception):
    """A failed call: the gRPC code, the stable reason, Python details."""

    def __init__(self, code: grpc.StatusCode, detail: pb.ErrorDetail,
                 message: str) -> None:
        super().__init__(f"{detail.reason or code.name.lower()}: "
                         f"{detail.message or message}")
        self.code = code
        self.reason = detail.reason
        self.python_type = detail.python_type
        self.traceback = detail.traceback


def _error(exc: grpc.RpcError) -> SnakepitError:
    detail = pb.ErrorDetail()
    for key, value in exc.trailing_metadata() or ():
        if key == "snakepit-error-bin":
            detail.ParseFromString(value)
    return SnakepitError(exc.code(), detail, exc.details())


class Client:
    def __init__(self, address: str, token: Optional[str] = None) -> None:
        self._channel = grpc.insecure_channel(address)
        self._metadata = ([("authorization", f"Bearer {token}")]
                          if token else [])
        self._call = self._channel.unary_unary(
            SERVICE + "Call",
            request_serializer=pb.CallRequest.SerializeToString,
            response_deserializer=pb.CallResponse.FromString)
        self._stream = self._channel.unary_stream(
            SERVICE + "CallStream",
            request_serializer=pb.CallRequest.SerializeToString,
            response_deserializer=pb.CallChunk.FromString)

    def call(self, function: str, args: Any = None,
             timeout: Optional[float] = None) -> Any:
        try:
            response = self._call(self._request(function, args),
                                  timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return json.loads(response.result.data)

    def stream(self, function: str, args: Any = None,
               timeout: Optional[float] = None) -> Iterator[Any]:
        chunks = self._stream(self._request(function, args),
                              timeout=timeout, metadata=self._metadata)
        try:
            for chunk in chunks:
                yield json.loads(chunk.data.data)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        finally:
            chunks.cancel()

    def close(self) -> None:
        self._channel.close()

    @staticmethod
    def _request(function: str, args: Any) -> pb.CallRequest:
        data = b"" if args is None else json.dumps(args).encode()
        return pb.CallRequest(function=function,
                              args=pb.Payload(content_type=JSON, data=data))


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 1
    address, function = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    client = Client(address, os.environ.get("SNAKEPIT_TOKEN"))
    try:
        print(json.dumps(client.call(function, args, timeout=60),
                         sort_keys=True))
    except SnakepitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
