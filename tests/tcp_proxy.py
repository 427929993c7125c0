"""A small TCP proxy that tests switch off and on to cause real network outages.

``TcpProxy(target_port=5432).start()`` forwards ``127.0.0.1:proxy.port`` to the target.
``stop()`` drops every open connection and closes the listening socket, so new connections
are refused (a database that went away); ``start()`` listens again on the same port.
``blackhole()`` drops open connections and then accepts new ones without ever answering (a
hung network: clients wait for their own timeouts). ``hang()`` keeps every connection open
and accepts new ones (the upstream end is connected too) but holds every byte in both
directions, so the kernel acknowledges what clients send and no TCP timeout fires: a
database that accepts and never answers. ``resume()`` delivers what was held and forwards
again, as a database coming back would. Threads only, no asyncio, so it runs beside any
event loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, *, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections_made = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._forwarding = True
        self._flowing = threading.Event()  # cleared while hung: pumps hold their bytes
        self._flowing.set()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> TcpProxy:
        """Listen (on the same port as before, if any) and forward new connections."""
        self._close_listener()
        self._forwarding = True
        self._flowing.set()
        self._listen()
        return self

    def stop(self) -> None:
        """Drop every connection and refuse new ones until ``start()``."""
        self._close_listener()
        self._drop_all()
        self._flowing.set()  # held pumps wake, find their sockets closed and end

    def blackhole(self) -> None:
        """Drop every connection; accept new ones but never forward a byte."""
        self._close_listener()
        self._drop_all()
        self._forwarding = False
        self._listen()

    def hang(self) -> None:
        """Keep and accept connections but answer nothing, until ``resume()``."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what ``hang()`` held back and forward normally again."""
        self._flowing.set()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="tcp-proxy-accept", daemon=True
        )
        self._accept_thread.start()

    def _close_listener(self) -> None:
        listener, thread = self._listener, self._accept_thread
        self._listener = self._accept_thread = None
        if listener is not None:
            listener.close()
        if thread is not None:
            thread.join(2)

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            client.settimeout(None)
            with self._lock:
                self._sockets.add(client)
                self.connections_made += 1
            if not self._forwarding:
                continue  # held open, never answered
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.add(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(sock)
            sock.close()
