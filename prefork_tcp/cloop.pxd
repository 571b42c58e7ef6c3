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

    """
    bytes gather "prefork_tcp_gather"(list chunks)
