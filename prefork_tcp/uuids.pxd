# Types of the compiled core (prefork_tcp/compiled.py): the pool of random bytes and the
# position in it are C variables of the module (Python code does not see them: a fork, and
# the tests, empty the pool with _forget_pool()); the text is C (cuuids.pxd).

cdef bytes _pool
cdef Py_ssize_t _pos
