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
