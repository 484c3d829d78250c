"""A TCP forwarder on a loopback port that a test can cut and restore, as a network outage would."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tests.support.local import free_port


class Forwarder:
    """Forwards ``127.0.0.1:port`` to ``target``; it starts cut, ``restore`` opens it.

    A cut closes the listening socket (new connections are refused at once, as from a host whose
    service is down) and both ends of every open connection (pooled ones fail on their next use).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()

    def restore(self) -> None:
        """Listen on ``port`` again and forward every new connection."""
        listener = socket.create_server(("127.0.0.1", self.port))
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_now, self._open = self._open, set()
        for sock in [*([listener] if listener else []), *open_now]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or a cut closes both)."""
        pair = (client, upstream)
        with selectors.DefaultSelector() as selector:
            for source, sink in (pair, pair[::-1]):
                source.setblocking(True)
                selector.register(source, selectors.EVENT_READ, (source, sink))
            try:
                while True:
                    for key, _ in selector.select(timeout=1.0):
                        source, sink = key.data
                        data = source.recv(65536)
                        if not data:
                            return
                        sink.sendall(data)
            except (OSError, ValueError):
                return  # cut, or the other side went away
            finally:
                with self._lock:
                    self._open.difference_update(pair)
                for sock in pair:
                    sock.close()
