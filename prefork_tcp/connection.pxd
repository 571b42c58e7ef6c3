# Types of the compiled core (prefork_tcp/compiled.py). ``read_size`` stays a Python int:
# it is only ever passed to ``recv``, which would otherwise get a new int object per read.

cdef class Connection:
    cdef public bint active, closing, connected, eof, open, plain, shared, wrote
    cdef public Py_ssize_t fd, high_water, kernel_queued, mask, out_size, partial_seen
    cdef public double idle_since, linger_until, partial_since, write_since
    cdef public list held, out, unread
    cdef public object framer, read_size, remote, server, session, sock, timeouts, uuid
