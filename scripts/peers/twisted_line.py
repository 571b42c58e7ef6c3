"""Peer: Twisted LineReceiver, lineReceived() per line (epoll reactor)."""

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402


class Ping(LineReceiver):
    delimiter = b"\r\n"

    def lineReceived(self, line):
        self.sendLine(b"+PONG" if line.upper() == b"PING" else b"-ERR unknown command")


class PingFactory(protocol.Factory):
    protocol = Ping


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), PingFactory(), interface="127.0.0.1", backlog=2048)
    reactor.run()
