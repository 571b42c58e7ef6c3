"""prefork_tcp: a pre-fork TCP application server with RoadRunner's TCP worker API."""

from . import compiled

compiled.install()  # before any module of the core is imported: compiled or plain

from .api import Request, TcpEvent, TcpResponse, TcpWorker  # noqa: E402
from .compiled import implementation  # noqa: E402

__all__ = ["Request", "TcpEvent", "TcpResponse", "TcpWorker", "implementation"]
__version__ = "0.1.0"
