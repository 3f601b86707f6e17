"""A minimal RFC 6455 websocket client on the stdlib: enough for ComfyUI's /ws progress feed.

Client frames are masked, server frames must not be; ping is answered with pong, close with
close; fragmented messages are reassembled. No extensions or subprotocols are negotiated.
The runner does not depend on it: when anything here fails it polls /history instead.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import urllib.parse

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketError(OSError):
    """The websocket could not be opened or broke; callers fall back to plain HTTP."""


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big") if n else b""


def parse_frame(buf: bytes):
    """(fin, opcode, payload, masked, frame length) of the first complete frame in buf, else None."""
    if len(buf) < 2:
        return None
    fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
    masked, n, pos = bool(buf[1] & 0x80), buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = struct.unpack(">H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = struct.unpack(">Q", buf[2:10])[0], 10
    key = b""
    if masked:
        key, pos = buf[pos:pos + 4], pos + 4
    if len(buf) < pos + n:
        return None
    payload = buf[pos:pos + n]
    return fin, opcode, mask(payload, key) if masked else payload, masked, pos + n


def build_frame(opcode: int, payload: bytes, masked: bool = True) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + mask(payload, key)


class WebSocket:
    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock, self.buf, self.closed = sock, leftover, False
        self._parts, self._kind = [], None

    @classmethod
    def connect(cls, url: str, timeout: float = 10.0) -> "WebSocket":
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss"):
            raise WebSocketError(f"not a websocket URL: {url}")
        port = u.port or (443 if u.scheme == "wss" else 80)
        try:
            sock = socket.create_connection((u.hostname, port), timeout=timeout)
            if u.scheme == "wss":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
            key = base64.b64encode(os.urandom(16)).decode()
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise WebSocketError("the server closed the connection during the websocket handshake")
                data += chunk
        except OSError as e:
            raise WebSocketError(f"websocket {url}: {e}") from None
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != accept_key(key):
            sock.close()
            raise WebSocketError(f"websocket {url}: the server refused the upgrade ({lines[0]})")
        return cls(sock, rest)

    def send(self, opcode: int, payload: bytes = b"") -> None:
        try:
            self.sock.sendall(build_frame(opcode, payload))
        except OSError as e:
            raise WebSocketError(f"websocket send failed: {e}") from None

    def send_text(self, text: str) -> None:
        self.send(TEXT, text.encode("utf-8"))

    def recv(self, timeout: float | None = None):
        """The next message (str for text, bytes for binary), None once closed. Raises TimeoutError
        when nothing complete arrives in `timeout` seconds; a partial frame is kept for the next call."""
        self.sock.settimeout(timeout)
        while not self.closed:
            frame = parse_frame(self.buf)
            if frame is None:
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    raise TimeoutError("no websocket message yet") from None
                except OSError as e:
                    raise WebSocketError(f"websocket receive failed: {e}") from None
                if not chunk:
                    raise WebSocketError("the server closed the websocket without a close frame")
                self.buf += chunk
                continue
            fin, opcode, payload, masked, size = frame
            self.buf = self.buf[size:]
            if masked:  # RFC 6455 5.1: a client must fail a connection whose server masks frames
                self.close(1002, wait=False)
                raise WebSocketError("the server sent a masked frame")
            if opcode == PING:
                self.send(PONG, payload)
            elif opcode == CLOSE:
                self._close_reply(payload)
            elif opcode in (TEXT, BINARY, CONT):
                if opcode != CONT:
                    self._kind, self._parts = opcode, []
                self._parts.append(payload)
                if fin:
                    data = b"".join(self._parts)
                    return data.decode("utf-8") if self._kind == TEXT else data
        return None

    def _close_reply(self, payload: bytes) -> None:
        try:
            self.send(CLOSE, payload[:2])
        except WebSocketError:
            pass
        self.closed = True
        self.sock.close()

    def close(self, code: int = 1000, wait: bool = True) -> None:
        """Send a close frame and, with `wait`, read up to the server's close reply (2 s at most)."""
        if self.closed:
            return
        try:
            self.send(CLOSE, struct.pack(">H", code))
            self.sock.settimeout(2)
            while wait and (parse_frame(self.buf) is None or parse_frame(self.buf)[1] != CLOSE):
                frame = parse_frame(self.buf)
                if frame:
                    self.buf = self.buf[frame[4]:]
                    continue
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                self.buf += chunk
        except OSError:
            pass
        self.closed = True
        self.sock.close()
