/* garrison._acyclic: take objects that can never be part of a reference cycle out of the
 * cyclic garbage collector (see garrison/acyclic.py for why and for the rule).
 *
 * Only objects whose deallocator copes with an untracked object are untracked: a type's
 * tp_dealloc must call the checked PyObject_GC_UnTrack (or re-track before the unchecked
 * _PyObject_GC_UNTRACK), or freeing an untracked object unlinks it from a list it is not in
 * and corrupts memory (CPython's own mappingproxy does that). Exact tuples and dicts qualify
 * (CPython untracks those itself), so does every class made by a class statement (its
 * tp_dealloc is subtype_dealloc), and so do the types passed to allow(): mypyc's generated
 * deallocators call PyObject_GC_UnTrack. Anything else is left tracked. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static destructor subtype_dealloc;  /* the tp_dealloc of classes made by a class statement */
static PyObject *allowed;           /* a set of further types whose deallocator qualifies */

static int
qualifies(PyTypeObject *tp)
{
    if (tp == &PyTuple_Type || tp == &PyDict_Type || tp->tp_dealloc == subtype_dealloc) {
        return 1;
    }
    int found = PySet_Contains(allowed, (PyObject *)tp);
    if (found < 0) {  /* a metaclass whose hash fails: not allowed, and no error left set */
        PyErr_Clear();
        return 0;
    }
    return found;
}

static PyObject *
untrack(PyObject *module, PyObject *obj)
{
    (void)module;
    if (PyObject_IS_GC(obj) && PyObject_GC_IsTracked(obj) && qualifies(Py_TYPE(obj))) {
        PyObject_GC_UnTrack(obj);
    }
    Py_INCREF(obj);
    return obj;
}

static int
check_type(PyObject *tp, const char *name)
{
    if (!PyType_Check(tp)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a type", name);
        return 0;
    }
    return 1;
}

static PyObject *
allow(PyObject *module, PyObject *tp)
{
    (void)module;
    if (!check_type(tp, "allow") || PySet_Add(allowed, tp) < 0) {
        return NULL;
    }
    Py_INCREF(tp);
    return tp;
}

static PyObject *
untrackable(PyObject *module, PyObject *tp)
{
    (void)module;
    if (!check_type(tp, "untrackable")) {
        return NULL;
    }
    return PyBool_FromLong(qualifies((PyTypeObject *)tp));
}

static PyMethodDef methods[] = {
    {"untrack", untrack, METH_O,
     "untrack(obj) -> obj\n\nStop the cyclic GC from tracking obj when its type allows it "
     "(reference counting still frees it). Only for objects that can never be part of a "
     "reference cycle."},
    {"allow", allow, METH_O,
     "allow(cls) -> cls\n\nLet untrack() untrack instances of cls, a type whose deallocator "
     "calls the checked PyObject_GC_UnTrack (mypyc's do)."},
    {"untrackable", untrackable, METH_O,
     "untrackable(cls) -> bool\n\nWhether untrack() untracks instances of cls."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "garrison._acyclic",
    "Objects kept out of the cyclic garbage collector.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__acyclic(void)
{
    PyObject *probe = PyObject_CallFunction((PyObject *)&PyType_Type, "s()N", "probe",
                                            PyDict_New());
    if (probe == NULL) {
        return NULL;
    }
    subtype_dealloc = ((PyTypeObject *)probe)->tp_dealloc;
    Py_DECREF(probe);
    allowed = PySet_New(NULL);
    if (allowed == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
