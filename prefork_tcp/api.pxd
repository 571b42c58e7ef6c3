# Types of the compiled core (prefork_tcp/compiled.py): TcpWorker as an extension type, so
# that the application's calls into it and its reads of the connection are C.

from prefork_tcp.connection cimport Connection

cdef class TcpWorker:
    cdef public Connection _conn
    cdef public list _dirty
    cdef public object _events, _gate, _loop, _pump, _request
    cdef public bint _inside
    cdef public Py_ssize_t _pid, _state

# Where the current request stands (api.py's _IDLE and the rest), as C constants.
cdef Py_ssize_t _IDLE, _AWAITING, _ANSWERED, _CLOSE_EVENT
