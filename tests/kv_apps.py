"""An application for the storage tests: DATA commands against ``kv.storage("shared")``.

``incr KEY N``: N increments of KEY, answered with the last value; ``set KEY VALUE`` /
``get KEY``; ``hammer KEY N``: N rounds of set then get of KEY:PID (a new value each
time), answered with the number of rounds that read back something else; ``pid``. A
``StorageError`` is answered ``-ERR`` and its message.
"""

from __future__ import annotations

import os

from prefork_tcp import TcpEvent, TcpWorker, kv


def main(worker: TcpWorker) -> None:
    shared = kv.storage("shared")
    while (request := worker.wait_request()) is not None:
        if request.event is TcpEvent.CONNECTED:
            worker.read()
            continue
        if request.event is not TcpEvent.DATA:
            continue
        command, *args = request.body.decode().split()
        try:
            if command == "incr":
                value = 0
                for _ in range(int(args[1])):
                    value = shared.incr(args[0])
                worker.respond(f"{value}\r\n")
            elif command == "set":
                shared.set(args[0], args[1])
                worker.respond(b"ok\r\n")
            elif command == "get":
                worker.respond(shared.get(args[0], b"-") + b"\r\n")
            elif command == "hammer":
                wrong, key = 0, f"{args[0]}:{os.getpid()}"
                for i in range(int(args[1])):
                    mine = f"{os.getpid()}:{i}".encode()
                    shared.set(key, mine)
                    wrong += shared.get(key) != mine
                worker.respond(f"{wrong}\r\n")
            elif command == "pid":
                worker.respond(f"{os.getpid()}\r\n")
            else:
                worker.respond(b"?\r\n")
        except kv.StorageError as exc:
            worker.respond(f"-ERR {exc}\r\n")
