# Types of the compiled core (prefork_tcp/compiled.py): C functions the event loop calls
# directly.

cpdef bytes recv(int fd, Py_ssize_t size)
cpdef Py_ssize_t send(int fd, object data) except? -1
cpdef tuple accept(object listener, int fd, int family, int type_, int proto, bint nodelay)
