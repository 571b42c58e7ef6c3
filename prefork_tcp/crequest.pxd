# Making a Request in the compiled core (api.py). ``Request(...)`` goes through its type's
# call and tuple's constructor, which build a tuple of the fields and copy it into the new
# object; this allocates the object and fills it, as that constructor does in the end.
#
# And reading a field: ``request.body`` through ``_tuplegetter``, the descriptor
# NamedTuple uses, is an attribute lookup the interpreter never specializes. ``field``
# makes a member descriptor for the same item instead, a read at a fixed offset, which the
# interpreter's inline cache turns into one load (LOAD_ATTR_SLOT). It does not look at the
# tuple's length: it is exact for a tuple of all five fields, which Request's constructors
# insist on (events.py); code that builds one with tuple.__new__ itself, or a crafted
# pickle, could make a shorter one, and reading its fields would read past it.

cdef extern from *:
    """
    #include <stddef.h>
    #include "structmember.h"

    /* Requests are made and dropped once per event: a few dropped ones are kept for the
     * next (as CPython keeps tuples), with their reference to their type, and the type's
     * deallocator is this module's (``keep_requests``). */
    #define PREFORK_TCP_KEPT_REQUESTS 16
    static PyTypeObject *prefork_tcp_request_type = NULL;  /* Request, once kept_requests ran */
    static PyTypeObject *prefork_tcp_event_type = NULL;    /* TcpEvent */
    static PyObject *prefork_tcp_kept[PREFORK_TCP_KEPT_REQUESTS];
    static int prefork_tcp_kept_count = 0;

    static inline PyObject *prefork_tcp_make_request(PyObject *type, PyObject *event, PyObject *body,
                                                     PyObject *server, PyObject *uuid, PyObject *remote) {
        PyTypeObject *tp = (PyTypeObject *)type;  /* Request: a tuple of five fields */
        PyObject *request;
        if (tp == prefork_tcp_request_type && prefork_tcp_kept_count > 0) {
            request = prefork_tcp_kept[--prefork_tcp_kept_count];  /* untracked, its type held */
            _Py_NewReference(request);
        } else {
            request = tp->tp_alloc(tp, 5);
            if (request == NULL)
                return NULL;
            /* Its fields are an enum member, bytes and text: nothing that can lead back to
             * it, so no cycle for the garbage collector to find through it. */
            PyObject_GC_UnTrack(request);
        }
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

    /* Drop a request's fields; keep it for the next, or free it. */
    static void prefork_tcp_request_free(PyObject *request) {
        PyTypeObject *tp = Py_TYPE(request);
        Py_ssize_t i = Py_SIZE(request);
        while (--i >= 0)
            Py_CLEAR(((PyTupleObject *)request)->ob_item[i]);
        if (tp == prefork_tcp_request_type && Py_SIZE(request) == 5 && prefork_tcp_kept_count < PREFORK_TCP_KEPT_REQUESTS) {
            prefork_tcp_kept[prefork_tcp_kept_count++] = request;
            return;
        }
        tp->tp_free(request);
        Py_DECREF(tp);  /* a heap type's instance holds its type */
    }

    /* Request's deallocator (and its subclasses' base one). Fields as the loop makes them
     * (an event, bytes, text) cannot lead to another object's deallocation in turn; any
     * others might, as deep as they are nested, so they go through CPython's trashcan,
     * which bounds the C stack that takes, as tuple's deallocator does. */
    static void prefork_tcp_request_dealloc(PyObject *request) {
        PyObject_GC_UnTrack(request);
        if (Py_SIZE(request) == 5
                && Py_TYPE(PyTuple_GET_ITEM(request, 0)) == prefork_tcp_event_type
                && PyBytes_CheckExact(PyTuple_GET_ITEM(request, 1))
                && PyUnicode_CheckExact(PyTuple_GET_ITEM(request, 2))
                && PyUnicode_CheckExact(PyTuple_GET_ITEM(request, 3))
                && PyUnicode_CheckExact(PyTuple_GET_ITEM(request, 4))) {
            prefork_tcp_request_free(request);
            return;
        }
        Py_TRASHCAN_BEGIN(request, prefork_tcp_request_dealloc)
        prefork_tcp_request_free(request);
        Py_TRASHCAN_END
    }

    /* Make `type` (Request) keep dropped instances for make_request; `event_type` is TcpEvent. */
    static inline int prefork_tcp_keep_requests(PyObject *type, PyObject *event_type) {
        if (!PyType_Check(type) || !PyType_Check(event_type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)
                || ((PyTypeObject *)type)->tp_base != &PyTuple_Type || ((PyTypeObject *)type)->tp_itemsize != sizeof(PyObject *)) {
            PyErr_SetString(PyExc_TypeError, "keep_requests takes a direct subclass of tuple, and the event type");
            return -1;
        }
        Py_INCREF(type);  /* for as long as the process: kept requests point to it */
        Py_INCREF(event_type);
        prefork_tcp_request_type = (PyTypeObject *)type;
        prefork_tcp_event_type = (PyTypeObject *)event_type;
        prefork_tcp_request_type->tp_dealloc = prefork_tcp_request_dealloc;
        return 0;
    }

    /* A read-only member descriptor of item `index` of the tuples of `type`, named `name`,
     * documented `doc`. Its definition lives as long as the process (as a type's do). */
    static inline PyObject *prefork_tcp_field(PyObject *type, PyObject *name, Py_ssize_t index, PyObject *doc) {
        const char *name_text = PyUnicode_AsUTF8(name), *doc_text = PyUnicode_AsUTF8(doc);
        PyMemberDef *member;
        PyObject *descriptor;
        char *copies;
        size_t name_size, doc_size;
        if (name_text == NULL || doc_text == NULL)
            return NULL;
        if (!PyType_Check(type)) {
            PyErr_SetString(PyExc_TypeError, "a field belongs to a type");
            return NULL;
        }
        if (index < 0 || index > 15) {
            PyErr_SetString(PyExc_ValueError, "field index out of range");
            return NULL;
        }
        name_size = strlen(name_text) + 1;
        doc_size = strlen(doc_text) + 1;
        member = (PyMemberDef *)PyMem_RawCalloc(1, sizeof(PyMemberDef) + name_size + doc_size);
        if (member == NULL)
            return PyErr_NoMemory();
        copies = (char *)(member + 1);
        memcpy(copies, name_text, name_size);
        memcpy(copies + name_size, doc_text, doc_size);
        member->name = copies;
        member->type = T_OBJECT_EX;
        member->offset = (Py_ssize_t)(offsetof(PyTupleObject, ob_item) + (size_t)index * sizeof(PyObject *));
        member->flags = READONLY;
        member->doc = copies + name_size;
        descriptor = PyDescr_NewMember((PyTypeObject *)type, member);
        if (descriptor == NULL)
            PyMem_RawFree(member);
        return descriptor;
    }
    """
    object make_request "prefork_tcp_make_request"(object request_type, object event, object body, object server, object uuid, object remote)
    object field "prefork_tcp_field"(object tuple_type, str name, Py_ssize_t index, str doc)
    int keep_requests "prefork_tcp_keep_requests"(object request_type, object event_type) except -1
