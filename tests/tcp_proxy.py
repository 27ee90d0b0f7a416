"""A TCP proxy a test can cut: between a master and its PostgreSQL, to cut the master off
from the store (every connection through it reset, new ones refused at once) and let it
back in, while the other masters reach the server directly."""

import selectors
import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        """Listening on ``port`` (0: any free one): a test can point a master at a free
        port first, where nothing listens, and open the proxy there later."""
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def url_for(self, url: str, port: int) -> str:
        """``url`` (to the target) made to go through the proxy."""
        return url.replace(f":{port}/", f":{self.port}/")

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in self._open:
                try:  # its pump sees the end and closes both sides
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its pump
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._cut:
                    client.close()
                    continue
                try:
                    server = socket.create_connection(self._target, timeout=5)
                except OSError:
                    client.close()
                    continue
                self._open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(a, selectors.EVENT_READ)
                selector.register(b, selectors.EVENT_READ)
                while True:
                    for key, _ in selector.select(timeout=0.2):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(65536)
                        if not data:
                            return
                        peer[sock].sendall(data)
            except (OSError, ValueError):
                return
            finally:
                for sock in (a, b):
                    with self._lock:
                        self._open.discard(sock)
                    sock.close()
