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
        /* Its fields are an enum member, bytes and text: nothing that can lead back to it,
         * so no cycle for the garbage collector to find through it. */
        PyObject_GC_UnTrack(request);
        return request;
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
