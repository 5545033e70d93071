"""A recording gRPC proxy for tests: forwards every call, bytes as they are, to an upstream
server (the Firestore emulator) and records each request, response and status code.

Point a client at `proxy.host` (e.g. FIRESTORE_EMULATOR_HOST) to observe what it really sends
— nothing of the code under test is patched. Unary and server-streaming calls are forwarded;
`streaming` names the methods of the second kind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc

FIRESTORE_STREAMING = frozenset({
    "/google.firestore.v1.Firestore/BatchGetDocuments",
    "/google.firestore.v1.Firestore/RunQuery",
    "/google.firestore.v1.Firestore/RunAggregationQuery",
})


@dataclass
class RecordedCall:
    """One call as the proxy forwarded it: the serialized request, the serialized responses,
    and the status the upstream answered (OK or an error code)."""

    method: str
    request: bytes
    responses: list[bytes] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK


def _identity(data: bytes) -> bytes:
    return data


class GrpcRecorder:
    def __init__(self, upstream: str, streaming: frozenset[str] = FIRESTORE_STREAMING) -> None:
        self.upstream = upstream
        self.streaming = streaming
        self.calls: list[RecordedCall] = []
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._server.add_generic_rpc_handlers((_Forwarder(self),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.host = f"127.0.0.1:{port}"

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.stop(grace=None)
        self._channel.close()

    def record(self, call: RecordedCall) -> None:
        with self._lock:
            self.calls.append(call)

    def of(self, method: str) -> list[RecordedCall]:
        with self._lock:
            return [c for c in self.calls if c.method.endswith("/" + method)]


class _Forwarder(grpc.GenericRpcHandler):
    def __init__(self, recorder: GrpcRecorder) -> None:
        self.recorder = recorder

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        recorder = self.recorder
        channel = recorder._channel

        def forwarded_metadata(context: grpc.ServicerContext) -> list[tuple[str, Any]]:
            return [(k, v) for k, v in context.invocation_metadata()
                    if not k.startswith(":") and k not in ("user-agent", "grpc-accept-encoding")]

        def fail(call: RecordedCall, error: grpc.RpcError, context: grpc.ServicerContext) -> None:
            call.code = error.code()  # type: ignore[attr-defined]
            recorder.record(call)
            context.abort(error.code(), error.details())  # type: ignore[attr-defined]

        if method in recorder.streaming:
            upstream_stream = channel.unary_stream(
                method, request_serializer=_identity, response_deserializer=_identity)

            def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                call = RecordedCall(method, request)
                try:
                    for response in upstream_stream(request,
                                                    metadata=forwarded_metadata(context)):
                        call.responses.append(response)
                        yield response
                except grpc.RpcError as error:
                    fail(call, error, context)
                    return
                recorder.record(call)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=_identity, response_serializer=_identity)

        upstream_unary = channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            call = RecordedCall(method, request)
            try:
                response: bytes = upstream_unary(request, metadata=forwarded_metadata(context))
            except grpc.RpcError as error:
                fail(call, error, context)
                raise  # not reached: abort raises
            call.responses.append(response)
            recorder.record(call)
            return response

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_identity, response_serializer=_identity)
