"""COUNTER: counts every client address's messages across all workers (and machines).

Each message is answered with how many messages its client's address (the IP, without
the port) has sent so far, counted in the storage ``[kv.counts]`` with an atomic
``incr``: whichever worker, or machine, serves the connection, the count is one.
``conf/kv.toml`` runs it on SQLite; one line there moves it to Redis.
"""

from __future__ import annotations

from prefork_tcp import TcpEvent, TcpWorker, kv


def main(worker: TcpWorker) -> None:
    counts = kv.storage("counts")
    while (request := worker.wait_request()) is not None:
        if request.event is TcpEvent.DATA:
            address = request.remote_address.rpartition(":")[0] or request.remote_address
            try:
                seen = counts.incr(f"messages:{address}")
            except kv.StorageError as exc:  # the storage is unreachable: say so, keep the connection
                worker.respond(f"-ERR {exc}\r\n")
                continue
            worker.respond(f"{seen}\r\n")
        elif request.event is TcpEvent.CONNECTED:
            worker.read()
