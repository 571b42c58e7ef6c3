# Types of the compiled core (prefork_tcp/compiled.py): a worker's SlotWriter, whose
# counters are C stores through a typed view of the shared words.

cdef class SlotWriter:
    cdef public object ints, signed
    cdef public Py_ssize_t base, used_index, counters
    cdef unsigned long long[:] _words
    cdef Py_ssize_t _servers
