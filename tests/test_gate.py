"""The gate between the application's thread and the watchdog (no sockets)."""

from __future__ import annotations

import sys
import threading

from prefork_tcp import TcpEvent, TcpWorker, implementation
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
    assert gate.try_take(thread.ident, application.__code__, lambda: held.append(gate.moving), lambda: False)
    assert held == [True]  # the hold is in place, under the raised flag, before the look
    assert gate.moving and not gate.done.is_set()
    gate.give_back()
    assert not gate.moving and gate.done.is_set()
    release.set()
    thread.join(5)


def in_package_code(wait) -> None:
    """Call ``wait`` from a frame of a module of prefork_tcp, as the loop's plain Python code
    is (which modules those are depends on whether the compiled core runs)."""
    namespace = {"__name__": "prefork_tcp.connset"}
    exec("def loop_code(wait):\n    wait()\n", namespace)
    namespace["loop_code"](wait)


def test_the_watchdog_backs_off_while_a_frame_of_prefork_tcp_is_on_the_stack():
    gate = Gate()
    thread, release = run_application(through=in_package_code)
    assert not gate.try_take(thread.ident, application.__code__, lambda: None, lambda: False)
    assert not gate.moving and gate.done.is_set()  # backing off leaves no trace
    release.set()
    thread.join(5)
    # The same thread in the application's own code: taken.
    thread, release = run_application()
    assert gate.try_take(thread.ident, application.__code__, lambda: None, lambda: False)
    gate.give_back()
    release.set()
    thread.join(5)


def test_the_watchdog_backs_off_while_the_application_thread_waits_for_its_next_event():
    """Blocked in the loop with no frame of the package on its stack (the compiled core's
    case; here the loop's events come from this module): ``TcpWorker.in_loop()`` tells."""
    release = threading.Event()

    class Loop:
        def __init__(self):
            self.gate = Gate()
            self.dirty: list[Connection] = []

        def pump(self):
            release.wait(10)  # as epoll_wait would
            return
            yield

    loop = Loop()
    worker = TcpWorker(loop)
    ready = threading.Event()
    got = []

    def app(worker):
        ready.set()
        got.append(worker.wait_request())

    thread = threading.Thread(target=app, args=(worker,), daemon=True)
    thread.start()
    assert ready.wait(5)
    while not worker.in_loop():  # raised before the event source is asked, in the same thread
        thread.join(0.01)
    if implementation() == "compiled":  # TcpWorker has no frame there: only the flag tells
        assert not in_loop(sys._current_frames()[thread.ident], app.__code__)
    assert not loop.gate.try_take(thread.ident, app.__code__, lambda: None, worker.in_loop)
    assert not loop.gate.moving
    release.set()
    thread.join(5)
    assert got == [None] and not worker.in_loop()


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
