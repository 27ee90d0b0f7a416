"""The API's listening socket, bound by the master before any worker starts (a port in
use is an error at start, and port 0 gives the real address for ``master.json``). Apart
from the server so that binding it does not import the web framework.
"""

import socket

LISTEN_BACKLOG = 2048  # the kernel's queue of connections not yet accepted


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; OSError says why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted sockets only when
    # the socket says it is TCP; without it, Nagle and delayed ACKs add ~40 ms to every
    # request on a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(False)
    except OSError:
        sock.close()
        raise
    return sock
