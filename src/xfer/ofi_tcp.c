/* The tcp provider (tcp;ofi_rxm, across hosts): bound addresses, IPv4 data addresses, and
 * a target that sleeps on its completion queue's wait fd when idle. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>

#include <rdma/fi_domain.h>
#include <rdma/fi_eq.h>

#include "../common/common.h"
#include "ofi.h"

static int tcp_getinfo(struct fi_info *hints, net_role_t role, const char *host,
                       const char *service, struct fi_info **info_p)
{
    hints->addr_format = FI_SOCKADDR_IN;
    /* a target binds to host (port from service; none or "0": any free port) */
    const char *node = role == NET_ROLE_TARGET ? host : NULL;
    const char *svc = node != NULL && service != NULL && strcmp(service, "0") != 0 ? service : NULL;
    return fi_getinfo(FI_VERSION(1, 17), node, svc, node != NULL ? FI_SOURCE : 0, hints, info_p);
}

static xm_status_t tcp_after_enable(net_fabric_t *fab, net_role_t role)
{
    if (role == NET_ROLE_TARGET && fi_control(&fab->cq->fid, FI_GETWAIT, &fab->wait_fd) != 0) {
        fab->wait_fd = -1; /* the loop then naps (see tcp_idle) */
    }
    return XM_OK;
}

/* A peer's published address must be an IPv4 socket address; an appliance bound to 0.0.0.0
 * is reached where its control socket was. */
static xm_status_t tcp_peer_addr(net_fabric_t *fab, uint8_t *addr, size_t len,
                                 const struct sockaddr *ctrl_peer)
{
    (void)fab;
    if (len != sizeof(struct sockaddr_in)) return XM_ERR_PROTOCOL;
    struct sockaddr_in *sin = (struct sockaddr_in *)addr;
    if (sin->sin_family != AF_INET) return XM_ERR_PROTOCOL;
    if (sin->sin_addr.s_addr == htonl(INADDR_ANY) && ctrl_peer != NULL && ctrl_peer->sa_family == AF_INET) {
        sin->sin_addr = ((const struct sockaddr_in *)ctrl_peer)->sin_addr;
    }
    return XM_OK;
}

/* A large transfer in progress shows neither in the counter nor as a completion, but its
 * sockets have data: the wait fd is readable. Looked at every 16th call (a poll(2) each).
 * Not a long progress call: on a loaded CPU a call is long because the thread was preempted.
 * A readable fd is asked again through fi_trywait: the fd is also readable while the wait
 * set's signal is set (a completion, or net_progress_pause's fi_cq_signal), and only a
 * trywait clears that; taken for traffic, a stale signal kept the loop spinning for good. */
static bool tcp_moving(net_fabric_t *fab, ofi_progress_t *p, uint64_t call_ns)
{
    (void)call_ns;
    if (fab->wait_fd < 0 || (p->iter & 15) != 0) return false;
    struct pollfd pfd = {.fd = fab->wait_fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) <= 0) return false;
    struct fid *fids[1] = {&fab->cq->fid};
    return fi_trywait(fab->fabric, fids, 1) != FI_SUCCESS;
}

/* Target, idle past the spin: sleep on the CQ's wait fd (and stop_fd) for up to a second. */
static void tcp_idle(net_fabric_t *fab, ofi_progress_t *p)
{
    if (fab->wait_fd < 0) {
        struct timespec nap = {0, 100000L};
        nanosleep(&nap, NULL);
        return;
    }
    struct fid *fids[1] = {&fab->cq->fid};
    if (fi_trywait(fab->fabric, fids, 1) != FI_SUCCESS) return; /* work arrived: poll again */
    struct pollfd pfd[2] = {{.fd = fab->wait_fd, .events = POLLIN}, {.fd = p->stop_fd, .events = POLLIN}};
    if (poll(pfd, p->stop_fd >= 0 ? 2 : 1, 1000) > 0) {
        p->last_active = xm__now_ns(); /* woken by traffic: spin again */
    }
}

const xfer_ops_t ofi_tcp_ops = {
    .name = "tcp",
    .caps = NET_CAP_IP_ADDR,
    .target_cq_wait = FI_WAIT_FD,
    /* rxm hands one message to a receive at a time and we post again after each completion:
     * a few large ones (larger than its 16 KiB eager messages, so none is cut into a
     * protocol error) */
    .drain_bufs = 4,
    .drain_buf_size = 65536,
    .getinfo = tcp_getinfo,
    .after_enable = tcp_after_enable,
    .peer_addr = tcp_peer_addr,
    .moving = tcp_moving,
    .idle = tcp_idle,
};
