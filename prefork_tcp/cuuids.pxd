# A UUID's text in the compiled core (uuids.py): written out in C from its 16 bytes, where
# the plain module makes a hex string and cuts and joins it with an f-string.

cdef extern from *:
    """
    /* The text of the version 4 UUID made of pool[pos:pos + 16], as str(uuid.UUID(bytes=...,
     * version=4)) writes it: the version nibble 4, the variant bits 10. */
    static inline PyObject *prefork_tcp_uuid_text(PyObject *pool, Py_ssize_t pos) {
        static const char digits[] = "0123456789abcdef";
        const unsigned char *raw;
        PyObject *text;
        Py_UCS1 *out;
        int i;
        if (pos < 0 || pos > PyBytes_GET_SIZE(pool) - 16) {
            PyErr_SetString(PyExc_ValueError, "a UUID needs 16 bytes of the pool");
            return NULL;
        }
        raw = (const unsigned char *)PyBytes_AS_STRING(pool) + pos;
        text = PyUnicode_New(36, 127);
        if (text == NULL)
            return NULL;
        out = PyUnicode_1BYTE_DATA(text);
        for (i = 0; i < 16; i++) {
            unsigned char byte = raw[i];
            if (i == 6)
                byte = (byte & 0x0f) | 0x40;  /* version 4 */
            else if (i == 8)
                byte = (byte & 0x3f) | 0x80;  /* variant: RFC 4122 */
            if (i == 4 || i == 6 || i == 8 || i == 10)
                *out++ = '-';
            *out++ = digits[byte >> 4];
            *out++ = digits[byte & 15];
        }
        return text;
    }
    """
    str uuid_text "prefork_tcp_uuid_text"(bytes pool, Py_ssize_t pos)
