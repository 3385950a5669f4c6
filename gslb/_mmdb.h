/* What gslb._mmdb offers other extensions, through the capsule ``gslb._mmdb._C_API``. */
#ifndef GSLB_MMDB_H
#define GSLB_MMDB_H

#include <Python.h>
#include <stdint.h>

#define GSLB_MMDB_CAPSULE "gslb._mmdb._C_API"

typedef struct {
    PyTypeObject *tree_type;
    /* Walk ``tree`` (a tree_type instance) for ``bits`` (32 or 128) of ``addr``: the leaf value
     * (node_count: no data; above: the record's pointer) and its depth. -1: corrupt tree.
     * Touches no Python object, so it may run without the GIL while ``tree`` is kept alive. */
    int (*lookup)(PyObject *tree, const unsigned char *addr, int bits, uint32_t *value, int *prefix);
} gslb_mmdb_api;

#endif
