# C helpers of the compiled event loop's hot path (eventloop.py).

cdef extern from *:
    """
    /* b"".join(chunks) for a list of bytes objects, without the buffer protocol. */
    static inline PyObject *prefork_tcp_gather(PyObject *chunks) {
        Py_ssize_t n = PyList_GET_SIZE(chunks), total = 0, i;
        PyObject *data;
        char *p;
        if (n == 1 && PyBytes_CheckExact(PyList_GET_ITEM(chunks, 0))) {
            data = PyList_GET_ITEM(chunks, 0);
            Py_INCREF(data);
            return data;
        }
        for (i = 0; i < n; i++) {
            PyObject *chunk = PyList_GET_ITEM(chunks, i);
            if (!PyBytes_CheckExact(chunk)) {  /* not made by the loop: let bytes.join take it */
                PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
                if (empty == NULL)
                    return NULL;
                data = PyObject_CallMethod(empty, "join", "O", chunks);
                Py_DECREF(empty);
                return data;
            }
            total += PyBytes_GET_SIZE(chunk);
        }
        data = PyBytes_FromStringAndSize(NULL, total);
        if (data == NULL)
            return NULL;
        p = PyBytes_AS_STRING(data);
        for (i = 0; i < n; i++) {
            PyObject *chunk = PyList_GET_ITEM(chunks, i);
            memcpy(p, PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk));
            p += PyBytes_GET_SIZE(chunk);
        }
        return data;
    }

    /* Whether the first `probe` in `data` ends it: `data` is exactly one message. */
    static inline int prefork_tcp_one_message(PyObject *data, PyObject *probe) {
        Py_ssize_t n = PyBytes_GET_SIZE(data), m = PyBytes_GET_SIZE(probe);
        const char *d = PyBytes_AS_STRING(data), *found;
        if (m == 0 || m > n)
            return 0;
        found = memmem(d, (size_t)n, PyBytes_AS_STRING(probe), (size_t)m);
        return found != NULL && found == d + n - m;
    }
    """
    bytes gather "prefork_tcp_gather"(list chunks)
    bint one_message "prefork_tcp_one_message"(bytes data, bytes probe)
