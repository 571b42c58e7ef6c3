# Types of the compiled core (prefork_tcp/compiled.py): the Gate's flags are C stores.

cdef class Gate:
    cdef public bint inside, moving
    cdef public object done
