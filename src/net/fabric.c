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
#include <sys/prctl.h>
#include <unistd.h>

#include <rdma/fi_atomic.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <pthread.h>

#include "../common/common.h"
#include "net.h"

#define NET_FI_VERSION FI_VERSION(1, 17)
#define NET_CQ_DEPTH 1024

/*
 * libfabric's rxm (under tcp) posts FI_OFI_RXM_MSG_RX_SIZE receive buffers
 * of 16 KiB per connection and zeroes them; with its default: measured 87 MB
 * of RSS and 55-110 ms before the first transfer of every client context,
 * and a mapping has one context per handler thread plus one for xm_sync.
 * A client receives only rxm's own messages and atomic replies (data moves
 * by RMA straight into the caller's buffers), so it posts 16: ~36 MB and
 * ~28 ms per context, same latencies (docs/performance.md). A setting only
 * of this end (FI_OFI_RXM_BUFFER_SIZE would shrink it further but must
 * match the appliance's, and an application that initialised libfabric
 * first would keep 16 KiB: every transfer then times out). A value the user
 * set is kept; appliances keep the default (they serve many connections).
 */
static pthread_once_t g_env_once = PTHREAD_ONCE_INIT;

static void initiator_env(void)
{
    setenv("FI_OFI_RXM_MSG_RX_SIZE", "16", 0);
}

static xm_status_t fi_fail(const char *what, int rc)
{
    xm_log_error("libfabric %s failed: %s (%d)", what, fi_strerror(-rc), rc);
    return XM_ERR_TRANSPORT;
}

void net_fabric_close(net_fabric_t *fab)
{
    if (fab->ep != NULL) fi_close(&fab->ep->fid);
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

    /* before libfabric's first fi_getinfo, which reads its settings */
    if (role == NET_ROLE_INITIATOR) pthread_once(&g_env_once, initiator_env);
    struct fi_info *hints = fi_allocinfo();
    if (hints == NULL) {
        return XM_ERR_NO_MEMORY;
    }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_ATOMIC;
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

xm_status_t net_post_read(net_fabric_t *fab, fi_addr_t peer, void *buf, size_t len,
                          uint64_t raddr, uint64_t key, void *ctx)
{
    return post_status("fi_read", fi_read(fab->ep, buf, len, NULL, peer, raddr, key, ctx));
}

xm_status_t net_post_write(net_fabric_t *fab, fi_addr_t peer, const void *buf, size_t len,
                           uint64_t raddr, uint64_t key, void *ctx)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct fi_rma_iov rma = {.addr = raddr, .len = len, .key = key};
    struct fi_msg_rma msg = {.msg_iov = &iov, .desc = NULL, .iov_count = 1, .addr = peer,
                             .rma_iov = &rma, .rma_iov_count = 1, .context = ctx};
    /* acknowledged means in the appliance's memory, and a refused write is an error */
    return post_status("fi_writemsg", fi_writemsg(fab->ep, &msg, FI_DELIVERY_COMPLETE | FI_COMPLETION));
}

xm_status_t net_post_fetch_add(net_fabric_t *fab, fi_addr_t peer, const uint64_t *operand,
                               uint64_t *result, uint64_t raddr, uint64_t key, void *ctx)
{
    return post_status("fi_fetch_atomic",
                       fi_fetch_atomic(fab->ep, operand, 1, NULL, result, NULL, peer, raddr, key,
                                       FI_UINT64, FI_SUM, ctx));
}

xm_status_t net_post_cswap(net_fabric_t *fab, fi_addr_t peer, const uint64_t *desired,
                           const uint64_t *expected, uint64_t *result, uint64_t raddr,
                           uint64_t key, void *ctx)
{
    return post_status("fi_compare_atomic",
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

void net_progress_run(net_fabric_t *fab, const net_progress_opts_t *opts, atomic_int *stop,
                      int stop_fd)
{
    const uint64_t spin_ns = (uint64_t)opts->spin_us * 1000ull;
    uint64_t last_active = xm__now_ns();
    uint64_t last_cntr = fab->rma_cntr != NULL ? fi_cntr_read(fab->rma_cntr) : 0;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* 1 µs: idle naps stay short */
    unsigned iter = 0;
    while (!atomic_load_explicit(stop, memory_order_relaxed)) {
        net_completion_t c[16];
        uint64_t before = xm__now_ns();
        int n = net_poll(fab, c, 16); /* target: drives progress; errors are logged by the provider */
        uint64_t now = xm__now_ns();
        if (n > 0) {
            last_active = now;
        }
        if (fab->rma_cntr != NULL) {
            uint64_t v = fi_cntr_read(fab->rma_cntr);
            if (v != last_cntr) {
                last_cntr = v;
                last_active = now;
            }
        }
        /* a large transfer in progress shows neither in the counter nor as a completion:
         * with a wait fd (tcp), its sockets have data (the fd is readable); without (shm),
         * a progress call that took a while moved data. (Not the long call with a wait fd:
         * on a loaded CPU a call is long because the thread was preempted, and the loop
         * would spin on forever.) */
        if (fab->wait_fd >= 0) {
            if ((++iter & 15) == 0) {
                struct pollfd p = {.fd = fab->wait_fd, .events = POLLIN};
                if (poll(&p, 1, 0) > 0) {
                    last_active = now;
                }
            }
        } else if (now - before > 2000) {
            last_active = now;
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
            poll(p, stop_fd >= 0 ? 2 : 1, 1000);
            last_active = xm__now_ns();
        } else {
            /* no wait object (shm): nap 20 us; after a second without any sign
             * of activity, 1 ms, so an idle appliance does not keep a CPU awake.
             * (The counter misses some activity — large transfers — so longer
             * naps any sooner slow every large operation down.) */
            uint64_t idle_ns = now - last_active - spin_ns;
            long nap_ns = idle_ns < 1000000000ull ? 20000 : 1000000;
            struct timespec nap = {0, nap_ns};
            nanosleep(&nap, NULL);
        }
    }
}
