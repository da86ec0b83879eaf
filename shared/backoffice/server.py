"""uvicorn's httptools protocol, with each response's head and body reaching the socket in one write.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and its body when
the app sends `http.response.body`: two `send` system calls and two TCP segments for every response, and a client
woken twice. Here the writes a connection makes within one turn of the event loop are joined and sent at the end of
it (`CoalescingTransport`), so a small response leaves in one piece, as aiohttp's server sends it. On `POST /orders`
the second write was about 5 % of the orders process's CPU.

The services run with `uvicorn --http backoffice.server:HttpProtocol` (their Dockerfiles, the dev stack, the
bench's baseline app, which gets the same command line).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Written at once rather than held to the end of the loop's turn: a streamed body must meet the real transport's
# flow control (uvicorn waits for it to drain only once it has said it is full).
FLUSH_AT = 64 * 1024


class ForwardingTransport(asyncio.Transport):
    """A transport that hands every call to the transport under it; subclasses change what they need."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class CoalescingTransport(ForwardingTransport):
    """A transport that holds what is written until the event loop's next turn (or `FLUSH_AT` bytes, or `close`)
    and then writes it to the real transport in one call; everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport)
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write what is held, if anything (a connection already closing drops it, as its transport would)."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        super().close()

    def abort(self) -> None:
        self._held = []
        self._size = 0
        super().abort()

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def get_write_buffer_size(self) -> int:
        return self._size + super().get_write_buffer_size()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))
