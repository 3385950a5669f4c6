/* The search tree of a MaxMind DB (.mmdb) walked in C: address -> (record, prefix length).
 *
 * Why our own walker rather than maxminddb's: the record it returns is the tree's pointer into
 * the data section, which names the GeoIP record itself. Every network holding that record
 * gets the same geo decision, so the DNS server can keep one reply per record instead of one
 * per client subnet, and look the record up without the GIL's Python objects (see
 * dnsserver/_fastudp.c, which reaches this walker through the ``_C_API`` capsule). Records are
 * still decoded by maxminddb, once per record (gslb/geo.py).
 *
 * The format (MaxMind DB spec 2.0): a binary trie of ``node_count`` nodes, each two records of
 * 24, 28 or 32 bits (left for a 0 bit, right for a 1 bit). A record below ``node_count`` is the
 * next node; equal to it, "no data"; above it, a pointer into the data section. In an IPv6 tree
 * IPv4 addresses live under ::/96.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>

#include "_mmdb.h"

typedef struct {
    PyObject_HEAD
    Py_buffer view;          /* the whole file (or at least its tree), held for our lifetime */
    uint32_t node_count;
    unsigned record_size;    /* bits: 24, 28 or 32 */
    unsigned node_bytes;
    int ip_version;          /* 4 or 6 */
    uint32_t ipv4_start;     /* where IPv4 lookups begin in an IPv6 tree */
    unsigned ipv4_depth;     /* how many of the 96 leading zero bits that took (< 96: IPv4 is one leaf) */
} GeoTree;

static inline uint32_t read_record(const GeoTree *t, uint32_t node, int right) {
    const unsigned char *p = (const unsigned char *)t->view.buf + (size_t)node * t->node_bytes;
    switch (t->record_size) {
    case 24:
        p += right ? 3 : 0;
        return ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
    case 28:
        if (right)
            return ((uint32_t)(p[3] & 0x0F) << 24) | ((uint32_t)p[4] << 16) | ((uint32_t)p[5] << 8) | p[6];
        return ((uint32_t)(p[3] & 0xF0) << 20) | ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
    default:
        p += right ? 4 : 0;
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    }
}

static int tree_lookup(PyObject *self, const unsigned char *addr, int bits, uint32_t *value, int *prefix) {
    const GeoTree *t = (const GeoTree *)self;
    uint32_t node = 0;
    if (bits == 32 && t->ip_version == 6) {
        node = t->ipv4_start;
        if (t->ipv4_depth < 96) {  /* a leaf above ::/96 holds all of IPv4 */
            *value = node;
            *prefix = 0;
            return 0;
        }
    } else if (bits == 128 && t->ip_version == 4) {
        *value = t->node_count;  /* an IPv4-only database knows no IPv6 address */
        *prefix = 0;
        return 0;
    }
    int i = 0;
    while (i < bits && node < t->node_count) {
        int bit = (addr[i >> 3] >> (7 - (i & 7))) & 1;
        node = read_record(t, node, bit);
        i++;
    }
    if (node < t->node_count)
        return -1;  /* the tree is deeper than the address: not a valid database */
    *value = node;
    *prefix = i;
    return 0;
}

static int GeoTree_init(PyObject *op, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"data", "node_count", "record_size", "ip_version", NULL};
    GeoTree *self = (GeoTree *)op;
    PyObject *data;
    unsigned long node_count;
    unsigned record_size;
    int ip_version;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OkIi:GeoTree", kwlist, &data, &node_count, &record_size,
                                     &ip_version))
        return -1;
    if (record_size != 24 && record_size != 28 && record_size != 32) {
        PyErr_Format(PyExc_ValueError, "record size %u is not 24, 28 or 32", record_size);
        return -1;
    }
    if (ip_version != 4 && ip_version != 6) {
        PyErr_Format(PyExc_ValueError, "IP version %d is not 4 or 6", ip_version);
        return -1;
    }
    if (node_count == 0 || node_count > UINT32_MAX / 2) {
        PyErr_Format(PyExc_ValueError, "node count %lu out of range", node_count);
        return -1;
    }
    if (self->view.obj != NULL)
        PyBuffer_Release(&self->view);
    if (PyObject_GetBuffer(data, &self->view, PyBUF_SIMPLE) < 0)
        return -1;
    self->node_count = (uint32_t)node_count;
    self->record_size = record_size;
    self->node_bytes = record_size / 4;
    self->ip_version = ip_version;
    if ((size_t)self->view.len < (size_t)node_count * self->node_bytes) {
        PyErr_Format(PyExc_ValueError, "%zd bytes cannot hold a search tree of %lu nodes", self->view.len,
                     node_count);
        PyBuffer_Release(&self->view);
        return -1;
    }
    uint32_t node = 0;
    unsigned depth = 0;
    if (ip_version == 6)
        while (depth < 96 && node < self->node_count) {
            node = read_record(self, node, 0);
            depth++;
        }
    self->ipv4_start = node;
    self->ipv4_depth = depth;
    return 0;
}

static void GeoTree_dealloc(PyObject *op) {
    GeoTree *self = (GeoTree *)op;
    if (self->view.obj != NULL)
        PyBuffer_Release(&self->view);
    Py_TYPE(op)->tp_free(op);
}

PyDoc_STRVAR(lookup_doc,
"lookup(packed) -> (record, prefix)\n\n"
"Walk the tree for a packed IPv4 (4 bytes) or IPv6 (16 bytes) address. ``record`` is the\n"
"tree's value at the leaf: ``node_count`` when the database holds nothing for the address,\n"
"else the record's pointer (the same for every network sharing that record). ``prefix`` is\n"
"the leaf's depth in the address's own family (IPv4 counted in IPv4 bits).");

static PyObject *GeoTree_lookup(PyObject *self, PyObject *arg) {
    char *addr;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &addr, &len) < 0)
        return NULL;
    if (len != 4 && len != 16)
        return PyErr_Format(PyExc_ValueError, "a packed address is 4 or 16 bytes, not %zd", len);
    uint32_t value;
    int prefix;
    if (tree_lookup(self, (const unsigned char *)addr, (int)len * 8, &value, &prefix) < 0)
        return PyErr_Format(PyExc_ValueError, "corrupt search tree: no leaf after %zd bits", len * 8);
    return Py_BuildValue("(ki)", (unsigned long)value, prefix);
}

static PyMethodDef GeoTree_methods[] = {
    {"lookup", GeoTree_lookup, METH_O, lookup_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef GeoTree_members[] = {
    {"node_count", T_UINT, offsetof(GeoTree, node_count), READONLY, "the tree's value for 'no data'"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject GeoTreeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gslb._mmdb.GeoTree",
    .tp_doc = PyDoc_STR("GeoTree(data, node_count, record_size, ip_version): an .mmdb search tree."),
    .tp_basicsize = sizeof(GeoTree),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = GeoTree_init,
    .tp_dealloc = GeoTree_dealloc,
    .tp_methods = GeoTree_methods,
    .tp_members = GeoTree_members,
};

static gslb_mmdb_api api = {&GeoTreeType, tree_lookup};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mmdb", "MaxMind DB search-tree walker; see GeoTree.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mmdb(void) {
    if (PyType_Ready(&GeoTreeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *capsule = PyCapsule_New(&api, GSLB_MMDB_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&GeoTreeType);
    if (PyModule_AddObject(m, "GeoTree", (PyObject *)&GeoTreeType) < 0) {
        Py_DECREF(&GeoTreeType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
