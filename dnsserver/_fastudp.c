/* The UDP answer loop in C: recvmmsg -> exact-cache lookup -> sendmmsg, one thread per socket.
 *
 * Why: on a cache hit the Python path (uvloop's datagram callback + UdpProtocol) costs about
 * 2 us of user time per packet, as much as the kernel's share. Here a batch of datagrams costs
 * one recvmmsg and one sendmmsg, and a hit costs a dict lookup without entering the
 * interpreter. Everything that is not a hit still goes to ``handler.handle`` (Python), which
 * does the parsing, the answering and the accounting, so both paths answer alike.
 *
 * The GIL is held only while a batch is answered; the system calls run without it, so the
 * event loop thread (TCP, HTTP, health checks, snapshot swaps) runs meanwhile.
 *
 * Located replies: a geo answer depends only on the GeoIP record the client's address leads to
 * (policies say so with VARY_LOCATION), so the handler keeps, per query shape (the query bytes
 * with the ECS address zeroed), one reply per record. Here a query of that shape is walked down
 * the GeoIP tree (gslb._mmdb, through its capsule) and answered with its record's reply, the
 * ECS address and scope written in: every client subnet hits, however many there are, and only
 * the first client of each record costs the Python path.
 *
 * Linux only (recvmmsg, sendmmsg). setup.py marks the extension optional: where it does not
 * build, dnsserver/fastudp.py falls back to the asyncio path.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "_mmdb.h"

/* The largest UDP payload: a datagram is never cut short, so handle() sees what the Python
 * path would see. Only the bytes a datagram fills are touched. */
#define SLOT_SIZE 65536
#define MAX_BATCH 1024
/* Under sustained load the socket is never empty, so the loop never blocks in poll() and never
 * sees the stop descriptor there: look at it every this many batches (and whenever idle). */
#define STOP_CHECK_EVERY 16
/* A full send buffer (EAGAIN) is waited for once per batch, this long; then the rest of the
 * batch is dropped, as the kernel drops what overflows a queue: falling behind on reading
 * would lose more. */
#define SEND_WAIT_MS 10

/* What serve() returns. recv_errors: errors read back from the socket (ICMP unreachable from
 * clients that went away, and the like); send_errors: replies that could not be sent;
 * internal_errors: datagrams dropped because Python failed (out of memory, a raising handler);
 * located_hits: the part of hits answered from a located reply. */
typedef struct {
    unsigned long long received, hits, located_hits, handled, sent, send_errors, recv_errors, internal_errors;
} counters;

/* One batch worth of buffers. Replies are sent straight from the bytes objects that hold them
 * (two iovecs: the query's ID, then the cached tail), so a hit copies nothing; ``keep`` holds a
 * reference to each such object until sendmmsg is done with it. */
typedef struct {
    unsigned batch;
    unsigned char *buffers;                 /* batch * SLOT_SIZE */
    struct sockaddr_storage *peers;         /* the senders, reused as reply addresses */
    struct iovec *rx_iov;
    struct mmsghdr *rx;
    unsigned char (*ids)[2];
    struct iovec *tx_iov;                   /* two per reply */
    struct mmsghdr *tx;
    PyObject **keep;
    unsigned pending;                       /* replies in tx waiting to be sent */
} batch_t;

static PyObject *str_exact_udp, *str_located_udp, *str_handle, *str_hits, *str_tail, *long_one;
static const gslb_mmdb_api *mmdb;  /* NULL when gslb._mmdb is not built: no located replies */

static void batch_free(batch_t *b) {
    PyMem_RawFree(b->buffers);
    PyMem_RawFree(b->peers);
    PyMem_RawFree(b->rx_iov);
    PyMem_RawFree(b->rx);
    PyMem_RawFree(b->ids);
    PyMem_RawFree(b->tx_iov);
    PyMem_RawFree(b->tx);
    PyMem_RawFree(b->keep);
}

static int batch_alloc(batch_t *b, unsigned batch) {
    memset(b, 0, sizeof(*b));
    b->batch = batch;
    b->buffers = PyMem_RawMalloc((size_t)batch * SLOT_SIZE);
    b->peers = PyMem_RawCalloc(batch, sizeof(*b->peers));
    b->rx_iov = PyMem_RawCalloc(batch, sizeof(*b->rx_iov));
    b->rx = PyMem_RawCalloc(batch, sizeof(*b->rx));
    b->ids = PyMem_RawCalloc(batch, sizeof(*b->ids));
    b->tx_iov = PyMem_RawCalloc(2 * (size_t)batch, sizeof(*b->tx_iov));
    b->tx = PyMem_RawCalloc(batch, sizeof(*b->tx));
    b->keep = PyMem_RawCalloc(batch, sizeof(*b->keep));
    if (!b->buffers || !b->peers || !b->rx_iov || !b->rx || !b->ids || !b->tx_iov || !b->tx || !b->keep) {
        batch_free(b);
        return -1;
    }
    for (unsigned i = 0; i < batch; i++) {
        b->rx_iov[i].iov_base = b->buffers + (size_t)i * SLOT_SIZE;
        b->rx_iov[i].iov_len = SLOT_SIZE;
        b->rx[i].msg_hdr.msg_iov = &b->rx_iov[i];
        b->rx[i].msg_hdr.msg_iovlen = 1;
        b->rx[i].msg_hdr.msg_name = &b->peers[i];
    }
    return 0;
}

/* Drop the references of replies already sent (GIL held). */
static void batch_release(batch_t *b) {
    for (unsigned i = 0; i < b->pending; i++)
        Py_CLEAR(b->keep[i]);
    b->pending = 0;
}

/* Queue one reply to the sender of datagram ``i``: ``head`` (may be NULL) then ``body``, whose
 * reference is stolen. */
static void queue_reply(batch_t *b, unsigned i, const unsigned char *head, PyObject *body) {
    unsigned n = b->pending++;
    struct iovec *iov = &b->tx_iov[2 * n];
    size_t iovlen = 0;
    if (head != NULL) {
        memcpy(b->ids[n], head, 2);
        iov[iovlen].iov_base = b->ids[n];
        iov[iovlen++].iov_len = 2;
    }
    iov[iovlen].iov_base = PyBytes_AS_STRING(body);
    iov[iovlen++].iov_len = (size_t)PyBytes_GET_SIZE(body);
    b->keep[n] = body;
    memset(&b->tx[n], 0, sizeof(b->tx[n]));
    b->tx[n].msg_hdr.msg_name = &b->peers[i];
    b->tx[n].msg_hdr.msg_namelen = b->rx[i].msg_hdr.msg_namelen;
    b->tx[n].msg_hdr.msg_iov = iov;
    b->tx[n].msg_hdr.msg_iovlen = iovlen;
}

/* Queue one reply to the sender of datagram ``i`` that was written over the datagram itself
 * (its ID is already in place), so nothing needs to be kept alive. */
static void queue_in_place(batch_t *b, unsigned i, size_t len) {
    unsigned n = b->pending++;
    struct iovec *iov = &b->tx_iov[2 * n];
    iov[0].iov_base = b->rx_iov[i].iov_base;
    iov[0].iov_len = len;
    b->keep[n] = NULL;
    memset(&b->tx[n], 0, sizeof(b->tx[n]));
    b->tx[n].msg_hdr.msg_name = &b->peers[i];
    b->tx[n].msg_hdr.msg_namelen = b->rx[i].msg_hdr.msg_namelen;
    b->tx[n].msg_hdr.msg_iov = iov;
    b->tx[n].msg_hdr.msg_iovlen = 1;
}

/* Queued errors (ICMP unreachable and the like, with IP_RECVERR set) would keep poll()
 * reporting POLLERR and fill the receive buffer's accounting: read them, count them, forget them. */
static void drain_errors(int fd, counters *c) {
    unsigned char scratch[512], control[512];
    for (int i = 0; i < 64; i++) {
        struct iovec iov = {scratch, sizeof(scratch)};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            return;
        c->recv_errors++;
    }
}

/* Send every queued reply (no GIL). One reply that cannot go (a bad address, an unreachable
 * client) is skipped and the rest still go; only a full send buffer drops the batch's rest. */
static void send_pending(int fd, batch_t *b, counters *c) {
    unsigned done = 0;
    int waited = 0, retried = 0;
    while (done < b->pending) {
        int n = sendmmsg(fd, b->tx + done, b->pending - done, MSG_DONTWAIT);
        if (n > 0) {
            done += (unsigned)n;
            c->sent += (unsigned)n;
            retried = 0;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            if (!waited) {
                struct pollfd p = {fd, POLLOUT, 0};
                waited = 1;
                (void)poll(&p, 1, SEND_WAIT_MS);
                continue;
            }
            c->send_errors += b->pending - done;
            return;
        }
        /* An error that belongs to an earlier packet (ECONNREFUSED from an ICMP error) is
         * reported once and consumed: try the same reply once more before skipping it. */
        if (!retried && n < 0 && errno != EINVAL && errno != EMSGSIZE) {
            retried = 1;
            drain_errors(fd, c);
            continue;
        }
        c->send_errors++;
        done++;
        retried = 0;
    }
}

static int stop_requested(int stop_fd) {
    struct pollfd p = {stop_fd, POLLIN, 0};
    return poll(&p, 1, 0) > 0 && p.revents != 0;
}

/* Sleep until the socket is readable (1) or the stop descriptor is (0); -1 with errno. */
static int wait_readable(int fd, int stop_fd, counters *c) {
    struct pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (poll(p, 2, -1) < 0)
        return -1;  /* EINTR: the caller checks for signals and comes back */
    if (p[1].revents)
        return 0;
    if (p[0].revents & POLLNVAL) {
        errno = EBADF;
        return -1;
    }
    if (p[0].revents & POLLERR)
        drain_errors(fd, c);
    return 1;
}

typedef struct {
    unsigned turn;  /* receives since the stop descriptor was last looked at */
    int drained;    /* the last receive emptied the queue: wait before the next one */
} rx_state;

/* Receive at least one datagram (no GIL): returns how many, 0 when asked to stop, -1 with
 * errno for EINTR or an error that means the socket itself is unusable. After a short batch
 * the queue is most likely empty, so poll() comes first: an idle server makes three system
 * calls per wake-up (poll, recvmmsg, sendmmsg), a busy one two per batch. */
static int receive(int fd, int stop_fd, batch_t *b, rx_state *st, counters *c) {
    for (;;) {
        if (st->drained) {
            int ready = wait_readable(fd, stop_fd, c);
            if (ready <= 0)
                return ready;
            st->turn = 0;
        } else if (++st->turn % STOP_CHECK_EVERY == 0 && stop_requested(stop_fd)) {
            return 0;
        }
        for (unsigned i = 0; i < b->batch; i++) {
            b->rx[i].msg_hdr.msg_namelen = sizeof(b->peers[i]);
            b->rx[i].msg_hdr.msg_flags = 0;
        }
        int n = recvmmsg(fd, b->rx, b->batch, MSG_DONTWAIT, NULL);
        if (n > 0) {
            st->drained = (unsigned)n < b->batch;
            return n;
        }
        if (n == 0)
            continue;
        switch (errno) {
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
            st->drained = 1;
            continue;
        case EINTR:
        case EBADF:
        case ENOTSOCK:
        case ENOTCONN:
        case EOPNOTSUPP:
        case EFAULT:
        case EINVAL:
            return -1;
        default:
            /* An asynchronous error of an earlier send (ECONNREFUSED, EHOSTUNREACH ...),
             * or a transient shortage (ENOMEM): nothing is wrong with the socket. */
            c->recv_errors++;
            drain_errors(fd, c);
            continue;
        }
    }
}

/* The handler's caches as this thread sees them: fetched lazily, dropped whenever Python code
 * ran (see answer()). */
typedef struct {
    PyObject *exact;    /* handler.exact_udp */
    PyObject *located;  /* handler.located_udp */
} caches_t;

static void drop_caches(caches_t *k) {
    Py_CLEAR(k->exact);
    Py_CLEAR(k->located);
}

/* Nothing in answer() fails but for lack of memory, or a handler that breaks its promise never
 * to raise: say so (the first time, then every 1000th) and go on with the next datagram. */
static void complain(PyObject *where, caches_t *k, counters *c) {
    drop_caches(k);  /* the hook runs Python code: see answer() */
    if (c->internal_errors++ % 1000 == 0)
        PyErr_WriteUnraisable(where);
    else
        PyErr_Clear();
}

/* Where a query keeps what a located reply needs from it. */
typedef struct {
    Py_ssize_t addr_at;  /* offset of the ECS address in the query; -1: no ECS with a source prefix */
    unsigned addr_len;   /* its bytes (source prefix rounded up) */
    int bits;            /* 32 or 128: the ECS family's address size */
    unsigned family, source;
} located_shape;

static inline unsigned be16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }

/* Whether ``d`` is a query of the plain shape located replies are kept for: one question with
 * an uncompressed name, nothing else but at most one OPT (version 0) whose options hold at most
 * one well-formed client subnet. Anything else goes to the handler, which knows every rule. */
static int parse_located(const unsigned char *d, Py_ssize_t len, located_shape *s) {
    if (len < 17 || (d[2] & 0x80) || ((d[2] >> 3) & 0x0F) != 0)
        return -1;
    if (be16(d + 4) != 1 || be16(d + 6) != 0 || be16(d + 8) != 0 || be16(d + 10) > 1)
        return -1;
    Py_ssize_t o = 12;
    unsigned name_len = 0;
    for (;;) {
        if (o >= len)
            return -1;
        unsigned label = d[o];
        if (label == 0)
            break;
        if (label > 63 || (name_len += label + 1) > 254)
            return -1;
        o += label + 1;
    }
    o += 1 + 4;
    s->addr_at = -1;
    s->addr_len = 0;
    s->bits = 0;
    s->family = s->source = 0;
    if (be16(d + 10) == 0)
        return o == len ? 0 : -1;
    if (o + 11 > len || d[o] != 0 || be16(d + o + 1) != 41 || d[o + 6] != 0)
        return -1;
    Py_ssize_t end = o + 11 + (Py_ssize_t)be16(d + o + 9);
    if (end != len)
        return -1;
    for (Py_ssize_t p = o + 11; p < end;) {
        if (p + 4 > end)
            return -1;
        unsigned code = be16(d + p), olen = be16(d + p + 2);
        if (p + 4 + (Py_ssize_t)olen > end)
            return -1;
        if (code == 8) {
            if (s->family != 0 || olen < 4)
                return -1;
            unsigned family = be16(d + p + 4), source = d[p + 6];
            int bits = family == 1 ? 32 : family == 2 ? 128 : 0;
            if (bits == 0 || source > (unsigned)bits || olen - 4 != (source + 7) / 8)
                return -1;
            if (source % 8 && (d[p + 8 + olen - 5] & (0xFF >> (source % 8))))
                return -1;  /* bits past the source prefix: FORMERR, the handler's business */
            s->family = family;
            s->source = source;
            if (source > 0) {
                s->addr_at = p + 8;
                s->addr_len = olen - 4;
                s->bits = bits;
            }
        }
        p += 4 + olen;
    }
    return 0;
}

/* The located-reply key of a query of that shape: its bytes after the ID, the ECS address
 * zeroed. New reference, or NULL (with an exception) when out of memory. */
static PyObject *located_key_of(const unsigned char *d, Py_ssize_t len, const located_shape *s) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)d + 2, len - 2);
    if (key != NULL && s->addr_at >= 0)
        memset(PyBytes_AS_STRING(key) + s->addr_at - 2, 0, s->addr_len);
    return key;
}

/* ``entry.tail`` (new reference), or NULL (no exception) when ``entry`` is not an Entry. */
static PyObject *tail_of(PyObject *entry) {
    PyObject *tail = PyObject_GetAttr(entry, str_tail);
    if (tail == NULL || !PyBytes_Check(tail)) {
        Py_XDECREF(tail);
        PyErr_Clear();
        return NULL;
    }
    return tail;
}

/* ``entry.hits += 1``: 0, or -1 (no exception) when ``entry`` is not an Entry. */
static int count_hit(PyObject *entry) {
    PyObject *hits = PyObject_GetAttr(entry, str_hits);
    PyObject *more = hits != NULL ? PyNumber_Add(hits, long_one) : NULL;
    int ok = more != NULL && PyObject_SetAttr(entry, str_hits, more) == 0;
    Py_XDECREF(hits);
    Py_XDECREF(more);
    if (!ok)
        PyErr_Clear();
    return ok ? 0 : -1;
}

/* The located reply for the query in ``data`` from ``entry`` (tree, {record: Entry}), written
 * over the query: its length, or 0 when there is none to give. */
static int located_reply(PyObject *entry, unsigned char *data, const located_shape *shape,
                         const struct sockaddr_storage *peer) {
    const located_shape s = *shape;
    PyObject *tree = PyTuple_GET_ITEM(entry, 0), *replies = PyTuple_GET_ITEM(entry, 1);
    if (!PyObject_TypeCheck(tree, mmdb->tree_type) || !PyDict_Check(replies))
        return 0;

    unsigned char addr[16] = {0};
    int bits;
    if (s.addr_at >= 0) {
        memcpy(addr, data + s.addr_at, s.addr_len);
        bits = s.bits;
    } else if (peer->ss_family == AF_INET) {
        memcpy(addr, &((const struct sockaddr_in *)peer)->sin_addr, 4);
        bits = 32;
    } else if (peer->ss_family == AF_INET6) {
        memcpy(addr, &((const struct sockaddr_in6 *)peer)->sin6_addr, 16);
        bits = 128;
    } else {
        return 0;
    }
    uint32_t record;
    int prefix;
    if (mmdb->lookup(tree, addr, bits, &record, &prefix) < 0)
        return 0;
    PyObject *rkey = PyLong_FromUnsignedLong(record);
    if (rkey == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *reply = PyDict_GetItemWithError(replies, rkey);
    Py_DECREF(rkey);
    if (reply == NULL) {
        PyErr_Clear();
        return 0;  /* the first client of this record: the handler answers and keeps the reply */
    }
    Py_INCREF(reply);  /* borrowed from a dict that another thread may change */
    PyObject *tail = tail_of(reply);
    if (tail == NULL) {
        Py_DECREF(reply);
        return 0;
    }
    const unsigned char *t = (const unsigned char *)PyBytes_AS_STRING(tail);
    Py_ssize_t tlen = PyBytes_GET_SIZE(tail);
    int fits = 2 + tlen <= SLOT_SIZE;
    if (fits && s.addr_at >= 0) {
        /* The reply ends with our ECS echo: code, length, family, source, scope, address. */
        Py_ssize_t a = tlen - (Py_ssize_t)s.addr_len;
        fits = a >= 8 && be16(t + a - 8) == 8 && be16(t + a - 4) == s.family && t[a - 2] == s.source;
    }
    if (!fits || count_hit(reply) < 0) {
        Py_DECREF(tail);
        Py_DECREF(reply);
        return 0;  /* not a reply this query's shape produces: the handler answers */
    }
    Py_DECREF(reply);
    memcpy(data + 2, t, (size_t)tlen);
    Py_DECREF(tail);
    if (s.addr_at >= 0) {
        unsigned char *a = data + 2 + tlen - s.addr_len;
        a[-1] = (unsigned char)prefix;
        memcpy(a, addr, s.addr_len);
    }
    return (int)(2 + tlen);
}

/* Answer datagram ``i`` from a located reply when there is one (GIL held): 1 when queued. The
 * reply is written over the datagram: ID kept, the record's reply after it, then the query's
 * ECS address and the scope (the depth of the record's network) written into its ECS echo. */
static int answer_located(PyObject *located, batch_t *b, unsigned i, counters *c) {
    unsigned char *data = b->rx_iov[i].iov_base;
    Py_ssize_t len = b->rx[i].msg_len;
    located_shape s;
    if (PyDict_GET_SIZE(located) == 0 || parse_located(data, len, &s) < 0)
        return 0;
    PyObject *key = located_key_of(data, len, &s);
    if (key == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *entry = PyDict_GetItemWithError(located, key);
    Py_DECREF(key);
    if (entry == NULL || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
        PyErr_Clear();
        return 0;
    }
    Py_INCREF(entry);  /* borrowed from a dict that another thread may change; holds tree and replies */
    int done = located_reply(entry, data, &s, &b->peers[i]);
    Py_DECREF(entry);
    if (done <= 0)
        return 0;
    queue_in_place(b, i, (size_t)done);
    c->hits++;
    c->located_hits++;
    return 1;
}


/* Answer datagram ``i`` from the caches, else through handler.handle (GIL held). The caches
 * are fetched lazily and dropped whenever Python code ran: a snapshot swap replaces them (and
 * folds the old ones' hit counters), and it can only happen while this thread runs Python code
 * or waits without the GIL, so a hit is never counted on a cache that was already folded. */
static void answer(PyObject *handler, caches_t *k, batch_t *b, unsigned i, counters *c) {
    const unsigned char *data = b->rx_iov[i].iov_base;
    Py_ssize_t len = b->rx[i].msg_len;

    /* A query shorter than a header is never in the cache; handle() counts it as dropped. */
    if (len >= 12) {
        if (k->exact == NULL && (k->exact = PyObject_GetAttr(handler, str_exact_udp)) == NULL)
            complain(handler, k, c);
        PyObject *key = NULL;
        if (k->exact != NULL && PyDict_CheckExact(k->exact)
                && (key = PyBytes_FromStringAndSize((const char *)data + 2, len - 2)) == NULL)
            complain(handler, k, c);
        if (key != NULL) {
            PyObject *entry = PyDict_GetItemWithError(k->exact, key);
            Py_DECREF(key);
            if (entry == NULL && PyErr_Occurred())
                PyErr_Clear();
            if (entry != NULL) {
                Py_INCREF(entry);  /* borrowed from a dict that another thread may change */
                /* A hit: the Python path's ``entry.hits += 1; send(data[:2] + entry.tail)``. */
                PyObject *tail = tail_of(entry);
                if (tail != NULL && count_hit(entry) < 0)
                    Py_CLEAR(tail);
                Py_DECREF(entry);
                if (tail != NULL) {
                    c->hits++;
                    queue_reply(b, i, data, tail);
                    return;
                }
            }
        }
        if (mmdb != NULL) {
            if (k->located == NULL && (k->located = PyObject_GetAttr(handler, str_located_udp)) == NULL)
                PyErr_Clear();  /* a handler without located replies */
            if (k->located != NULL && PyDict_CheckExact(k->located) && answer_located(k->located, b, i, c))
                return;
        }
    }

    char host[INET6_ADDRSTRLEN] = "";
    const struct sockaddr_storage *peer = &b->peers[i];
    if (peer->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, host, sizeof(host));
    else if (peer->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, host, sizeof(host));
    PyObject *query = PyBytes_FromStringAndSize((const char *)data, len);
    PyObject *client = PyUnicode_FromString(host);
    PyObject *reply = NULL;
    if (query != NULL && client != NULL)
        reply = PyObject_CallMethodObjArgs(handler, str_handle, query, client, NULL);
    Py_XDECREF(query);
    Py_XDECREF(client);
    drop_caches(k);
    c->handled++;
    if (reply == NULL)
        complain(handler, k, c);
    else if (PyBytes_Check(reply) && PyBytes_GET_SIZE(reply) > 0)
        queue_reply(b, i, NULL, reply);
    else
        Py_DECREF(reply);  /* None: no reply */
}

PyDoc_STRVAR(located_key_doc,
"located_key(query) -> bytes | None\n\n"
"The key under which ``handler.located_udp`` keeps the located replies for ``query``: its\n"
"bytes after the ID with the ECS address zeroed. None when the query is not of the plain\n"
"shape the UDP loop answers located replies for, or when gslb._mmdb is not built.");

static PyObject *located_key(PyObject *self, PyObject *arg) {
    (void)self;
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &data, &len) < 0)
        return NULL;
    located_shape s;
    if (mmdb == NULL || parse_located((const unsigned char *)data, len, &s) < 0)
        Py_RETURN_NONE;
    return located_key_of((const unsigned char *)data, len, &s);
}

static PyObject *counters_dict(const counters *c) {
    return Py_BuildValue("{sKsKsKsKsKsKsKsK}", "received", c->received, "hits", c->hits,
                         "located_hits", c->located_hits, "handled", c->handled,
                         "sent", c->sent, "send_errors", c->send_errors, "recv_errors", c->recv_errors,
                         "internal_errors", c->internal_errors);
}

PyDoc_STRVAR(serve_doc,
"serve(fd, handler, stop_fd, batch=32) -> dict\n\n"
"Answer the UDP socket ``fd`` until ``stop_fd`` (an eventfd or pipe) becomes readable:\n"
"cache hits from ``handler.exact_udp`` and ``handler.located_udp``, everything else through\n"
"``handler.handle(data, client)``.\n"
"Datagrams already read are answered before it returns. Returns counters (received, hits,\n"
"located_hits, handled, sent, send_errors, recv_errors, internal_errors); raises OSError when the socket\n"
"is unusable.");

static PyObject *serve(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"fd", "handler", "stop_fd", "batch", NULL};
    int fd, stop_fd;
    unsigned int batch = 32;
    PyObject *handler;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOi|I:serve", kwlist, &fd, &handler, &stop_fd, &batch))
        return NULL;
    if (batch < 1 || batch > MAX_BATCH)
        return PyErr_Format(PyExc_ValueError, "batch must be 1..%d", MAX_BATCH);

    batch_t b;
    if (batch_alloc(&b, batch) < 0)
        return PyErr_NoMemory();
    counters c = {0};
    rx_state st = {0, 0};
    int failed = 0, saved_errno = 0;
    caches_t caches = {NULL, NULL};
    for (;;) {
        int n;
        /* One GIL release per batch: send the previous batch's replies, then wait for the next. */
        Py_BEGIN_ALLOW_THREADS
        send_pending(fd, &b, &c);
        n = receive(fd, stop_fd, &b, &st, &c);
        saved_errno = errno;
        Py_END_ALLOW_THREADS
        batch_release(&b);
        if (n == 0)
            break;
        if (n < 0) {
            if (saved_errno == EINTR) {
                if (PyErr_CheckSignals() < 0) {  /* only ever true on the main thread */
                    failed = 1;
                    break;
                }
                continue;
            }
            errno = saved_errno;
            PyErr_SetFromErrno(PyExc_OSError);
            failed = 1;
            break;
        }
        c.received += (unsigned)n;
        for (unsigned i = 0; i < (unsigned)n; i++)
            answer(handler, &caches, &b, i, &c);
        drop_caches(&caches);  /* never held across a GIL release: see answer() */
    }
    batch_free(&b);
    return failed ? NULL : counters_dict(&c);
}

static PyMethodDef methods[] = {
    {"serve", (PyCFunction)(void (*)(void))serve, METH_VARARGS | METH_KEYWORDS, serve_doc},
    {"located_key", located_key, METH_O, located_key_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastudp",
    "Batched UDP answering (recvmmsg/sendmmsg) from the handler's exact-reply cache; see serve().",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastudp(void) {
    str_exact_udp = PyUnicode_InternFromString("exact_udp");
    str_located_udp = PyUnicode_InternFromString("located_udp");
    str_handle = PyUnicode_InternFromString("handle");
    str_hits = PyUnicode_InternFromString("hits");
    str_tail = PyUnicode_InternFromString("tail");
    long_one = PyLong_FromLong(1);
    if (!str_exact_udp || !str_located_udp || !str_handle || !str_hits || !str_tail || !long_one)
        return NULL;
    mmdb = PyCapsule_Import(GSLB_MMDB_CAPSULE, 0);
    if (mmdb == NULL)
        PyErr_Clear();  /* gslb._mmdb not built: exact-cache hits only */
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0
                      || PyModule_AddIntConstant(m, "LOCATED", mmdb != NULL) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
