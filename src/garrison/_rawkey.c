/* garrison._rawkey: the cache key of an ASGI request's client, in one pass over its header
 * list (see garrison/web/rawkey.py, which has the same function in Python and says why).
 *
 * key(headers, host, names) -> bytes | None
 * pick(headers, host, names) -> tuple | None: (host, *values), what the key encodes
 *
 * The key encodes the socket peer's host and the values of the headers in ``names`` (the last
 * of repeated ones wins), each part as 0x00 when absent or 0x01, its length in 4 bytes (little
 * endian) and its bytes. None when the input is not the plain shape servers build (a list or
 * tuple of (bytes, bytes) pairs as 2-tuples or 2-item lists, a host that is None or an ASCII
 * str, at most MAX_NAMES names of bytes, no part over 4 GiB): the caller then takes rawkey.py's
 * generic path, which gives the same key for the same values. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_NAMES 8

/* What one pass over a request's header list found. */
typedef struct {
    Py_ssize_t nnames;
    PyObject *host;  /* an ASCII str, or NULL for none (borrowed) */
    PyObject *value[MAX_NAMES];  /* borrowed from the header list, NULL when absent */
} Found;

/* Fill ``found`` from (headers, host, names): 1 when done, 0 when the input is not the plain
 * shape (the caller answers None), -1 on an error (set). */
static int
scan(PyObject *const *args, Py_ssize_t nargs, Found *found)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "takes exactly 3 arguments");
        return -1;
    }
    PyObject *headers = args[0], *host = args[1], *names = args[2];
    if (!(PyList_CheckExact(headers) || PyTuple_CheckExact(headers))
            || !PyTuple_CheckExact(names)) {
        return 0;
    }
    Py_ssize_t nnames = PyTuple_GET_SIZE(names);
    if (nnames > MAX_NAMES) {
        return 0;
    }
    const char *name_data[MAX_NAMES];
    Py_ssize_t name_len[MAX_NAMES];
    found->nnames = nnames;
    for (Py_ssize_t i = 0; i < nnames; i++) {
        PyObject *n = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_CheckExact(n)) {
            return 0;
        }
        name_data[i] = PyBytes_AS_STRING(n);
        name_len[i] = PyBytes_GET_SIZE(n);
        found->value[i] = NULL;
    }
    found->host = NULL;
    if (PyUnicode_Check(host)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(host) < 0) {  /* a no-op, and deprecated, from 3.12 on */
            return -1;
        }
#endif
        if (!PyUnicode_IS_ASCII(host)) {
            return 0;  /* rawkey.py encodes it (UTF-8), the same bytes for ASCII */
        }
        found->host = host;
    }  /* anything else is no host, as the engine reads it */
    /* The pass over the list: it only reads exact lists, tuples and bytes and calls nothing
     * that could run Python code, so nothing can change them while they are read. */
    Py_ssize_t count = PySequence_Fast_GET_SIZE(headers);  /* an exact list or tuple */
    PyObject **items = PySequence_Fast_ITEMS(headers);
    for (Py_ssize_t h = 0; h < count; h++) {
        PyObject *pair = items[h];
        /* a pair as a 2-tuple (uvicorn, most servers) or a 2-item list (the spec allows it) */
        if (!((PyTuple_CheckExact(pair) || PyList_CheckExact(pair))
              && PySequence_Fast_GET_SIZE(pair) == 2)) {
            return 0;
        }
        PyObject *n = PySequence_Fast_GET_ITEM(pair, 0);
        if (!PyBytes_CheckExact(n)) {
            if (PyBytes_Check(n)) {
                return 0;  /* a subclass of bytes: its own comparison, in Python */
            }
            continue;  /* not a header name: as a dict of the headers would miss it */
        }
        Py_ssize_t len = PyBytes_GET_SIZE(n);
        const char *data = PyBytes_AS_STRING(n);
        for (Py_ssize_t i = 0; i < nnames; i++) {
            if (len == name_len[i] && memcmp(data, name_data[i], (size_t)len) == 0) {
                PyObject *v = PySequence_Fast_GET_ITEM(pair, 1);
                if (PyBytes_CheckExact(v)) {
                    found->value[i] = v;
                } else if (PyBytes_Check(v)) {
                    return 0;
                } else {
                    found->value[i] = NULL;  /* not bytes: no value, as the engine reads it */
                }
                break;
            }
        }
    }
    return 1;
}

/* The answer when scan() did not fill its Found: the error it set (-1), or None (0). */
static PyObject *
unscanned(int done)
{
    if (done < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
key(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Found found;
    int done = scan(args, nargs, &found);
    if (done <= 0) {
        return unscanned(done);
    }
    Py_ssize_t nnames = found.nnames;
    const char *host_data = NULL;
    Py_ssize_t host_len = 0;
    if (found.host != NULL) {
        host_data = (const char *)PyUnicode_DATA(found.host);
        host_len = PyUnicode_GET_LENGTH(found.host);
    }
    Py_ssize_t size = host_data != NULL ? 5 + host_len : 1;
    for (Py_ssize_t i = 0; i < nnames; i++) {
        if (found.value[i] == NULL) {
            size += 1;
        } else {
            Py_ssize_t len = PyBytes_GET_SIZE(found.value[i]);
            if (len > 0xFFFFFFFFLL) {
                Py_RETURN_NONE;
            }
            size += 5 + len;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = -1; i < nnames; i++) {
        const char *data;
        Py_ssize_t len;
        if (i < 0) {
            data = host_data;
            len = host_len;
        } else if (found.value[i] != NULL) {
            data = PyBytes_AS_STRING(found.value[i]);
            len = PyBytes_GET_SIZE(found.value[i]);
        } else {
            data = NULL;
            len = 0;
        }
        if (data == NULL) {
            *p++ = 0;
            continue;
        }
        *p++ = 1;
        uint32_t n = (uint32_t)len;
        *p++ = (unsigned char)(n & 0xFF);
        *p++ = (unsigned char)((n >> 8) & 0xFF);
        *p++ = (unsigned char)((n >> 16) & 0xFF);
        *p++ = (unsigned char)((n >> 24) & 0xFF);
        if (len) {
            memcpy(p, data, (size_t)len);
            p += len;
        }
    }
    return out;
}

static PyObject *
pick(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Found found;
    int done = scan(args, nargs, &found);
    if (done <= 0) {
        return unscanned(done);
    }
    PyObject *out = PyTuple_New(1 + found.nnames);
    if (out == NULL) {
        return NULL;
    }
    PyObject *host = found.host != NULL ? found.host : Py_None;
    Py_INCREF(host);
    PyTuple_SET_ITEM(out, 0, host);
    for (Py_ssize_t i = 0; i < found.nnames; i++) {
        PyObject *v = found.value[i] != NULL ? found.value[i] : Py_None;
        Py_INCREF(v);
        PyTuple_SET_ITEM(out, 1 + i, v);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"key", (PyCFunction)(void (*)(void))key, METH_FASTCALL,
     "key(headers, host, names) -> bytes | None: the cache key of a request's client "
     "(garrison/web/rawkey.py)."},
    {"pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL,
     "pick(headers, host, names) -> tuple | None: (host, *values) as rawkey.pick() gives "
     "them, for the input key() takes (garrison/web/rawkey.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "garrison._rawkey",
    "The cache key of an ASGI request's client, in C (see garrison/web/rawkey.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__rawkey(void)
{
    return PyModule_Create(&module_def);
}
