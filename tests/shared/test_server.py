"""The services' HTTP protocol (`backoffice.server`): a response's head and body reach the socket in one write."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse

from backoffice import server


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class TestCoalescingTransport:
    async def test_writes_of_one_turn_reach_the_transport_as_one_at_its_end(self) -> None:
        real = FakeTransport()
        held = server.CoalescingTransport(real, asyncio.get_running_loop())
        held.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n")
        held.write(b"{}")
        assert real.writes == [] and held.get_write_buffer_size() == 45
        await _next_turn()
        assert real.writes == [b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"]
        held.write(b"next")
        await _next_turn()
        assert real.writes[1:] == [b"next"]

    async def test_close_writes_what_is_held_first_and_abort_drops_it(self) -> None:
        real = FakeTransport()
        held = server.CoalescingTransport(real, asyncio.get_running_loop())
        held.write(b"last words")
        held.close()
        assert real.writes == [b"last words"] and real.closed
        other = FakeTransport()
        dropped = server.CoalescingTransport(other, asyncio.get_running_loop())
        dropped.write(b"never sent")
        dropped.abort()
        await _next_turn()
        assert other.writes == [] and other.aborted

    async def test_a_large_body_is_written_at_once_so_flow_control_sees_it(self) -> None:
        real = FakeTransport()
        held = server.CoalescingTransport(real, asyncio.get_running_loop())
        held.write(b"x" * (server.FLUSH_AT - 1))
        assert real.writes == []
        held.write(b"yy")
        assert [len(w) for w in real.writes] == [server.FLUSH_AT + 1]
        await _next_turn()
        assert len(real.writes) == 1  # the turn's end finds nothing more

    async def test_nothing_is_written_to_a_closing_transport(self) -> None:
        real = FakeTransport()
        held = server.CoalescingTransport(real, asyncio.get_running_loop())
        held.write(b"late")
        real.closed = True
        await _next_turn()
        assert real.writes == []


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict[str, int]) -> dict[str, int]:
        return {"n": body["n"] + 1}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for n in range(5):
                yield bytes([65 + n]) * 50_000
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/empty")
    async def empty() -> Response:
        return Response(status_code=204)

    return app


class Counted(server.ForwardingTransport):
    """The socket's transport, with each write it is given recorded."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        super().__init__(transport)
        self._writes = writes

    def write(self, data: Any) -> None:
        self._writes.append(bytes(data))
        super().write(data)


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, list[list[bytes]]]]:
    """A uvicorn server on a free port running `HttpProtocol`, and the writes each connection made to its socket's
    transport."""
    writes: list[list[bytes]] = []

    class Recording(server.HttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            writes.append([])
            super().connection_made(Counted(transport, writes[-1]))

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_app(), http=Recording, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        await asyncio.sleep(0.01)
    try:
        yield port, writes
    finally:
        srv.should_exit = True
        await task
        sock.close()


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
    if head.startswith(b"HTTP/1.1 204 "):
        return head, b""
    if b"content-length" in fields:
        return head, await reader.readexactly(int(fields[b"content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return head, body
        body += chunk[:-2]


class TestHttpProtocol:
    async def test_each_response_is_one_write_and_the_connection_stays_open_for_the_next(
        self, served: tuple[int, list[list[bytes]]]
    ) -> None:
        port, writes = served
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in (1, 41):
            body = b'{"n": %d}' % n
            writer.write(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            head, answer = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert answer == b'{"n":%d}' % (n + 1)
        writer.write(b"GET /empty HTTP/1.1\r\nHost: t\r\n\r\n")
        head, answer = await _response(reader)
        assert head.startswith(b"HTTP/1.1 204 ") and answer == b""
        writer.close()
        assert len(writes) == 1 and len(writes[0]) == 3  # one connection, one write per response
        assert writes[0][0].startswith(b"HTTP/1.1 200 ") and writes[0][0].endswith(b'{"n":2}')

    async def test_a_streamed_body_arrives_whole_and_connection_close_is_honoured(
        self, served: tuple[int, list[list[bytes]]]
    ) -> None:
        port, _ = served
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head, body = await _response(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b"".join(bytes([65 + n]) * 50_000 for n in range(5))
        assert await reader.read() == b""  # the server closed the connection after the whole response
        writer.close()
