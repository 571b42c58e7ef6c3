# The compiled framer's C (framing.py), and the event loop's test for a read that is one
# whole message (eventloop.py). ``bytes.split`` makes each message without its delimiter,
# and adding the delimiter back makes it again, through the buffer protocol: ``cut`` makes
# each message once, delimiter included.

cdef extern from *:
    """
    #include <string.h>

    /* The first `sep` (m > 0 bytes) in [p, end), or NULL. Delimiters are short: memchr
     * for the first byte and a compare for the rest costs less than memmem's set-up. A
     * run of false starts (a client sending the delimiter's first byte over and over)
     * hands the rest to memmem, so that the search stays linear. */
    static inline const char *prefork_tcp_find(const char *p, const char *end, const char *sep, size_t m) {
        int misses = 0;
        size_t i;
        if (m == 1)
            return memchr(p, sep[0], (size_t)(end - p));
        if (m > 4)
            return memmem(p, (size_t)(end - p), sep, m);
        while ((size_t)(end - p) >= m) {
            p = memchr(p, sep[0], (size_t)(end - p) - m + 1);
            if (p == NULL)
                return NULL;
            for (i = 1; i < m && p[i] == sep[i]; i++)
                ;
            if (i == m)
                return p;
            p++;
            if (++misses > 8)
                return memmem(p, (size_t)(end - p), sep, m);
        }
        return NULL;
    }

    /* Append to `messages` every message of `data` that a `delim` ends, delimiter kept,
     * searching from the start (`data` itself when it is one whole message); or, when
     * `tag` is not None, the tuple (tag, event, message) of each. Return where the
     * unfinished rest begins, or -1 on error. `*longest` gets the length of the longest
     * message without its delimiter. */
    static inline Py_ssize_t prefork_tcp_cut(PyObject *data, PyObject *delim, PyObject *messages,
                                             Py_ssize_t *longest, PyObject *tag, PyObject *event) {
        const char *start = PyBytes_AS_STRING(data), *p = start;
        const char *end = start + PyBytes_GET_SIZE(data), *sep = PyBytes_AS_STRING(delim), *found;
        size_t m = (size_t)PyBytes_GET_SIZE(delim);
        PyObject *message, *item;
        *longest = 0;
        if (m == 0)
            return 0;
        while ((found = prefork_tcp_find(p, end, sep, m)) != NULL) {
            if (found - p > *longest)
                *longest = found - p;
            if (p == start && found + m == end) {
                message = data;
                Py_INCREF(message);
            } else {
                message = PyBytes_FromStringAndSize(p, (found - p) + (Py_ssize_t)m);
                if (message == NULL)
                    return -1;
            }
            if (tag == Py_None) {
                item = message;
            } else {
                item = PyTuple_New(3);
                if (item == NULL) {
                    Py_DECREF(message);
                    return -1;
                }
                Py_INCREF(tag);
                PyTuple_SET_ITEM(item, 0, tag);
                Py_INCREF(event);
                PyTuple_SET_ITEM(item, 1, event);
                PyTuple_SET_ITEM(item, 2, message);  /* the tuple's reference now */
            }
            if (PyList_Append(messages, item) < 0) {
                Py_DECREF(item);
                return -1;
            }
            Py_DECREF(item);
            p = found + m;
        }
        return p - start;
    }

    /* Whether the first `probe` in `data` ends it: `data` is exactly one message. */
    static inline int prefork_tcp_one_message(PyObject *data, PyObject *probe) {
        Py_ssize_t n = PyBytes_GET_SIZE(data), m = PyBytes_GET_SIZE(probe);
        const char *d = PyBytes_AS_STRING(data);
        if (m == 0 || m > n)
            return 0;
        return prefork_tcp_find(d, d + n, PyBytes_AS_STRING(probe), (size_t)m) == d + n - m;
    }
    """
    Py_ssize_t cut "prefork_tcp_cut"(bytes data, bytes delim, list messages, Py_ssize_t *longest, object tag, object event) except -1
    bint one_message "prefork_tcp_one_message"(bytes data, bytes probe)
