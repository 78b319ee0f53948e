"""HTTP/1.1 framing of traffic as it passes a proxy, and the log of what was exchanged.

`HttpStream` follows one direction of a connection (request and status lines, Content-Length
and chunked bodies) and says where each message's head and body end, hashing request bodies;
tests/fault_proxy.py logs each answered request as an `Exchange` in its `FaultLog`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Exchange:
    """One request and the status of its answer."""

    method: str
    path: str  # URL path, percent-decoded, without the query
    status: int
    body_sha256: str
    connection: int


@dataclass
class FaultLog:
    """What the proxy saw and did."""

    connections: int = 0  # connections forwarded
    resets: int = 0  # live connections reset (by outages or reset_connections)
    rejected: int = 0  # connections reset or black-holed at accept during an outage
    outages: list[tuple[str, float]] = field(default_factory=list)  # (mode, seconds)
    cut_puts: list[str] = field(default_factory=list)  # paths of PUTs cut mid-body
    exchanges: list[Exchange] = field(default_factory=list)
    unanswered: list[tuple[str, str]] = field(default_factory=list)  # (method, path)


@dataclass
class Message:
    """Head of one HTTP message: a request (method, path) or a response (status)."""

    method: str = ""
    path: str = ""
    status: int = 0
    length: int = 0  # body bytes; -1: chunked; -2: until the connection closes
    sha256: str = ""


class HttpStream:
    """Incremental HTTP/1.1 framing of one direction of a connection.

    `feed(data)` yields ("head", message, offset) when a message's head ends at `offset` of
    `data`, and ("end", message, offset) when its body ends there. For responses,
    `bodiless(status)` says whether this answer has no body whatever its headers say (the
    answer to a HEAD request, 1xx, 204, 304).
    """

    def __init__(self, requests: bool, bodiless: Callable[[int], bool] | None = None) -> None:
        self.requests = requests
        self.bodiless = bodiless or (lambda status: False)
        self.state = "head"  # head | body | chunk-size | chunk-data | chunk-crlf | trailer
        self.buf = b""
        self.left = 0
        self.message = Message()
        self.hash = hashlib.sha256()
        self.broken = False

    def feed(self, data: bytes) -> Iterator[tuple[str, Message, int]]:
        pos = 0
        while pos < len(data) and not self.broken:
            if self.state in ("head", "chunk-size", "trailer"):
                line_end = b"\r\n\r\n" if self.state == "head" else b"\r\n"
                had = len(self.buf)
                self.buf += data[pos:]
                end = self.buf.find(line_end)
                if end < 0:
                    if len(self.buf) > 65536:
                        self.broken = True
                    return
                text, self.buf = self.buf[:end], b""
                pos += end + len(line_end) - had
                yield from self._line(text, pos)
            elif self.state in ("body", "chunk-data", "chunk-crlf"):
                take = len(data) - pos if self.left < 0 else min(self.left, len(data) - pos)
                if self.state != "chunk-crlf":
                    self.hash.update(data[pos : pos + take])
                pos += take
                if self.left < 0:
                    continue  # until close
                self.left -= take
                if self.left == 0:
                    if self.state == "body":
                        yield self._end(pos)
                    elif self.state == "chunk-data":
                        self.state, self.left = "chunk-crlf", 2
                    else:
                        self.state = "chunk-size"

    def _line(self, text: bytes, pos: int) -> Iterator[tuple[str, Message, int]]:
        if self.state == "head":
            try:
                self.message = self._parse_head(text)
            except ValueError:
                self.broken = True
                return
            self.hash = hashlib.sha256()
            yield "head", self.message, pos
            if 100 <= self.message.status < 200:
                return  # an interim answer: the real one follows
            if self.message.length == 0:
                yield self._end(pos)
            elif self.message.length == -1:
                self.state = "chunk-size"
            else:
                self.state = "body"
                self.left = self.message.length if self.message.length > 0 else -1
        elif self.state == "chunk-size":
            try:
                size = int(text.split(b";")[0].strip(), 16)
            except ValueError:
                self.broken = True
                return
            self.state, self.left = ("trailer", 0) if size == 0 else ("chunk-data", size)
        elif not text:  # the empty line that ends the trailer
            yield self._end(pos)

    def _end(self, pos: int) -> tuple[str, Message, int]:
        self.message.sha256 = self.hash.hexdigest()
        self.state = "head"
        return "end", self.message, pos

    def _parse_head(self, head: bytes) -> Message:
        lines = head.decode("latin-1").split("\r\n")
        first = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = -1 if chunked else int(headers.get("content-length", "0") or 0)
        if self.requests:
            if len(first) != 3 or not first[2].startswith("HTTP/"):
                raise ValueError(lines[0])
            return Message(first[0], unquote(urlsplit(first[1]).path), 0, length)
        if len(first) < 2 or not first[0].startswith("HTTP/"):
            raise ValueError(lines[0])
        status = int(first[1])
        if self.bodiless(status):
            length = 0
        elif not chunked and "content-length" not in headers:
            length = -2  # until the server closes
        return Message(status=status, length=length)
