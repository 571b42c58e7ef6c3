# Types of the compiled core (prefork_tcp/compiled.py).

cdef class Framer:
    cdef public bytes _blocked, _shortcut, delimiter, probe
    cdef public bytearray _partial
    cdef public Py_ssize_t _dlen, max_size, started
