/* What every libfabric provider shares: endpoint setup, per-region registrations,
 * one-sided ops, completions, the target's drain receives and progress loop, and the
 * providers' table. Provider-specific code is in ofi_<provider>.c (see ofi.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include <rdma/fi_atomic.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

#include "../common/common.h"
#include "ofi.h"

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

/* Target: receives posted so that messages sent to the data endpoint (the appliance never
 * needs one) are taken in and dropped at once instead of queued as unexpected without
 * bound by the provider (rxm keeps every unexpected message: +164 MB in a 6 s flood).
 * How many and how large is the provider's (xfer_ops_t.drain_*). */

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

xm_status_t ofi_fail(const char *what, int rc)
{
    xm_log_error("libfabric %s failed: %s (%d)", what, fi_strerror(-rc), rc);
    return XM_ERR_TRANSPORT;
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
    struct net_drain *d = calloc(1, sizeof(*d));
    if (d == NULL) return XM_ERR_NO_MEMORY;
    fab->drain = d;
    d->nslots = 2 * fab->ops->drain_bufs;
    d->buf_size = fab->ops->drain_buf_size;
    d->slot = calloc(d->nslots, sizeof(*d->slot));
    d->bufs = malloc(d->nslots * d->buf_size);
    if (d->slot == NULL || d->bufs == NULL) return XM_ERR_NO_MEMORY;
    for (size_t i = 0; i < d->nslots; i++) {
        net_drain_slot_t *slot = &d->slot[i];
        slot->tagged = i >= d->nslots / 2;
        slot->buf = d->bufs + i * d->buf_size;
        if ((fab->info->caps & FI_TAGGED) == 0 && slot->tagged) continue;
        int rc = drain_post(fab, slot);
        if (rc != 0) return ofi_fail(slot->tagged ? "fi_trecv" : "fi_recv", rc);
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
    if (fab->ops != NULL && fab->ops->close != NULL) fab->ops->close(fab);
    if (fab->rma_cntr != NULL) fi_close(&fab->rma_cntr->fid);
    if (fab->av != NULL) fi_close(&fab->av->fid);
    if (fab->cq != NULL) fi_close(&fab->cq->fid);
    if (fab->domain != NULL) fi_close(&fab->domain->fid);
    if (fab->fabric != NULL) fi_close(&fab->fabric->fid);
    if (fab->info != NULL) fi_freeinfo(fab->info);
    memset(fab, 0, sizeof(*fab));
    fab->wait_fd = -1;
}

/* ---- providers ------------------------------------------------------------ */

/* Every provider this build knows; a new one is one line here (and its file). libfabric's
 * shm is not one: it let any process on the host read and write the appliance's memory
 * (docs/security.md); clients on an appliance's host use the local transport (local.h). */
static const xfer_ops_t *const providers[] = {&ofi_tcp_ops};
static char provider_names[128];
static pthread_once_t provider_names_once = PTHREAD_ONCE_INIT;

static void provider_names_init(void)
{
    size_t off = 0;
    for (size_t i = 0; i < XM_ARRAY_LEN(providers) && off < sizeof(provider_names); i++) {
        int n = snprintf(provider_names + off, sizeof(provider_names) - off, "%s%s",
                         i > 0 ? ", " : "", providers[i]->name);
        if (n < 0) break;
        off += (size_t)n;
    }
}

const xfer_ops_t *xfer_ops_find(const char *name)
{
    for (size_t i = 0; name != NULL && i < XM_ARRAY_LEN(providers); i++) {
        if (strcmp(providers[i]->name, name) == 0) return providers[i];
    }
    return NULL;
}

bool net_provider_caps(const char *name, uint32_t *caps_p)
{
    const xfer_ops_t *ops = xfer_ops_find(name);
    if (ops == NULL) return false;
    if (caps_p != NULL) *caps_p = ops->caps;
    return true;
}

const char *net_provider_names(void)
{
    pthread_once(&provider_names_once, provider_names_init);
    return provider_names;
}

/* ---- endpoints -------------------------------------------------------------- */

xm_status_t net_fabric_open(const char *provider, net_role_t role, const char *host,
                            const char *service, net_fabric_t *fab)
{
    memset(fab, 0, sizeof(*fab));
    fab->wait_fd = -1;
    const xfer_ops_t *ops = xfer_ops_find(provider);
    if (ops == NULL) {
        xm_log_error("unknown provider '%s' (known: %s)", provider != NULL ? provider : "",
                     net_provider_names());
        return XM_ERR_INVALID;
    }
    fab->ops = ops;
    fab->caps = ops->caps;
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
    hints->mode = 0;
    /* no FI_MR_VIRT_ADDR (offsets into registrations), no FI_MR_PROV_KEY (we pick keys) */
    hints->domain_attr->mr_mode = 0;
    hints->domain_attr->threading = FI_THREAD_SAFE;
    hints->fabric_attr->prov_name = strdup(ops->name);
    int rc = ops->getinfo(hints, role, host, service, &fab->info);
    fi_freeinfo(hints);
    xm_status_t status;
    if (rc != 0) {
        status = ofi_fail("fi_getinfo", rc);
        goto err;
    }
    fab->max_msg = fab->info->ep_attr->max_msg_size;
    fab->tx_depth = XM_MIN(fab->info->tx_attr->size, 256u);
    if (fab->tx_depth == 0) {
        fab->tx_depth = 64;
    }
    rc = fi_fabric(fab->info->fabric_attr, &fab->fabric, NULL);
    if (rc != 0) {
        status = ofi_fail("fi_fabric", rc);
        goto err;
    }
    rc = fi_domain(fab->fabric, fab->info, &fab->domain, NULL);
    if (rc != 0) {
        status = ofi_fail("fi_domain", rc);
        goto err;
    }
    struct fi_cq_attr cq_attr = {.size = NET_CQ_DEPTH, .format = FI_CQ_FORMAT_CONTEXT,
                                 .wait_obj = target ? ops->target_cq_wait : FI_WAIT_NONE};
    rc = fi_cq_open(fab->domain, &cq_attr, &fab->cq, NULL);
    if (rc != 0) {
        status = ofi_fail("fi_cq_open", rc);
        goto err;
    }
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE};
    rc = fi_av_open(fab->domain, &av_attr, &fab->av, NULL);
    if (rc != 0) {
        status = ofi_fail("fi_av_open", rc);
        goto err;
    }
    rc = fi_endpoint(fab->domain, fab->info, &fab->ep, NULL);
    if (rc != 0) {
        status = ofi_fail("fi_endpoint", rc);
        goto err;
    }
    rc = fi_ep_bind(fab->ep, &fab->cq->fid, FI_TRANSMIT | FI_RECV);
    if (rc == 0) rc = fi_ep_bind(fab->ep, &fab->av->fid, 0);
    if (rc != 0) {
        status = ofi_fail("fi_ep_bind", rc);
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
    if (ops->before_enable != NULL) {
        status = ops->before_enable(fab, role);
        if (status != XM_OK) goto err;
    }
    rc = fi_enable(fab->ep);
    if (rc != 0) {
        status = ofi_fail("fi_enable", rc);
        goto err;
    }
    fab->addr_len = sizeof(fab->addr);
    rc = fi_getname(&fab->ep->fid, fab->addr, &fab->addr_len);
    if (rc != 0) {
        status = ofi_fail("fi_getname", rc);
        goto err;
    }
    if (ops->after_enable != NULL) {
        status = ops->after_enable(fab, role);
        if (status != XM_OK) goto err;
    }
    if (target) {
        status = drain_start(fab);
        if (status != XM_OK) goto err;
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
        if (key == 0) continue; /* 0 is never a key: a descriptor's part without one */
        struct fid_mr *mr;
        int rc = fi_mr_reg(fab->domain, addr, len, rights, 0, key, 0, &mr, NULL);
        if (rc == -FI_ENOKEY) {
            continue; /* duplicate key: draw again */
        }
        if (rc != 0) {
            return ofi_fail("fi_mr_reg", rc);
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
    if (fab->ops->peer_addr != NULL) {
        xm_status_t status = fab->ops->peer_addr(fab, name, len, ctrl_peer);
        if (status != XM_OK) return status;
    }
    fi_addr_t peer;
    int rc = fi_av_insert(fab->av, name, 1, &peer, 0, NULL);
    if (rc != 1) {
        xm_log_error("cannot resolve the appliance's data address (fi_av_insert: %d)", rc);
        return XM_ERR_PROTOCOL;
    }
    if (fab->ops->peer_inserted != NULL) fab->ops->peer_inserted(fab, name, len, peer);
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

/* A post's status; the provider hears of a post (or of one the peer's full queue refused: it
 * has work) to wake a sleeping peer. */
static xm_status_t posted(net_fabric_t *fab, fi_addr_t peer, const char *what, ssize_t rc)
{
    if ((rc == 0 || rc == -FI_EAGAIN) && fab->ops->posted != NULL) fab->ops->posted(fab, peer);
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

/* ---- the target's progress loop ------------------------------------------------ */

bool ofi_progress_round(net_fabric_t *fab, ofi_progress_t *p)
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
        if (v != p->last_cntr) {
            p->last_cntr = v;
            active = true;
        }
    }
    return active;
}

static void nap_us(long us)
{
    struct timespec t = {0, us * 1000L};
    nanosleep(&t, NULL);
}

void net_progress_pause(net_fabric_t *fab)
{
    __atomic_add_fetch(&fab->pause_want, 1, __ATOMIC_SEQ_CST);
    if (fab->cq != NULL) fi_cq_signal(fab->cq); /* an idle loop sleeps on the CQ's fd */
    for (unsigned i = 1; __atomic_load_n(&fab->loop_running, __ATOMIC_SEQ_CST) &&
                         !__atomic_load_n(&fab->paused, __ATOMIC_SEQ_CST);
         i++) {
        nap_us(20);
        /* a signal that fell between the loop's fi_trywait and its poll was consumed */
        if (i % 64 == 0 && fab->cq != NULL) fi_cq_signal(fab->cq);
    }
}

void net_progress_resume(net_fabric_t *fab)
{
    __atomic_sub_fetch(&fab->pause_want, 1, __ATOMIC_SEQ_CST);
}

/* A pauser wants the loop still: stay out of the provider until it is done. */
static void progress_park(net_fabric_t *fab)
{
    __atomic_store_n(&fab->paused, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&fab->pause_want, __ATOMIC_SEQ_CST) > 0) nap_us(50);
    __atomic_store_n(&fab->paused, 0, __ATOMIC_SEQ_CST);
}

void net_progress_run(net_fabric_t *fab, const net_progress_opts_t *opts, atomic_int *stop,
                      int stop_fd)
{
    ofi_progress_t p = {.spin_ns = (uint64_t)opts->spin_us * 1000ull, .last_active = xm__now_ns(),
                        .last_cntr = fab->rma_cntr != NULL ? fi_cntr_read(fab->rma_cntr) : 0,
                        .stop_fd = stop_fd};
    const xfer_ops_t *ops = fab->ops;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* 1 µs: idle naps stay short */
    __atomic_store_n(&fab->loop_running, 1, __ATOMIC_SEQ_CST);
    while (!atomic_load_explicit(stop, memory_order_relaxed)) {
        if (__atomic_load_n(&fab->pause_want, __ATOMIC_RELAXED) > 0) progress_park(fab);
        uint64_t before = xm__now_ns();
        bool active = ofi_progress_round(fab, &p);
        uint64_t now = xm__now_ns();
        p.iter++;
        bool moving = ops->moving != NULL && ops->moving(fab, &p, now - before);
        if (active || moving) {
            p.last_active = now;
        }
        if (now - p.last_active < p.spin_ns) {
            continue; /* busy: keep polling, a wake-up across CPUs costs ~20 µs here */
        }
        ops->idle(fab, &p);
    }
    __atomic_store_n(&fab->loop_running, 0, __ATOMIC_SEQ_CST);
}
