# Making a Request in the compiled core (api.py). ``Request(...)`` goes through its type's
# call and tuple's constructor, which build a tuple of the fields and copy it into the new
# object; this allocates the object and fills it, as that constructor does in the end.

cdef extern from *:
    """
    static inline PyObject *prefork_tcp_make_request(PyObject *type, PyObject *event, PyObject *body,
                                                     PyObject *server, PyObject *uuid, PyObject *remote) {
        PyTypeObject *tp = (PyTypeObject *)type;  /* Request: a tuple of five fields */
        PyObject *request = tp->tp_alloc(tp, 5);
        if (request == NULL)
            return NULL;
    #if PY_VERSION_HEX >= 0x030E0000
        ((PyTupleObject *)request)->ob_hash = -1;  /* a tuple's cached hash: not computed yet */
    #endif
        Py_INCREF(event);
        PyTuple_SET_ITEM(request, 0, event);
        Py_INCREF(body);
        PyTuple_SET_ITEM(request, 1, body);
        Py_INCREF(server);
        PyTuple_SET_ITEM(request, 2, server);
        Py_INCREF(uuid);
        PyTuple_SET_ITEM(request, 3, uuid);
        Py_INCREF(remote);
        PyTuple_SET_ITEM(request, 4, remote);
        return request;
    }
    """
    object make_request "prefork_tcp_make_request"(object request_type, object event, object body, object server, object uuid, object remote)
