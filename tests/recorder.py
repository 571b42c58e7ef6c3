"""An application for the integration tests: records every event, answers by command.

Every event is appended to ``$RECORDER_LOG`` as one JSON line before it is answered.
CONNECTED: server ``greet`` answers ``hello <uuid>``, ``reject`` closes, ``slow`` sleeps
half a second before READ, others READ.
DATA commands (the body without its delimiter): ``close``, ``bye`` (RESPOND_CLOSE),
``bigbye N``, ``error``, ``noanswer``, ``twice``, ``badtype``, ``str``, ``big N``, ``sleep S``, ``grow MB``, ``kill UUID``, ``pid``,
``uuid``, ``raise`` (a RuntimeError escapes the application), ``errormsg TEXT`` (``worker.error(TEXT)``
with each ``\\n`` in TEXT turned into a newline), ``burn S`` (compute for S seconds, holding the GIL),
``set K V`` / ``get K`` (``worker.session``), ``unpicklable K`` (a session value that cannot
be pickled); anything else is echoed.
"""

from __future__ import annotations

import json
import os
import time

from prefork_tcp import Request, TcpEvent, TcpResponse, TcpWorker

_hoard: list[bytes] = []


def _record(fh, request: Request, **extra: object) -> None:
    fh.write(
        json.dumps(
            {
                "pid": os.getpid(),
                "event": request.event.value,
                "uuid": request.connection_uuid,
                "server": request.server,
                "remote": request.remote_address,
                "body": request.body.decode("latin-1"),
                **extra,
            }
        )
        + "\n"
    )
    fh.flush()


def main(worker: TcpWorker) -> None:
    with open(os.environ["RECORDER_LOG"], "a", encoding="utf-8") as fh:
        while (request := worker.wait_request()) is not None:
            _record(fh, request)
            if request.event is TcpEvent.CONNECTED:
                if request.server == "greet":
                    worker.respond(f"hello {request.connection_uuid}\r\n")
                elif request.server == "reject":
                    worker.close()
                elif request.server == "slow":
                    time.sleep(0.5)  # the client's first bytes arrive before this answer
                    worker.read()
                else:
                    worker.read()
            elif request.event is TcpEvent.DATA:
                _data(worker, request, fh)
            else:
                worker.respond(b"ignored")  # answers to CLOSE are accepted and ignored


def _data(worker: TcpWorker, request: Request, fh) -> None:
    command, _, arg = request.body.rstrip(b"\r\n").partition(b" ")
    if command == b"close":
        worker.close()
    elif command == b"bye":
        worker.respond(b"bye\r\n", TcpResponse.RESPOND_CLOSE)
    elif command == b"error":
        worker.error("the client asked for an error")
    elif command == b"noanswer":
        pass
    elif command == b"twice":
        worker.respond(b"first\r\n")
        try:
            worker.respond(b"second\r\n")
        except RuntimeError as exc:
            _record(fh, request, note=f"RuntimeError: {exc}")
    elif command == b"badtype":
        try:
            worker.respond(123)  # type: ignore[arg-type]
        except TypeError as exc:
            worker.respond(f"TypeError: {exc}\r\n")
    elif command == b"str":
        worker.respond("naïve\r\n")
    elif command == b"bigbye":
        worker.respond(b"x" * int(arg) + b"\r\n", TcpResponse.RESPOND_CLOSE)
    elif command == b"big":
        worker.respond(b"x" * int(arg) + b"\r\n")
    elif command == b"sleep":
        time.sleep(float(arg))
        worker.respond(request.body)
    elif command == b"burn":
        deadline = time.perf_counter() + float(arg)
        while time.perf_counter() < deadline:
            sum(range(100))
        worker.respond(request.body)
    elif command == b"set":
        key, _, value = arg.partition(b" ")
        worker.session[key.decode()] = value.decode()
        worker.respond(b"ok\r\n")
    elif command == b"get":
        worker.respond(f"{worker.session.get(arg.decode(), '-')}\r\n")
    elif command == b"unpicklable":
        worker.session[arg.decode()] = lambda: None
        worker.respond(b"ok\r\n")
    elif command == b"grow":
        _hoard.append(b"\x01" * (int(arg) * 1024 * 1024))  # written, so it counts in RSS
        worker.respond(b"grown\r\n")
    elif command == b"kill":
        found = worker.close_connection(arg.decode())
        worker.respond(f"{'found' if found else 'missing'}\r\n")
    elif command == b"pid":
        worker.respond(f"{os.getpid()}\r\n")
    elif command == b"uuid":
        worker.respond(f"{request.connection_uuid}\r\n")
    elif command == b"raise":
        raise RuntimeError("the client asked for a crash")
    elif command == b"errormsg":
        worker.error(arg.decode("latin-1").replace("\\n", "\n"))
    else:
        worker.respond(request.body)


def fail_before_ready(worker: TcpWorker) -> None:
    """An application that raises before it ever waits for a request."""
    raise RuntimeError("database unreachable")


def slow_boot(worker: TcpWorker) -> None:
    """An application that takes a minute before it waits for its first request."""
    time.sleep(60)
    main(worker)


def fails_while_marked(worker: TcpWorker) -> None:
    """The recorder, but failing at start while the file ``$FAIL_MARKER`` exists."""
    if os.path.exists(os.environ["FAIL_MARKER"]):
        raise RuntimeError("marker present")
    main(worker)


def boot_half_second(worker: TcpWorker) -> None:
    """The recorder, but taking half a second to become ready."""
    time.sleep(0.5)
    main(worker)
