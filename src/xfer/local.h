/*
 * xfer/local: the local transport, for clients on the appliance's own host.
 *
 * An appliance on this host hands an authenticated client a file descriptor of one
 * region's own memfd (SCM_RIGHTS over its AF_UNIX control socket; the session on it is
 * the same rpc handshake as over TCP). The client maps it, and reads and writes become
 * plain loads and stores: isolation by construction (the process holds the pages of the
 * regions it was given and nothing else), a 4 KiB read is a memcpy. docs/security.md has
 * the threat model, what was tried against it, and the limits.
 *
 * A region's memfd (net_local_memfd) is sealed against shrinking and growing, and no
 * further seal may be added: a client holding a read-write descriptor can neither
 * truncate it (xmemd's own mapping would fault with SIGBUS: one tenant would crash the
 * appliance) nor seal it against writes. Its inode is mode 0600, so a client of another
 * user given a read-only descriptor cannot reopen it writable through /proc/self/fd.
 * Memory is returned with a hole punch (allowed under those seals): it is freed at
 * once, also while clients still map it; they then read zeros, and what they write
 * afterwards lands in pages of their own, freed when they unmap.
 */
#ifndef XM_XFER_LOCAL_H
#define XM_XFER_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <xmem/xmem.h>

#define NET_LOCAL_BOOT_ID_LEN 36   /* /proc/sys/kernel/random/boot_id, without the newline */
#define NET_LOCAL_PATH_MAX 108     /* sizeof(sockaddr_un.sun_path) */

/* This host's boot id (the same in every network namespace and container of the kernel). */
xm_status_t net_local_boot_id(char out[NET_LOCAL_BOOT_ID_LEN + 1]);

/* A region's memory: a sealed memfd of len bytes (hugetlb pages when asked), mode 0600. */
xm_status_t net_local_memfd(size_t len, bool hugetlb, int *fd_p);
/* Free every page of a region's memfd (hole punch), also while others map it. */
void net_local_release(int fd, size_t len);
/* A read-only descriptor of the same memfd (a fresh open of /proc/self/fd/N), so its
 * holder cannot map it writable; -1 with errno on failure. */
int net_local_reopen_ro(int fd);

/*
 * The appliance's liveness page: one page of a sealed memfd (local clients get it read-only)
 * whose first 32-bit word holds the id of an xmemd thread that does nothing but wait. That
 * thread registers the word as its robust futex (set_robust_list(2)), so whenever it ends --
 * xmemd killed with SIGKILL included -- the kernel sets FUTEX_OWNER_DIED in the word (and
 * clears the id) before xmemd can be seen gone (waitpid). A client that maps regions of
 * xmemd checks it with one load around each operation: a dead appliance's memfds, which
 * live on in the clients' mappings, are never read or written as if it were there.
 * Asked for with REGION_FD of the reserved id NET_LOCAL_LIVE_ID (no region has it: ids count
 * up from 1; an older xmemd answers "no such region" and keeps the session) on a local session.
 */
#define NET_LOCAL_LIVE_ID UINT64_MAX
typedef struct net_local_live net_local_live_t;
xm_status_t net_local_live_start(net_local_live_t **l_p);
/* The page's memfd (read-write; hand out net_local_reopen_ro of it). */
int net_local_live_fd(const net_local_live_t *l);
/* Mark the appliance gone and end the thread (shutdown). NULL: nothing. */
void net_local_live_stop(net_local_live_t *l);
/* Is the appliance whose liveness word this is alive? Any thread, no system call. */
static inline bool net_local_live_ok(const uint32_t *word)
{
    uint32_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    return (w & 0x3fffffffu) != 0 && (w & 0x40000000u) == 0; /* FUTEX_TID_MASK, OWNER_DIED */
}

/* Listen on AF_UNIX path (a stale socket there is replaced; anything else is refused),
 * mode 0666: who may do anything is decided by the handshake, as on TCP. */
xm_status_t net_local_listen(const char *path, int *fd_p);
/* Connect to path within timeout_ms; XM_ERR_CONNECT when nothing listens there. */
xm_status_t net_local_connect(const char *path, uint32_t timeout_ms, int *fd_p);

/* Send len bytes, the first of them carrying fd (SCM_RIGHTS), never waiting; bytes sent
 * or -1 with errno (EAGAIN: nothing sent). */
ssize_t net_local_send_fd(int sock, const void *buf, size_t len, int fd);
/* Receive up to len bytes and the descriptor that came with them (-1: none), close-on-exec;
 * any further descriptors are closed. Returns bytes or -1 with errno. */
ssize_t net_local_recv_fd(int sock, void *buf, size_t len, int *fd_p);

#endif
