# The compiled core's system calls on a connection's socket (sysio.py says why they are C).
# Declarations only: each module that cimports this gets its own copy of the C below.

cdef extern from *:
    """
    #include <arpa/inet.h>
    #include <errno.h>
    #include <limits.h>
    #include <math.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <stddef.h>
    #include <string.h>
    #include <sys/epoll.h>
    #include <sys/socket.h>
    #include <sys/un.h>
    #include <unistd.h>

    /* Events taken from the kernel per wait; more ready descriptors wait for the next. */
    #define PREFORK_TCP_MAX_EVENTS 256

    /* Reads of up to this many bytes are copied out of the spare buffer. */
    #define PREFORK_TCP_COPY_LIMIT 4096

    /* read(2) into a new bytes object of the size read, holding the GIL (the socket
     * does not block). The read goes into a spare bytes object of at least `size` bytes,
     * never seen by Python code. A short read is copied out of it and the spare kept;
     * a longer one takes the spare itself, shrunk to what was read, and the next read
     * makes a new one. */
    static inline PyObject *prefork_tcp_recv(int fd, Py_ssize_t size) {
        static PyObject *spare = NULL;
        PyObject *data;
        Py_ssize_t n;
        if (size < 0) {
            PyErr_SetString(PyExc_ValueError, "negative buffersize in read");
            return NULL;
        }
        if (spare == NULL || PyBytes_GET_SIZE(spare) < size) {
            Py_CLEAR(spare);
            spare = PyBytes_FromStringAndSize(NULL, size);
            if (spare == NULL)
                return NULL;
        }
        n = read(fd, PyBytes_AS_STRING(spare), (size_t)size);
        if (n < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (n <= PREFORK_TCP_COPY_LIMIT)
            return PyBytes_FromStringAndSize(PyBytes_AS_STRING(spare), n);
        data = spare;
        spare = NULL;
        if (n < PyBytes_GET_SIZE(data) && _PyBytes_Resize(&data, n) < 0)
            return NULL;
        return data;
    }

    /* write(2) of a whole bytes object, holding the GIL (the socket does not block). */
    static inline Py_ssize_t prefork_tcp_send(int fd, PyObject *data) {
        Py_ssize_t n;
        if (!PyBytes_CheckExact(data)) {
            PyErr_Format(PyExc_TypeError, "write needs bytes, not %.100s", Py_TYPE(data)->tp_name);
            return -1;
        }
        n = write(fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
        if (n < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        return n;
    }

    /* epoll_wait(2) into a list of (fd, events) pairs, as select.epoll.poll returns,
     * without its per-call allocation of 1023 events and its Py_BuildValue per event.
     * `timeout` in seconds, negative to block; the GIL is released while waiting. A wait
     * interrupted by a signal runs the signal handlers and returns no events. */
    static inline PyObject *prefork_tcp_poll(int epfd, double timeout) {
        struct epoll_event events[PREFORK_TCP_MAX_EVENTS];
        /* Milliseconds, rounded up; a longer wait than an int holds ends early, harmlessly. */
        int ms = timeout < 0 ? -1 : timeout >= INT_MAX / 1000.0 ? INT_MAX : (int)ceil(timeout * 1000.0);
        int n, i;
        PyObject *ready;
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(epfd, events, PREFORK_TCP_MAX_EVENTS, ms);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EINTR)
                return PyErr_CheckSignals() < 0 ? NULL : PyList_New(0);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        ready = PyList_New(n);
        if (ready == NULL)
            return NULL;
        for (i = 0; i < n; i++) {
            PyObject *pair = PyTuple_New(2), *fd, *mask;
            if (pair == NULL) {
                Py_DECREF(ready);
                return NULL;
            }
            PyList_SET_ITEM(ready, i, pair);
            fd = PyLong_FromLong(events[i].data.fd);
            mask = PyLong_FromUnsignedLong(events[i].events);
            if (fd == NULL || mask == NULL) {
                Py_XDECREF(fd);
                Py_XDECREF(mask);
                Py_DECREF(ready);
                return NULL;
            }
            PyTuple_SET_ITEM(pair, 0, fd);
            PyTuple_SET_ITEM(pair, 1, mask);
        }
        return ready;
    }

    static inline char *prefork_tcp_put_uint(char *p, unsigned int value) {
        char digits[10];
        int n = 0;
        do {
            digits[n++] = (char)('0' + value % 10);
            value /= 10;
        } while (value);
        while (n)
            *p++ = digits[--n];
        return p;
    }

    /* A peer's address as text, as sockets.format_peer makes it of what Python's accept
     * returns: "a.b.c.d:port", "[v6]:port", a unix peer's name ("" when unnamed). */
    static inline PyObject *prefork_tcp_peer_text(const struct sockaddr_storage *ss, socklen_t len) {
        char text[INET6_ADDRSTRLEN + 16], *p = text;
        if (ss->ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
            const unsigned char *b = (const unsigned char *)&a->sin_addr;
            int i;
            for (i = 0; i < 4; i++) {
                p = prefork_tcp_put_uint(p, b[i]);
                *p++ = i < 3 ? '.' : ':';
            }
            p = prefork_tcp_put_uint(p, ntohs(a->sin_port));
            return PyUnicode_FromStringAndSize(text, p - text);
        }
        if (ss->ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
            *p++ = '[';
            if (inet_ntop(AF_INET6, &a->sin6_addr, p, INET6_ADDRSTRLEN) == NULL)
                return PyErr_SetFromErrno(PyExc_OSError);
            p += strlen(p);
            *p++ = ']';
            *p++ = ':';
            p = prefork_tcp_put_uint(p, ntohs(a->sin6_port));
            return PyUnicode_FromStringAndSize(text, p - text);
        }
        if (ss->ss_family == AF_UNIX) {
            const struct sockaddr_un *a = (const struct sockaddr_un *)ss;
            size_t path = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
            if (path > 0 && a->sun_path[0] == 0)  /* Linux's abstract namespace: Python gives bytes */
                return PyUnicode_DecodeUTF8(a->sun_path, (Py_ssize_t)path, "replace");
            return PyUnicode_DecodeFSDefault(a->sun_path);  /* NUL-terminated: the storage was zeroed */
        }
        return PyUnicode_FromStringAndSize(NULL, 0);
    }

    /* accept4(2) on listening socket `lfd`: (socket, peer text). The descriptor comes
     * non-blocking and close-on-exec from the kernel, so the socket object, made with
     * SOCK_NONBLOCK in its type, needs no system call to be put in that mode. With
     * `nodelay`, TCP_NODELAY is set on it; should that fail, the connection is closed
     * and the error raised, as for a connection gone before it was accepted. */
    static inline PyObject *prefork_tcp_accept(int lfd, PyObject *socket_type, int family, int type, int proto, int nodelay) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd, one = 1;
        PyObject *args, *sock, *peer, *result;
        memset(&ss, 0, sizeof(ss));
        fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (nodelay && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            close(fd);
            return NULL;
        }
        args = Py_BuildValue("(iiii)", family, type | SOCK_NONBLOCK, proto, fd);
        sock = args == NULL ? NULL : PyObject_Call(socket_type, args, NULL);
        Py_XDECREF(args);
        if (sock == NULL) {
            close(fd);
            return NULL;
        }
        peer = prefork_tcp_peer_text(&ss, len);
        if (peer == NULL) {
            PyObject *type_, *value, *traceback;
            PyErr_Fetch(&type_, &value, &traceback);
            Py_XDECREF(PyObject_CallMethod(sock, "close", NULL));
            Py_DECREF(sock);
            PyErr_Restore(type_, value, traceback);
            return NULL;
        }
        result = PyTuple_Pack(2, sock, peer);
        Py_DECREF(sock);
        Py_DECREF(peer);
        return result;
    }
    """
    bytes c_recv "prefork_tcp_recv"(int fd, Py_ssize_t size)
    Py_ssize_t c_send "prefork_tcp_send"(int fd, object data) except -1
    list c_poll "prefork_tcp_poll"(int epfd, double timeout)
    tuple c_accept "prefork_tcp_accept"(int lfd, object socket_type, int family, int type, int proto, bint nodelay)
