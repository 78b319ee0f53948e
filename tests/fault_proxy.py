"""A TCP proxy that puts network faults between a client and a server (fault-injection tests).

`FaultProxy(("127.0.0.1", port))` listens on a free loopback port and forwards every connection
to the server. On command it
- `reset_connections()`: resets (RST, SO_LINGER 0) every live connection, mid-request or not;
- `outage(seconds, mode)`: takes the server away for `seconds`: "refuse" closes the listening
  socket (connects fail with ECONNREFUSED), "reset" accepts and resets at once, "blackhole"
  accepts and never answers (and resets when the outage ends); live connections are reset as
  an outage starts;
- `cycle_outages(down, up, ...)`: in a background thread, outages of `down` seconds with `up`
  seconds of service between them (the modes taking turns), optionally only from the first
  request whose path contains `trigger`, plus every `cut_puts_every`-th PUT reset halfway
  through its body;
- `outages_after(match, plan, ...)`: the same driven by progress, not time: outage k starts
  once the n_k-th request whose path contains `match` went through, so every planned fault
  lands while that work is under way, however fast or slow the machine is.

It follows the HTTP/1.1 framing of the traffic as it passes (request and status lines,
Content-Length and chunked bodies, both directions) and logs each answered request as an
`Exchange` (method, path, status, sha256 of the request body), so that a test can count, for
instance, the successful PUTs of one key. Requests whose connection died before an answer are
logged in `FaultLog.unanswered`. A connection whose bytes are not HTTP/1.1 is still forwarded,
only no longer logged.
"""

from __future__ import annotations

import itertools
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence

from tests.http_framing import Exchange, FaultLog, HttpStream, Message

_RECV = 65536
MODES = ("refuse", "reset", "blackhole")


def _rst(sock: socket.socket) -> None:
    """Abort `sock` with a TCP RST (SO_LINGER on, timeout 0), waking a thread blocked in recv."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes recv() in the pump thread; sends nothing
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Connection:
    """One client connection and its upstream, pumped by two threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.client = client
        self.number = number
        self.upstream: socket.socket | None = None
        self.pending: deque[Message] = deque()  # requests sent, not answered yet
        self.closed = False

    def start(self) -> None:
        try:
            self.upstream = socket.create_connection(self.proxy.upstream, timeout=10)
            self.upstream.settimeout(None)
        except OSError:
            self.reset()
            return
        threading.Thread(target=self._pump_requests, daemon=True).start()
        threading.Thread(target=self._pump_responses, daemon=True).start()

    def reset(self) -> None:
        """RST to the client, close upstream; requests not answered yet are logged so."""
        with self.proxy._lock:
            if self.closed:
                return
            self.closed = True
            self.proxy.log.unanswered += [(m.method, m.path) for m in self.pending]
            self.pending.clear()
            self.proxy._live.discard(self)
        _rst(self.client)
        if self.upstream is not None:
            _rst(self.upstream)

    def _pump_requests(self) -> None:
        parser = HttpStream(requests=True)
        upstream = self.upstream
        assert upstream is not None
        cut_after: int | None = None  # bytes still to forward before cutting a PUT
        try:
            while True:
                data = self.client.recv(_RECV)
                if not data:
                    break
                for kind, msg, offset in parser.feed(data):
                    if kind == "head":
                        with self.proxy._lock:
                            self.pending.append(msg)
                        self.proxy._saw_request(msg.method, msg.path)
                        if cut_after is None and msg.method == "PUT" and msg.length > 1:
                            if self.proxy._should_cut_put(msg.path):
                                cut_after = offset + msg.length // 2
                if cut_after is not None:
                    if cut_after <= len(data):
                        upstream.sendall(data[:cut_after])
                        time.sleep(0.05)  # the server holds the partial body before the RST
                        break
                    cut_after -= len(data)
                upstream.sendall(data)
        except OSError:
            pass
        self.reset()

    def _pump_responses(self) -> None:
        def bodiless(status: int) -> bool:
            with self.proxy._lock:
                method = self.pending[0].method if self.pending else ""
            return method == "HEAD" or status < 200 or status in (204, 304)

        parser = HttpStream(requests=False, bodiless=bodiless)
        upstream = self.upstream
        assert upstream is not None
        try:
            while True:
                data = upstream.recv(_RECV)
                if not data:
                    break
                for kind, msg, _ in parser.feed(data):
                    if kind == "end" and msg.status >= 200:
                        self._answered(msg.status)
                self.client.sendall(data)
        except OSError:
            pass
        self.reset()

    def _answered(self, status: int) -> None:
        with self.proxy._lock:
            if not self.pending:
                return
            req = self.pending.popleft()
            self.proxy.log.exchanges.append(
                Exchange(req.method, req.path, status, req.sha256, self.number)
            )


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `upstream` and injects faults on command (module doc)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.log = FaultLog()
        self.port = 0
        self._lock = threading.Lock()
        self._live: set[_Connection] = set()
        self._numbers = itertools.count(1)
        self._mode = ""  # the outage in progress ("" = none)
        self._closing = threading.Event()
        self._listener: socket.socket | None = None
        self._blackholed: list[socket.socket] = []
        self._accepting: threading.Thread | None = None
        self._cycle: threading.Thread | None = None
        self._cycle_stop = threading.Event()
        self._triggered = threading.Event()
        self._trigger = ""
        self._matched = threading.Condition()
        self._match = ""
        self._match_methods: tuple[str, ...] = ()
        self._match_count = 0
        self._cut_every = 0
        self._puts = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        self._listen()
        self._accepting = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepting.start()
        return self

    def stop(self) -> None:
        self.stop_faults()
        self._closing.set()
        if self._accepting is not None:
            self._accepting.join(5)
        self._close_listener()
        self.reset_connections(count=False)

    # -- faults ---------------------------------------------------------------------------

    def reset_connections(self, count: bool = True) -> int:
        """RST every live connection now; returns how many."""
        with self._lock:
            live = list(self._live)
            if count:
                self.log.resets += len(live)
        for conn in live:
            conn.reset()
        return len(live)

    def outage(self, seconds: float, mode: str = "refuse") -> None:
        """Take the server away for `seconds` (blocks meanwhile); `mode` as in the module doc."""
        self._begin_outage(mode)
        time.sleep(seconds)
        self._end_outage(seconds)

    def cycle_outages(
        self,
        down: float | Sequence[float] = 2.0,
        up: float = 3.0,
        modes: Sequence[str] = MODES,
        trigger: str = "",
        cut_puts_every: int = 0,
    ) -> None:
        """In the background: `up` s of service, an outage of `down` s, and again; the modes
        (and the lengths, if `down` is a list) take turns.

        With `trigger` the faults (outages and PUT cuts) start at the first request whose path
        contains it; `cut_puts_every` = N resets every N-th PUT halfway through its body.
        """
        downs = [float(down)] if isinstance(down, int | float) else [float(d) for d in down]
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"unknown outage mode {mode!r}; known: {', '.join(MODES)}")
        if not downs or min(downs) <= 0 or up <= 0:
            raise ValueError(f"need down > 0 and up > 0, got down={down}, up={up}")
        self.stop_faults()
        self._trigger = trigger
        self._triggered.clear()
        if not trigger:
            self._triggered.set()
        self._cut_every = cut_puts_every

        def run() -> None:
            while not self._triggered.wait(0.05):
                if self._cycle_stop.is_set():
                    return
            for mode, seconds in zip(itertools.cycle(modes), itertools.cycle(downs)):
                if self._cycle_stop.wait(up):
                    return
                if self._outage(mode, seconds):
                    return

        self._cycle = threading.Thread(target=run, daemon=True)
        self._cycle.start()

    def outages_after(
        self,
        match: str,
        plan: Sequence[tuple[int, str, float]],
        methods: Sequence[str] = ("PUT",),
        cut_puts_every: int = 0,
    ) -> None:
        """In the background: for each (n, mode, seconds) of `plan` in turn, wait until `n`
        requests of `methods` whose path contains `match` went through (counted from now,
        retries included), then take the server away for `seconds` in `mode`.
        `cut_puts_every` = N resets every N-th PUT halfway through its body, from the first
        request whose path contains `match` on.
        """
        for _, mode, seconds in plan:
            if mode not in MODES or seconds <= 0:
                raise ValueError(f"bad outage ({mode!r}, {seconds}); modes: {', '.join(MODES)}")
        self.stop_faults()
        with self._matched:
            self._match, self._match_methods, self._match_count = match, tuple(methods), 0
        self._trigger = match
        self._triggered.clear()
        self._cut_every = cut_puts_every

        def run() -> None:
            for n, mode, seconds in plan:
                with self._matched:
                    while self._match_count < n:
                        if self._cycle_stop.is_set():
                            return
                        self._matched.wait(0.05)
                if self._outage(mode, seconds):
                    return

        self._cycle = threading.Thread(target=run, daemon=True)
        self._cycle.start()

    def _outage(self, mode: str, seconds: float) -> bool:
        """One outage of `seconds` in `mode`; True when stop_faults() ended it early."""
        self._begin_outage(mode)
        stopped = self._cycle_stop.wait(seconds)
        self._end_outage(seconds)
        return stopped

    def stop_faults(self) -> None:
        """End the outage cycle, any outage in progress and the PUT cuts; keep forwarding."""
        self._cut_every = 0
        if self._cycle is not None:
            self._cycle_stop.set()
            self._cycle.join(10)
            self._cycle = None
        self._cycle_stop.clear()
        self._end_outage(0.0)

    # -- what passed ----------------------------------------------------------------------

    def exchanges(self, method: str = "", contains: str = "") -> list[Exchange]:
        """Answered requests, optionally only of `method` and with `contains` in the path."""
        with self._lock:
            return [
                e
                for e in self.log.exchanges
                if (not method or e.method == method) and contains in e.path
            ]

    # -- internals ------------------------------------------------------------------------

    def _begin_outage(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown outage mode {mode!r}; known: {', '.join(MODES)}")
        self._mode = mode
        if mode == "refuse":
            self._close_listener()
        self.reset_connections()

    def _end_outage(self, seconds: float) -> None:
        mode = self._mode
        if not mode:
            return
        self._mode = ""
        with self._lock:
            self.log.outages.append((mode, seconds))
            held, self._blackholed = self._blackholed, []
        for sock in held:
            _rst(sock)
        if mode == "refuse":
            self._listen()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):
            try:
                sock.bind(("127.0.0.1", self.port))  # port 0 the first time: a free one
                break
            except OSError:  # the port is briefly busy after an outage: try again
                time.sleep(0.1)
        else:
            sock.close()
            raise OSError(f"fault proxy cannot listen on 127.0.0.1:{self.port} again")
        sock.listen(128)
        with self._lock:
            self.port = sock.getsockname()[1]
            self._listener = sock

    def _close_listener(self) -> None:
        with self._lock:
            sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                sock = self._listener
            if sock is None:  # a "refuse" outage
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([sock], [], [], 0.1)
                if not ready:
                    continue
                client, _ = sock.accept()
            except (OSError, ValueError):  # closed under us by a "refuse" outage
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = self._mode
            if mode:
                with self._lock:
                    self.log.rejected += 1
                    if mode == "blackhole":
                        self._blackholed.append(client)
                if mode == "reset":
                    _rst(client)
                continue
            conn = _Connection(self, client, next(self._numbers))
            with self._lock:
                self.log.connections += 1
                self._live.add(conn)
            conn.start()

    def _saw_request(self, method: str, path: str) -> None:
        if self._trigger and self._trigger in path:
            self._triggered.set()
        if self._match and self._match in path and method in self._match_methods:
            with self._matched:
                self._match_count += 1
                self._matched.notify_all()

    def _should_cut_put(self, path: str) -> bool:
        if not self._cut_every or not self._triggered.is_set():
            return False
        with self._lock:
            self._puts += 1
            cut = self._puts % self._cut_every == 0
            if cut:
                self.log.cut_puts.append(path)
            return cut
