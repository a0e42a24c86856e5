/* xfer's private face: the provider ops table and what ofi.c lends to the provider files.
 *
 * A provider is one file, ofi_NAME.c, that defines `const xfer_ops_t ofi_NAME_ops` and is
 * listed once in ofi.c's providers[] (and in CMakeLists.txt). ofi.c does everything libfabric
 * providers share: fi_getinfo's common hints (RDM, FI_RMA | FI_ATOMIC, our own 64-bit keys,
 * offsets not virtual addresses, FI_THREAD_SAFE), fabric/domain/CQ/AV/endpoint setup, the
 * per-region registrations, the one-sided posts, completions, the target's drain receives
 * and its progress loop (poll while busy, then the provider's idle hook).
 *
 * What a new provider file must supply (verbs, efa, ...):
 *   - name (what --provider and the wire carry; also libfabric's prov_name unless getinfo
 *     says otherwise) and caps (NET_CAP_*: does its address say where the peer is, can a
 *     post to a dead peer hang, is it one host only);
 *   - getinfo: adjust the prepared hints (addr_format, FI_RMA_EVENT, its own prov_name
 *     "verbs;ofi_rxm") and call fi_getinfo with its node/service (a target binds to host);
 *   - target_cq_wait: the wait object of a target's CQ (FI_WAIT_FD where the provider has
 *     one: then idle can sleep on fab->wait_fd);
 *   - drain sizing: how many receives, of what size, a target keeps posted so that messages
 *     peers send to the data endpoint are taken in and dropped instead of queued;
 *   - idle: what a target does when nothing happened for --spin-us (sleep on its wait
 *     object, a doorbell, ...), returning within ~1 s or when stop_fd is readable;
 *   - optionally before_enable / after_enable / close (provider state in fab->prov),
 *     peer_addr (check and fix up a peer's published address), peer_inserted, posted
 *     (runs after every initiator post: wake a sleeping peer; keep it cheap), moving (a
 *     transfer in progress that shows neither as a completion nor in the RMA counter).
 */
#ifndef XM_XFER_OFI_H
#define XM_XFER_OFI_H

#include <rdma/fi_domain.h>

#include "xfer.h"

/* The target's progress loop state, shared with the provider's hooks. Progress thread only. */
typedef struct ofi_progress {
    uint64_t spin_ns;     /* --spin-us */
    uint64_t last_active; /* when progress last showed activity (ns, xm__now_ns) */
    uint64_t last_cntr;   /* the RMA counter when last read */
    unsigned iter;        /* progress calls made */
    int stop_fd;          /* readable when the loop must end; -1: none */
} ofi_progress_t;

typedef struct xfer_ops {
    const char *name;
    uint32_t caps;                     /* NET_CAP_* */
    enum fi_wait_obj target_cq_wait;   /* FI_WAIT_FD or FI_WAIT_NONE */
    size_t drain_bufs;                 /* drain receives of each kind (untagged, tagged) */
    size_t drain_buf_size;
    int (*getinfo)(struct fi_info *hints, net_role_t role, const char *host, const char *service,
                   struct fi_info **info_p);
    xm_status_t (*before_enable)(net_fabric_t *fab, net_role_t role);
    xm_status_t (*after_enable)(net_fabric_t *fab, net_role_t role);
    void (*close)(net_fabric_t *fab);
    xm_status_t (*peer_addr)(net_fabric_t *fab, uint8_t *addr, size_t len,
                             const struct sockaddr *ctrl_peer);
    void (*peer_inserted)(net_fabric_t *fab, const uint8_t *addr, size_t len, fi_addr_t peer);
    void (*posted)(net_fabric_t *fab, fi_addr_t peer);
    bool (*moving)(net_fabric_t *fab, ofi_progress_t *p, uint64_t call_ns);
    void (*idle)(net_fabric_t *fab, ofi_progress_t *p);
} xfer_ops_t;

extern const xfer_ops_t ofi_tcp_ops;

/* The provider named name; NULL when none is. */
const xfer_ops_t *xfer_ops_find(const char *name);

/* Log a failed libfabric call; XM_ERR_TRANSPORT. */
xm_status_t ofi_fail(const char *what, int rc);

/* Target: one round of progress (completions read, drain receives posted again); true when
 * it showed activity (a completion, a remote access counted). */
bool ofi_progress_round(net_fabric_t *fab, ofi_progress_t *p);

#endif
