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

    /* The address of `count` 8-byte words from `index` on in a writable memoryview of
     * such words (the scoreboard's), valid while the memoryview is. */
    static inline void *prefork_tcp_words(PyObject *view, Py_ssize_t index, Py_ssize_t count) {
        Py_buffer *buffer;
        if (!PyMemoryView_Check(view)) {
            PyErr_SetString(PyExc_TypeError, "scoreboard words come in a memoryview");
            return NULL;
        }
        buffer = PyMemoryView_GET_BUFFER(view);
        if (buffer->readonly || buffer->itemsize != 8 || index < 0 || count < 1 || index > buffer->len / 8 - count) {
            PyErr_SetString(PyExc_ValueError, "no such scoreboard word");
            return NULL;
        }
        return (char *)buffer->buf + index * 8;
    }

    /* Whether `f` is a bound built-in method that takes no arguments (deque.popleft), which
     * call_noargs calls as the C function it is, without the general call's machinery. */
    static inline int prefork_tcp_is_noargs(PyObject *f) {
        return PyCFunction_Check(f) && PyCFunction_GET_SELF(f) != NULL
            && (PyCFunction_GET_FLAGS(f) & ~METH_COEXIST) == METH_NOARGS;
    }

    static inline PyObject *prefork_tcp_call_noargs(PyObject *f) {
        return PyCFunction_GET_FUNCTION(f)(PyCFunction_GET_SELF(f), NULL);
    }
    """
    bytes gather "prefork_tcp_gather"(list chunks)
    bint is_noargs "prefork_tcp_is_noargs"(object f)
    object call_noargs "prefork_tcp_call_noargs"(object f)
    void *words "prefork_tcp_words"(object view, Py_ssize_t index, Py_ssize_t count) except NULL
