# Types of the compiled core (prefork_tcp/compiled.py).

cdef class Connection:
    cdef public bint active, closing, connected, eof, open, plain, shared, wrote
    cdef public Py_ssize_t fd, high_water, kernel_queued, mask, out_size, partial_seen, read_size
    cdef public double idle_since, linger_until, partial_since, write_since
    cdef public list held, out, unread
    cdef public object framer, remote, server, session, sock, timeouts, uuid
