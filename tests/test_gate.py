"""The gate between the application's thread and the watchdog (no sockets)."""

from __future__ import annotations

import sys
import threading

from prefork_tcp import TcpEvent, TcpWorker
from prefork_tcp.connection import Connection
from prefork_tcp.framing import make_framer
from prefork_tcp.gate import Gate, in_loop


def application(ready: threading.Event, release: threading.Event, through=None) -> None:
    """Stands for the application's code: waits, possibly inside ``through()``."""
    ready.set()
    if through is None:
        release.wait(10)
    else:
        through(lambda: release.wait(10))


def run_application(through=None) -> tuple[threading.Thread, threading.Event]:
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=application, args=(ready, release, through), daemon=True)
    thread.start()
    assert ready.wait(5)
    return thread, release


def test_the_watchdog_takes_the_loop_while_the_application_runs_its_own_code():
    gate = Gate()
    thread, release = run_application()
    held = []
    assert gate.try_take(thread.ident, application.__code__, lambda: held.append(gate.moving))
    assert held == [True]  # the hold is in place, under the raised flag, before the look
    assert gate.moving and not gate.done.is_set()
    gate.give_back()
    assert not gate.moving and gate.done.is_set()
    release.set()
    thread.join(5)


def test_the_watchdog_backs_off_while_a_frame_of_prefork_tcp_is_on_the_stack():
    gate = Gate()
    other = Gate()
    other.moving = True  # the application's thread will wait in Gate.wait, a frame of the package
    thread, release = run_application(through=lambda wait: other.wait())
    assert not gate.try_take(thread.ident, application.__code__, lambda: None)
    assert not gate.moving and gate.done.is_set()  # backing off leaves no trace
    other.give_back()
    release.set()
    thread.join(5)


def test_frames_below_the_applications_entry_do_not_count():
    def entry():
        return inner()

    def inner():
        return sys._getframe()

    frame = entry()
    assert not in_loop(frame, entry.__code__)  # this test module sits below: not looked at
    assert in_loop(frame, in_loop.__code__)  # an entry not on the stack: cannot tell, so yes


def test_the_next_wait_request_waits_until_the_watchdog_lets_go():
    class Loop:
        def __init__(self, events):
            self.gate = Gate()
            self.dirty: list[Connection] = []
            self.items = events

        def pump(self):
            yield from self.items

        def answer(self, conn, response, body):
            pass

        def abandon(self, conn):
            pass

        def close_connection(self, uuid):
            return False

    conn = Connection(None, "u-1", "default", "", make_framer(b"\r\n", 1 << 20))
    loop = Loop([(conn, TcpEvent.CONNECTED, b""), (conn, TcpEvent.DATA, b"x\r\n")])
    worker = TcpWorker(loop)
    assert worker.wait_request().event is TcpEvent.CONNECTED
    worker.read()
    loop.gate.moving = True  # as try_take leaves it
    loop.gate.done.clear()
    worker.hold_for(loop.gate)
    got = []
    thread = threading.Thread(target=lambda: got.append(worker.wait_request()), daemon=True)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and not got  # waiting for the watchdog
    loop.gate.give_back()
    thread.join(5)
    assert got[0].event is TcpEvent.DATA and got[0].body == b"x\r\n"
    worker.read()
    assert worker.wait_request() is None  # the loop's own source again, to its end
