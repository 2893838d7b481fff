"""HTTP building blocks shared by the fake server's handlers (part of `syncer.fakeserver`).

The JSON answers of the Files API (`{"data": ...}` and `{"error": {...}}`), the exception a handler
raises to give an error answer, and the TCP reset the fault modes use to drop a connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from typing import Any

from aiohttp import web

CHUNK = 256 * 1024  # bodies are read and written in pieces of this size


class ApiRefusal(Exception):
    """Raised by a handler to answer `status` with a JSON error body carrying `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The Files API error answer: `{"error": {"code": status, "message": message}}`."""
    body = json.dumps({"error": {"code": status, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def ok_response(data: Any) -> web.Response:
    """The Files API success answer: `{"data": data}`."""
    return web.Response(text=json.dumps({"data": data}), content_type="application/json")


def reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
