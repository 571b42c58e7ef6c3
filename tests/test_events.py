"""Request: five named fields on a tuple, built by the loop without a Python frame."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest

from prefork_tcp import Request, TcpEvent, implementation
from prefork_tcp.events import new_request

FIELDS = (TcpEvent.DATA, b"hi\r\n", "srv", "u-1", "127.0.0.1:5")


def test_built_from_fields_by_position_or_name_and_by_the_loop_alike():
    by_position = Request(*FIELDS)
    by_name = Request(event=FIELDS[0], body=FIELDS[1], server=FIELDS[2], connection_uuid=FIELDS[3], remote_address=FIELDS[4])
    from_loop = new_request(FIELDS)
    assert by_position == by_name == from_loop == FIELDS
    assert type(from_loop) is Request and isinstance(from_loop, tuple)
    assert hash(from_loop) == hash(FIELDS)
    with pytest.raises(TypeError):
        Request(*FIELDS[:4])  # type: ignore[call-arg]


def test_fields_read_by_name_and_never_written():
    request = new_request(FIELDS)
    assert (request.event, request.body, request.server, request.connection_uuid, request.remote_address) == FIELDS
    with pytest.raises(AttributeError):
        request.body = b"x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        request.extra = 1  # type: ignore[attr-defined]


def test_repr_copy_pickle_and_the_namedtuple_helpers():
    request = new_request(FIELDS)
    assert repr(request) == (
        "Request(event=<TcpEvent.DATA: 'DATA'>, body=b'hi\\r\\n', server='srv', connection_uuid='u-1', remote_address='127.0.0.1:5')"
    )
    for clone in (copy.copy(request), copy.deepcopy(request), pickle.loads(pickle.dumps(request))):
        assert clone == request and type(clone) is Request
    assert request._asdict()["connection_uuid"] == "u-1"
    assert request._replace(body=b"other\r\n") == Request(FIELDS[0], b"other\r\n", *FIELDS[2:])
    with pytest.raises(ValueError, match="no field"):
        request._replace(size=3)
    match request:
        case Request(event, body):
            assert (event, body) == FIELDS[:2]


def test_fields_read_the_same_where_the_interpreter_specializes_the_reads():
    requests = [new_request((TcpEvent.DATA, b"%d\r\n" % i, f"s{i}", f"u-{i}", f"127.0.0.1:{i}")) for i in range(500)]

    def read(request: Request) -> tuple[object, ...]:
        return (request.event, request.body, request.server, request.connection_uuid, request.remote_address)

    assert [read(r) for r in requests] == [tuple(r) for r in requests]  # the same code, run warm


@pytest.mark.skipif(implementation() != "compiled", reason="the plain modules read fields with _tuplegetter")
def test_compiled_fields_are_member_descriptors_and_a_request_always_has_all_five():
    assert type(Request.body).__name__ == "member_descriptor"
    assert Request.body.__doc__ == "the message, delimiter included (empty for CONNECTED and CLOSE)"
    for fields in ((), FIELDS[:4], (*FIELDS, "extra")):
        with pytest.raises(TypeError, match="5 fields"):
            Request.__new__(Request, fields)
    assert Request.__new__(Request, FIELDS) == FIELDS


def test_dropped_requests_give_their_type_back():
    """Every Request holds a reference to its type, which dropping it gives back (the
    compiled core's own deallocator keeps a few dropped ones: at most a bounded number)."""

    class Sub(Request):
        __slots__ = ()

    def cycle(count: int) -> None:
        for i in range(count):
            Request(*FIELDS)
            new_request((TcpEvent.CLOSE, b"", "s", f"u-{i}", ""))
            Request(1, 2, 3, 4, 5)  # fields of any kind
            tuple.__new__(Sub, FIELDS)  # a subclass's instances go through it as their base's
            pickle.loads(pickle.dumps(new_request(FIELDS)))

    cycle(100)  # whatever is kept, is kept by now
    before = sys.getrefcount(Request), sys.getrefcount(Sub)
    cycle(10_000)
    assert (sys.getrefcount(Request), sys.getrefcount(Sub)) == before


def test_requests_nested_deep_are_dropped_without_exhausting_the_stack():
    # A subprocess: were the fields dropped by plain recursion, it would crash.
    script = (
        "from prefork_tcp import Request, TcpEvent\n"
        "r = b''\n"
        "for _ in range(1_000_000):\n"
        "    r = Request(TcpEvent.DATA, r, 's', 'u', '')\n"
        "del r\n"
        "print('dropped')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "dropped\n"
