/* libfabric endpoints: setup, per-region registrations, one-sided ops, progress. */
#include <arpa/inet.h>
#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <rdma/fi_atomic.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>
#include <pthread.h>

#include "../common/common.h"
#include "xfer.h"

#define NET_FI_VERSION FI_VERSION(1, 17)
#define NET_CQ_DEPTH 1024

/*
 * libfabric's rxm (under tcp) posts FI_OFI_RXM_MSG_RX_SIZE receive buffers of 16 KiB and
 * zeroes them; with its default a client context holds ~87 MB and waits 55-110 ms before
 * its first transfer, with 16 ~36 MB and ~28 ms (docs/performance.md). The provider reads
 * the variable once, from the environment, and no fi_info attribute sets it; a library must
 * not setenv() (other threads of the application may be in getenv), so libxmem leaves it to
 * the program: a program's main sets FI_OFI_RXM_MSG_RX_SIZE=16 before any thread starts
 * (docs/performance.md, "Idle appliances and a bounded data endpoint").
 */

/*
 * Doorbell of a target over shm. shm's completion queue has no wait object, so an idle
 * target sleeps on a futex in a page of its own in /dev/shm (named after its endpoint, so
 * a client finds it from the address it was given) and a client that posts while it
 * sleeps rings it. Dekker-style: the target sets sleeping, fences, polls once more, then
 * waits on seq; a client posts (the command is in the target's queue when fi_* returns),
 * fences, and rings when it sees sleeping. Either the target's last poll sees the command
 * or the client sees sleeping. Anything not rung (a transfer's later segments) is still
 * served within the wait's timeout.
 */
#define NET_BELL_MAGIC 0x786d656d62656c6cull /* "xmembell" */
#define NET_BELL_SUFFIX ".bell"
#define NET_BELL_PEERS 1024 /* initiator: peers (fi_addr_t from 0) that can ring */

struct net_bell {
    _Atomic uint32_t seq;      /* futex word: bumped by every ring */
    _Atomic uint32_t sleeping; /* the target is (about to be) asleep on seq */
    uint64_t magic;
    _Atomic uint64_t rings;    /* statistics: rings seen */
};

struct net_bells {
    _Atomic(struct net_bell *) peer[NET_BELL_PEERS]; /* written once by net_peer_insert */
    pthread_mutex_t lock;                             /* serialises inserts only */
};

/* Target: receives posted so that messages sent to the data endpoint (the appliance never
 * needs one) are taken in and dropped at once instead of queued as unexpected without
 * bound by the provider (rxm keeps every unexpected message: +164 MB in a 6 s flood;
 * shm's unexpected queue holds ~1,000 and then stalls its command queue for every client).
 * rxm hands one message to a receive at a time and we post again after each completion:
 * a few large ones (larger than its 16 KiB eager messages, so none is cut into a protocol
 * error). shm matches up to its whole command queue (1,024) in one progress call: as many small
 * receives (a longer message is truncated and dropped all the same). */
#define NET_DRAIN_RXM_BUFS 4
#define NET_DRAIN_RXM_BUF 65536
#define NET_DRAIN_SHM_BUFS 512 /* of each kind: shm has 1,024 receive entries in all */
#define NET_DRAIN_SHM_BUF 256

typedef struct net_drain_slot {
    bool tagged;
    bool pending; /* not posted: the provider said EAGAIN; retried by the progress loop */
    uint8_t *buf;
} net_drain_slot_t;

/* Used by the progress thread only (after net_fabric_open). */
struct net_drain {
    net_drain_slot_t *slot; /* nslots: the first half untagged, the second tagged */
    size_t nslots;
    size_t buf_size;
    uint8_t *bufs;          /* nslots * buf_size */
    unsigned pending;       /* slots waiting to be posted again */
    uint64_t dropped;       /* messages taken in and dropped */
};

static long futex(_Atomic uint32_t *word, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)word, op, val, ts, NULL, 0);
}

static xm_status_t fi_fail(const char *what, int rc)
{
    xm_log_error("libfabric %s failed: %s (%d)", what, fi_strerror(-rc), rc);
    return XM_ERR_TRANSPORT;
}

/* The doorbell's name for an shm endpoint address we named (SHM_NAME_PREFIX...); false
 * for any other address. */
static bool bell_name(const uint8_t *addr, size_t len, char *out, size_t outlen)
{
    size_t n = strnlen((const char *)addr, len);
    if (n < 6 || n + sizeof(NET_BELL_SUFFIX) + 1 > outlen || memcmp(addr, "xmem-", 5) != 0) return false;
    for (size_t i = 0; i < n; i++) {
        char c = (char)addr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '.' || c == '-')) return false;
    }
    snprintf(out, outlen, "/%.*s" NET_BELL_SUFFIX, (int)n, (const char *)addr);
    return true;
}

static void bell_unlink(const net_fabric_t *fab)
{
    char name[XM_FABRIC_ADDR_MAX + 16];
    if (bell_name(fab->addr, fab->addr_len, name, sizeof(name))) shm_unlink(name);
}

/* Target: create, size and map our doorbell (0600: our user's processes only). */
static xm_status_t bell_create(net_fabric_t *fab)
{
    char name[XM_FABRIC_ADDR_MAX + 16];
    if (!bell_name(fab->addr, fab->addr_len, name, sizeof(name))) {
        xm_log_error("shm endpoint name is not ours; no doorbell");
        return XM_ERR_TRANSPORT;
    }
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        xm_log_error("cannot create the doorbell %s: %m", name);
        return XM_ERR_IO;
    }
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)sizeof(struct net_bell)) == 0) {
        p = mmap(NULL, sizeof(struct net_bell), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    close(fd);
    if (p == MAP_FAILED) {
        xm_log_error("cannot map the doorbell %s: %m", name);
        shm_unlink(name);
        return XM_ERR_IO;
    }
    fab->bell = p;
    fab->bell->magic = NET_BELL_MAGIC;
    return XM_OK;
}

/* Initiator: map peer's doorbell, if it has one (an appliance of an older build has none:
 * it naps instead and needs no ring). */
static void bell_attach(net_fabric_t *fab, const uint8_t *addr, size_t len, fi_addr_t peer)
{
    char name[XM_FABRIC_ADDR_MAX + 16];
    if (fab->bells == NULL || peer >= NET_BELL_PEERS || !bell_name(addr, len, name, sizeof(name))) {
        xm_log_debug("shm peer %llu: no doorbell to look for", (unsigned long long)peer);
        return;
    }
    pthread_mutex_lock(&fab->bells->lock);
    if (atomic_load(&fab->bells->peer[peer]) != NULL) goto out;
    int fd = shm_open(name, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) goto out;
    struct stat st;
    void *p = MAP_FAILED;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
        (size_t)st.st_size >= sizeof(struct net_bell)) {
        p = mmap(NULL, sizeof(struct net_bell), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    close(fd);
    if (p == MAP_FAILED) goto out;
    if (((struct net_bell *)p)->magic != NET_BELL_MAGIC) {
        munmap(p, sizeof(struct net_bell));
        goto out;
    }
    atomic_store(&fab->bells->peer[peer], (struct net_bell *)p);
    xm_log_debug("shm peer %llu: doorbell %s", (unsigned long long)peer, name);
out:
    pthread_mutex_unlock(&fab->bells->lock);
}

/* Initiator: after a post to peer, wake it if it sleeps. */
static inline void bell_ring(net_fabric_t *fab, fi_addr_t peer)
{
    if (fab->bells == NULL || peer >= NET_BELL_PEERS) return;
    struct net_bell *b = atomic_load_explicit(&fab->bells->peer[peer], memory_order_acquire);
    if (b == NULL) return;
    atomic_thread_fence(memory_order_seq_cst); /* our command is in its queue before we look */
    if (atomic_load_explicit(&b->sleeping, memory_order_relaxed) == 0) return;
    atomic_fetch_add_explicit(&b->seq, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->rings, 1, memory_order_relaxed);
    futex(&b->seq, FUTEX_WAKE, 1, NULL);
}

/* Target: post one drain receive. */
static int drain_post(net_fabric_t *fab, net_drain_slot_t *slot)
{
    if (slot->tagged) {
        return (int)fi_trecv(fab->ep, slot->buf, fab->drain->buf_size, NULL, FI_ADDR_UNSPEC, 0,
                             ~0ull, slot);
    }
    return (int)fi_recv(fab->ep, slot->buf, fab->drain->buf_size, NULL, FI_ADDR_UNSPEC, slot);
}

static xm_status_t drain_start(net_fabric_t *fab)
{
    bool shm = strcmp(fab->provider, "shm") == 0;
    struct net_drain *d = calloc(1, sizeof(*d));
    if (d == NULL) return XM_ERR_NO_MEMORY;
    fab->drain = d;
    d->nslots = 2 * (shm ? NET_DRAIN_SHM_BUFS : NET_DRAIN_RXM_BUFS);
    d->buf_size = shm ? NET_DRAIN_SHM_BUF : NET_DRAIN_RXM_BUF;
    d->slot = calloc(d->nslots, sizeof(*d->slot));
    d->bufs = malloc(d->nslots * d->buf_size);
    if (d->slot == NULL || d->bufs == NULL) return XM_ERR_NO_MEMORY;
    for (size_t i = 0; i < d->nslots; i++) {
        net_drain_slot_t *slot = &d->slot[i];
        slot->tagged = i >= d->nslots / 2;
        slot->buf = d->bufs + i * d->buf_size;
        if ((fab->info->caps & FI_TAGGED) == 0 && slot->tagged) continue;
        int rc = drain_post(fab, slot);
        if (rc != 0) return fi_fail(slot->tagged ? "fi_trecv" : "fi_recv", rc);
    }
    return XM_OK;
}

/* Target: is this completion one of the drain's receives? Then post it again. */
static bool drain_done(net_fabric_t *fab, void *ctx)
{
    struct net_drain *d = fab->drain;
    if (d == NULL || (uintptr_t)ctx < (uintptr_t)&d->slot[0] ||
        (uintptr_t)ctx >= (uintptr_t)&d->slot[d->nslots]) {
        return false;
    }
    net_drain_slot_t *slot = ctx;
    d->dropped++;
    if ((d->dropped & (d->dropped - 1)) == 0) {
        xm_log_warn("data endpoint: dropped %llu message(s) sent to it (it takes none)",
                    (unsigned long long)d->dropped);
    }
    int rc = drain_post(fab, slot);
    if (rc == -FI_EAGAIN) {
        slot->pending = true;
        d->pending++;
    } else if (rc != 0) {
        xm_log_error("data endpoint: cannot post a receive again: %s", fi_strerror(-rc));
    }
    return true;
}

/* Target: post again the drain receives the provider refused for a moment. */
static void drain_retry(net_fabric_t *fab)
{
    struct net_drain *d = fab->drain;
    for (size_t i = 0; i < d->nslots && d->pending > 0; i++) {
        if (d->slot[i].pending && drain_post(fab, &d->slot[i]) != -FI_EAGAIN) {
            d->slot[i].pending = false;
            d->pending--;
        }
    }
}

void net_fabric_close(net_fabric_t *fab)
{
    if (fab->ep != NULL) fi_close(&fab->ep->fid);
    if (fab->drain != NULL) {
        free(fab->drain->slot);
        free(fab->drain->bufs);
        free(fab->drain);
    }
    if (fab->bell != NULL) {
        bell_unlink(fab);
        munmap(fab->bell, sizeof(*fab->bell));
    }
    if (fab->bells != NULL) {
        for (size_t i = 0; i < NET_BELL_PEERS; i++) {
            struct net_bell *b = atomic_load(&fab->bells->peer[i]);
            if (b != NULL) munmap(b, sizeof(*b));
        }
        pthread_mutex_destroy(&fab->bells->lock);
        free(fab->bells);
    }
    if (fab->rma_cntr != NULL) fi_close(&fab->rma_cntr->fid);
    if (fab->av != NULL) fi_close(&fab->av->fid);
    if (fab->cq != NULL) fi_close(&fab->cq->fid);
    if (fab->domain != NULL) fi_close(&fab->domain->fid);
    if (fab->fabric != NULL) fi_close(&fab->fabric->fid);
    if (fab->info != NULL) fi_freeinfo(fab->info);
    memset(fab, 0, sizeof(*fab));
    fab->wait_fd = -1;
}

/* The shm endpoints' names: SHM_NAME_PREFIX PID "." NONCE, a file each in /dev/shm. */
#define SHM_NAME_PREFIX "xmem-"

/* Remove the /dev/shm files of our endpoints whose process is gone (killed before it
 * could close them). Only names we give, and only when the pid is not running. */
static void shm_reap_stale(void)
{
    DIR *d = opendir("/dev/shm");
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, SHM_NAME_PREFIX, strlen(SHM_NAME_PREFIX)) != 0) continue;
        char *end;
        long pid = strtol(e->d_name + strlen(SHM_NAME_PREFIX), &end, 10);
        if (pid > 0 && *end == '.' && kill((pid_t)pid, 0) != 0 && errno == ESRCH) shm_unlink(e->d_name);
    }
    closedir(d);
}

xm_status_t net_fabric_open(const char *provider, net_role_t role, const char *host,
                            const char *service, net_fabric_t *fab)
{
    memset(fab, 0, sizeof(*fab));
    fab->wait_fd = -1;
    bool is_tcp = strcmp(provider, "tcp") == 0;
    if (!is_tcp && strcmp(provider, "shm") != 0) {
        xm_log_error("unknown provider '%s' (use tcp or shm)", provider);
        return XM_ERR_INVALID;
    }
    snprintf(fab->provider, sizeof(fab->provider), "%s", provider);
    bool target = role == NET_ROLE_TARGET;

    struct fi_info *hints = fi_allocinfo();
    if (hints == NULL) {
        return XM_ERR_NO_MEMORY;
    }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_ATOMIC;
    if (target) {
        hints->caps |= FI_MSG | FI_TAGGED; /* only to take in and drop what peers send */
    }
    if (target && !is_tcp) {
        hints->caps |= FI_RMA_EVENT; /* lets the progress loop see remote accesses */
    }
    hints->mode = 0;
    /* no FI_MR_VIRT_ADDR (offsets, checked by shm too), no FI_MR_PROV_KEY (we pick keys) */
    hints->domain_attr->mr_mode = 0;
    hints->domain_attr->threading = FI_THREAD_SAFE;
    hints->fabric_attr->prov_name = strdup(provider);
    if (is_tcp) {
        hints->addr_format = FI_SOCKADDR_IN;
    }
    const char *node = target && is_tcp ? host : NULL;
    const char *svc = target && is_tcp && service != NULL && strcmp(service, "0") != 0 ? service : NULL;
    int rc = fi_getinfo(NET_FI_VERSION, node, svc, node != NULL ? FI_SOURCE : 0, hints, &fab->info);
    fi_freeinfo(hints);
    xm_status_t status;
    if (rc != 0) {
        status = fi_fail("fi_getinfo", rc);
        goto err;
    }
    fab->max_msg = fab->info->ep_attr->max_msg_size;
    fab->tx_depth = XM_MIN(fab->info->tx_attr->size, 256u);
    if (fab->tx_depth == 0) {
        fab->tx_depth = 64;
    }
    rc = fi_fabric(fab->info->fabric_attr, &fab->fabric, NULL);
    if (rc != 0) {
        status = fi_fail("fi_fabric", rc);
        goto err;
    }
    rc = fi_domain(fab->fabric, fab->info, &fab->domain, NULL);
    if (rc != 0) {
        status = fi_fail("fi_domain", rc);
        goto err;
    }
    struct fi_cq_attr cq_attr = {.size = NET_CQ_DEPTH, .format = FI_CQ_FORMAT_CONTEXT,
                                 .wait_obj = target && is_tcp ? FI_WAIT_FD : FI_WAIT_NONE};
    rc = fi_cq_open(fab->domain, &cq_attr, &fab->cq, NULL);
    if (rc != 0) {
        status = fi_fail("fi_cq_open", rc);
        goto err;
    }
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE};
    rc = fi_av_open(fab->domain, &av_attr, &fab->av, NULL);
    if (rc != 0) {
        status = fi_fail("fi_av_open", rc);
        goto err;
    }
    rc = fi_endpoint(fab->domain, fab->info, &fab->ep, NULL);
    if (rc != 0) {
        status = fi_fail("fi_endpoint", rc);
        goto err;
    }
    rc = fi_ep_bind(fab->ep, &fab->cq->fid, FI_TRANSMIT | FI_RECV);
    if (rc == 0) rc = fi_ep_bind(fab->ep, &fab->av->fid, 0);
    if (rc != 0) {
        status = fi_fail("fi_ep_bind", rc);
        goto err;
    }
    if (target && (fab->info->caps & FI_RMA_EVENT)) {
        struct fi_cntr_attr cntr_attr = {.events = FI_CNTR_EVENTS_COMP, .wait_obj = FI_WAIT_NONE};
        if (fi_cntr_open(fab->domain, &cntr_attr, &fab->rma_cntr, NULL) == 0 &&
            fi_ep_bind(fab->ep, &fab->rma_cntr->fid, FI_REMOTE_READ | FI_REMOTE_WRITE) != 0) {
            fi_close(&fab->rma_cntr->fid);
            fab->rma_cntr = NULL;
        }
    }
    if (!is_tcp) {
        /* shm names its region in /dev/shm "PID:EP:DOMAIN" by default: a process killed with
         * -9 leaves its file, and a later process given the same pid cannot enable an
         * endpoint (EBUSY). Our own unique name, and the files of our dead processes go. */
        shm_reap_stale();
        char name[64];
        uint64_t nonce;
        rpc_random(&nonce, sizeof(nonce));
        snprintf(name, sizeof(name), SHM_NAME_PREFIX "%d.%016llx", (int)getpid(),
                 (unsigned long long)nonce);
        rc = fi_setname(&fab->ep->fid, name, strlen(name) + 1);
        if (rc != 0) {
            status = fi_fail("fi_setname", rc);
            goto err;
        }
    }
    rc = fi_enable(fab->ep);
    if (rc != 0) {
        status = fi_fail("fi_enable", rc);
        goto err;
    }
    fab->addr_len = sizeof(fab->addr);
    rc = fi_getname(&fab->ep->fid, fab->addr, &fab->addr_len);
    if (rc != 0) {
        status = fi_fail("fi_getname", rc);
        goto err;
    }
    if (target && is_tcp) {
        rc = fi_control(&fab->cq->fid, FI_GETWAIT, &fab->wait_fd);
        if (rc != 0) {
            fab->wait_fd = -1;
        }
    }
    if (target) {
        status = drain_start(fab);
        if (status != XM_OK) goto err;
    }
    if (target && !is_tcp) {
        status = bell_create(fab);
        if (status != XM_OK) goto err;
    }
    if (!target && !is_tcp) {
        fab->bells = calloc(1, sizeof(*fab->bells));
        if (fab->bells == NULL) {
            status = XM_ERR_NO_MEMORY;
            goto err;
        }
        pthread_mutex_init(&fab->bells->lock, NULL);
    }
    xm_log_debug("fabric open: provider %s, max message %zu, tx depth %zu",
                 fab->info->fabric_attr->prov_name, fab->max_msg, fab->tx_depth);
    return XM_OK;

err:
    net_fabric_close(fab);
    return status;
}

xm_status_t net_mr_reg(net_fabric_t *fab, void *addr, size_t len, xm_access_t access,
                       struct fid_mr **mr_p, uint64_t *key_p)
{
    uint64_t rights = FI_REMOTE_READ;
    if (access == XM_ACCESS_READ_WRITE) {
        rights |= FI_REMOTE_WRITE;
    }
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t key;
        rpc_random(&key, sizeof(key));
        struct fid_mr *mr;
        int rc = fi_mr_reg(fab->domain, addr, len, rights, 0, key, 0, &mr, NULL);
        if (rc == -FI_ENOKEY) {
            continue; /* duplicate key: draw again */
        }
        if (rc != 0) {
            return fi_fail("fi_mr_reg", rc);
        }
        *mr_p = mr;
        *key_p = key;
        return XM_OK;
    }
    xm_log_error("no free registration key after 8 random draws");
    return XM_ERR_TRANSPORT;
}

void net_mr_close(struct fid_mr *mr)
{
    if (mr != NULL) {
        fi_close(&mr->fid);
    }
}

xm_status_t net_peer_insert(net_fabric_t *fab, const uint8_t *addr, size_t len,
                            const struct sockaddr *ctrl_peer, fi_addr_t *peer_p)
{
    uint8_t name[XM_FABRIC_ADDR_MAX];
    if (len == 0 || len > sizeof(name)) {
        return XM_ERR_PROTOCOL;
    }
    memcpy(name, addr, len);
    if (fab->info->addr_format == FI_SOCKADDR_IN) {
        if (len != sizeof(struct sockaddr_in)) {
            return XM_ERR_PROTOCOL;
        }
        struct sockaddr_in *sin = (struct sockaddr_in *)name;
        if (sin->sin_family != AF_INET) {
            return XM_ERR_PROTOCOL;
        }
        /* an appliance bound to 0.0.0.0 is reached where its control socket was */
        if (sin->sin_addr.s_addr == htonl(INADDR_ANY) && ctrl_peer != NULL &&
            ctrl_peer->sa_family == AF_INET) {
            sin->sin_addr = ((const struct sockaddr_in *)ctrl_peer)->sin_addr;
        }
    }
    fi_addr_t peer;
    int rc = fi_av_insert(fab->av, name, 1, &peer, 0, NULL);
    if (rc != 1) {
        xm_log_error("cannot resolve the appliance's data address (fi_av_insert: %d)", rc);
        return XM_ERR_PROTOCOL;
    }
    bell_attach(fab, name, len, peer);
    *peer_p = peer;
    return XM_OK;
}

static xm_status_t post_status(const char *what, ssize_t rc)
{
    if (rc == 0) {
        return XM_OK;
    }
    if (rc == -FI_EAGAIN) {
        return XM_ERR_AGAIN;
    }
    xm_log_debug("%s: %s", what, fi_strerror((int)-rc));
    return rc == -FI_ENOTCONN || rc == -FI_ECONNRESET ? XM_ERR_DISCONNECTED : XM_ERR_TRANSPORT;
}

/* A post's status; a post to a sleeping shm peer wakes it, and so does one its full queue
 * refused (it has work). */
static xm_status_t posted(net_fabric_t *fab, fi_addr_t peer, const char *what, ssize_t rc)
{
    if (rc == 0 || rc == -FI_EAGAIN) bell_ring(fab, peer);
    return post_status(what, rc);
}

xm_status_t net_post_read(net_fabric_t *fab, fi_addr_t peer, void *buf, size_t len,
                          uint64_t raddr, uint64_t key, void *ctx)
{
    return posted(fab, peer, "fi_read", fi_read(fab->ep, buf, len, NULL, peer, raddr, key, ctx));
}

xm_status_t net_post_write(net_fabric_t *fab, fi_addr_t peer, const void *buf, size_t len,
                           uint64_t raddr, uint64_t key, void *ctx)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct fi_rma_iov rma = {.addr = raddr, .len = len, .key = key};
    struct fi_msg_rma msg = {.msg_iov = &iov, .desc = NULL, .iov_count = 1, .addr = peer,
                             .rma_iov = &rma, .rma_iov_count = 1, .context = ctx};
    /* acknowledged means in the appliance's memory, and a refused write is an error */
    return posted(fab, peer, "fi_writemsg", fi_writemsg(fab->ep, &msg, FI_DELIVERY_COMPLETE | FI_COMPLETION));
}

xm_status_t net_post_fetch_add(net_fabric_t *fab, fi_addr_t peer, const uint64_t *operand,
                               uint64_t *result, uint64_t raddr, uint64_t key, void *ctx)
{
    return posted(fab, peer, "fi_fetch_atomic",
                       fi_fetch_atomic(fab->ep, operand, 1, NULL, result, NULL, peer, raddr, key,
                                       FI_UINT64, FI_SUM, ctx));
}

xm_status_t net_post_cswap(net_fabric_t *fab, fi_addr_t peer, const uint64_t *desired,
                           const uint64_t *expected, uint64_t *result, uint64_t raddr,
                           uint64_t key, void *ctx)
{
    return posted(fab, peer, "fi_compare_atomic",
                       fi_compare_atomic(fab->ep, desired, 1, NULL, expected, NULL, result, NULL,
                                         peer, raddr, key, FI_UINT64, FI_CSWAP, ctx));
}

static xm_status_t err_status(int err)
{
    switch (err) {
    case FI_ECANCELED:
    case FI_EACCES:
    case FI_EKEYREJECTED:
    case FI_EINVAL:
    case FI_EPERM:
        return XM_ERR_ACCESS;
    case FI_ENOTCONN:
    case FI_ECONNRESET:
    case FI_ECONNREFUSED:
    case FI_ECONNABORTED:
    case EPIPE:
    case FI_EIO:
    case FI_EHOSTUNREACH:
    case FI_ENETUNREACH:
        return XM_ERR_DISCONNECTED;
    case FI_ETIMEDOUT:
        return XM_ERR_TIMEOUT;
    default:
        return XM_ERR_TRANSPORT;
    }
}

int net_poll(net_fabric_t *fab, net_completion_t *out, int max)
{
    struct fi_cq_entry entries[16];
    int got = 0;
    while (got < max) {
        ssize_t n = fi_cq_read(fab->cq, entries, (size_t)XM_MIN(max - got, 16));
        if (n > 0) {
            for (ssize_t i = 0; i < n; i++) {
                out[got].ctx = entries[i].op_context;
                out[got].status = XM_OK;
                out[got].err = 0;
                got++;
            }
            continue;
        }
        if (n == -FI_EAVAIL) {
            struct fi_cq_err_entry e;
            memset(&e, 0, sizeof(e));
            if (fi_cq_readerr(fab->cq, &e, 0) != 1) {
                break; /* nothing readable after all: try again next round */
            }
            out[got].ctx = e.op_context;
            out[got].err = e.err;
            out[got].status = err_status(e.err);
            xm_log_debug("operation failed: %s", fi_strerror(e.err));
            got++;
            continue;
        }
        if (n < 0 && n != -FI_EAGAIN) {
            /* the queue itself failed: report it as an error naming no operation,
             * so the caller marks the endpoint broken */
            xm_log_debug("fi_cq_read: %s", fi_strerror((int)-n));
            out[got].ctx = NULL;
            out[got].err = (int)-n;
            out[got].status = XM_ERR_TRANSPORT;
            got++;
        }
        break;
    }
    return got;
}

/* shm: after the spin, naps this long before sleeping on the doorbell (a large transfer's
 * later segments are not rung; the naps keep them moving between a client's polls) */
#define NET_NAP_PHASE_NS 20000000ull
#define NET_NAP_NS 20000L
/* shm: an asleep target still polls this often (what nothing rang: see net_bell) */
#define NET_BELL_WAIT_NS 100000000L

/* Target: one round of progress; true when it showed activity (a completion, a remote
 * access counted). Drain receives are posted again here. */
static bool progress_round(net_fabric_t *fab, uint64_t *last_cntr)
{
    net_completion_t c[16];
    int n = net_poll(fab, c, 16); /* drives progress; errors are logged by the provider */
    for (int i = 0; i < n; i++) {
        drain_done(fab, c[i].ctx);
    }
    if (fab->drain != NULL && fab->drain->pending > 0) {
        drain_retry(fab);
    }
    bool active = n > 0;
    if (fab->rma_cntr != NULL) {
        uint64_t v = fi_cntr_read(fab->rma_cntr);
        if (v != *last_cntr) {
            *last_cntr = v;
            active = true;
        }
    }
    return active;
}

/* shm target: sleep on the doorbell until rung or NET_BELL_WAIT_NS; true when rung or
 * when the last look before sleeping found work. */
static bool bell_sleep(net_fabric_t *fab, uint64_t *last_cntr)
{
    struct net_bell *b = fab->bell;
    uint32_t seq = atomic_load_explicit(&b->seq, memory_order_relaxed);
    atomic_store_explicit(&b->sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* sleeping is visible before our last look */
    bool woke = progress_round(fab, last_cntr);
    if (!woke) {
        struct timespec ts = {0, NET_BELL_WAIT_NS};
        futex(&b->seq, FUTEX_WAIT, seq, &ts); /* not FUTEX_PRIVATE: clients are other processes */
        woke = atomic_load_explicit(&b->seq, memory_order_relaxed) != seq;
    }
    atomic_store_explicit(&b->sleeping, 0, memory_order_relaxed);
    return woke;
}

void net_progress_run(net_fabric_t *fab, const net_progress_opts_t *opts, atomic_int *stop,
                      int stop_fd)
{
    const uint64_t spin_ns = (uint64_t)opts->spin_us * 1000ull;
    uint64_t last_active = xm__now_ns();
    uint64_t last_cntr = fab->rma_cntr != NULL ? fi_cntr_read(fab->rma_cntr) : 0;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* 1 µs: idle naps stay short */
    unsigned iter = 0;
    bool prev_long = false;
    while (!atomic_load_explicit(stop, memory_order_relaxed)) {
        uint64_t before = xm__now_ns();
        bool active = progress_round(fab, &last_cntr);
        uint64_t now = xm__now_ns();
        if (active) {
            last_active = now;
        }
        /* a large transfer in progress shows neither in the counter nor as a completion:
         * with a wait fd (tcp), its sockets have data (the fd is readable); without (shm),
         * progress calls that took a while moved data. Two in a row: about one idle call
         * in 4,500 is long by itself (an interrupt, a preemption), and counting those kept
         * an idle shm appliance from ever sleeping. (Not the long call with a wait fd: on a
         * loaded CPU a call is long because the thread was preempted.) */
        if (fab->wait_fd >= 0) {
            if ((++iter & 15) == 0) {
                struct pollfd p = {.fd = fab->wait_fd, .events = POLLIN};
                if (poll(&p, 1, 0) > 0) {
                    last_active = now;
                }
            }
        } else {
            bool is_long = now - before > 2000;
            if (is_long && prev_long) {
                last_active = now;
            }
            prev_long = is_long;
        }
        if (now - last_active < spin_ns) {
            continue; /* busy: keep polling, a wake-up across CPUs costs ~20 µs here */
        }
        if (fab->wait_fd >= 0) {
            struct fid *fids[1] = {&fab->cq->fid};
            if (fi_trywait(fab->fabric, fids, 1) != FI_SUCCESS) {
                continue;
            }
            struct pollfd p[2] = {{.fd = fab->wait_fd, .events = POLLIN},
                                  {.fd = stop_fd, .events = POLLIN}};
            if (poll(p, stop_fd >= 0 ? 2 : 1, 1000) > 0) {
                last_active = xm__now_ns(); /* woken by traffic: spin again */
            }
        } else if (fab->bell != NULL && now - last_active >= spin_ns + NET_NAP_PHASE_NS) {
            if (bell_sleep(fab, &last_cntr)) {
                last_active = xm__now_ns();
            }
            prev_long = false;
        } else {
            struct timespec nap = {0, NET_NAP_NS};
            nanosleep(&nap, NULL);
        }
    }
}
