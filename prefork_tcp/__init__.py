"""prefork_tcp: a pre-fork TCP application server with RoadRunner's TCP worker API."""

from .api import Request, TcpEvent, TcpResponse, TcpWorker

__all__ = ["Request", "TcpEvent", "TcpResponse", "TcpWorker"]
__version__ = "0.1.0"
