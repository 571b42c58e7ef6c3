"""Peer: gevent StreamServer, a greenlet per connection reading lines from a file object."""

import sys

from gevent.server import StreamServer

PONG, ERR = b"+PONG\r\n", b"-ERR unknown command\r\n"


def handle(sock, address):
    reader = sock.makefile("rb")
    for line in reader:
        sock.sendall(PONG if line.rstrip(b"\r\n").upper() == b"PING" else ERR)
    reader.close()
    sock.close()


if __name__ == "__main__":
    StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=2048).serve_forever()
