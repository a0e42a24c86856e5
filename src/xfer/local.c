/* The local transport's primitives: sealed region memfds, the AF_UNIX socket, fd passing. */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/common.h"
#include "local.h"

xm_status_t net_local_boot_id(char out[NET_LOCAL_BOOT_ID_LEN + 1])
{
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return XM_ERR_IO;
    ssize_t n = read(fd, out, NET_LOCAL_BOOT_ID_LEN);
    close(fd);
    if (n != NET_LOCAL_BOOT_ID_LEN) return XM_ERR_IO;
    out[NET_LOCAL_BOOT_ID_LEN] = '\0';
    return XM_OK;
}

xm_status_t net_local_memfd(size_t len, bool hugetlb, int *fd_p)
{
    unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugetlb ? MFD_HUGETLB : 0);
    int fd = memfd_create("xmem-region", flags);
    if (fd < 0) {
        xm_log_error("memfd_create: %m");
        return XM_ERR_NO_MEMORY;
    }
    /* no shrink: a holder's ftruncate would make xmemd's own accesses SIGBUS; no grow; no
     * further seal: F_SEAL_FUTURE_WRITE by a holder would block the hole punch and every
     * later writable mapping. 0600: a client of another user cannot reopen it writable. */
    if (ftruncate(fd, (off_t)len) != 0 || fchmod(fd, 0600) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        xm_log_error("cannot size or seal a region memfd of %zu bytes: %m", len);
        close(fd);
        return XM_ERR_NO_MEMORY;
    }
    *fd_p = fd;
    return XM_OK;
}

void net_local_release(int fd, size_t len)
{
    if (fd < 0) return;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)len) != 0) {
        xm_log_warn("cannot return a region's memory to the OS: %m");
    }
}

/* ---- the liveness page ---------------------------------------------------------------- */

/* The robust list of the liveness thread: one entry, in xmemd's private memory, whose futex
 * word is the page's (futex_offset reaches it), so no xmemd address is in the shared page. */
struct net_local_live {
    int fd;                         /* the page's memfd */
    uint32_t *word;                 /* xmemd's mapping of it */
    size_t len;
    int stop_fd;                    /* eventfd: the thread ends when it is written */
    pthread_t thread;
    struct robust_list_head head;
    struct robust_list entry;
    int err;                        /* set_robust_list's errno, 0: registered */
    pthread_mutex_t lock;           /* start-up hand-shake (err, started) */
    pthread_cond_t cond;
    bool started;
};

static void *live_main(void *arg)
{
    net_local_live_t *l = arg;
    l->entry.next = &l->head.list;
    l->head.list.next = &l->entry;
    l->head.futex_offset = (long)((char *)l->word - (char *)&l->entry);
    l->head.list_op_pending = NULL;
    /* the word holds our thread id: the kernel marks it only if it still does at our end */
    __atomic_store_n(l->word, (uint32_t)syscall(SYS_gettid) & FUTEX_TID_MASK, __ATOMIC_SEQ_CST);
    int err = syscall(SYS_set_robust_list, &l->head, sizeof(l->head)) == 0 ? 0 : errno;
    pthread_mutex_lock(&l->lock);
    l->err = err;
    l->started = true;
    pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->lock);
    if (err != 0) return NULL;
    uint64_t v;
    while (read(l->stop_fd, &v, sizeof(v)) < 0 && errno == EINTR) {
    }
    return NULL;
}

xm_status_t net_local_live_start(net_local_live_t **l_p)
{
    net_local_live_t *l = calloc(1, sizeof(*l));
    if (l == NULL) return XM_ERR_NO_MEMORY;
    l->fd = l->stop_fd = -1;
    l->len = (size_t)sysconf(_SC_PAGESIZE);
    l->word = MAP_FAILED;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cond, NULL);
    l->fd = memfd_create("xmem-live", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (l->fd < 0 || ftruncate(l->fd, (off_t)l->len) != 0 || fchmod(l->fd, 0600) != 0 ||
        fcntl(l->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        goto err;
    }
    l->word = mmap(NULL, l->len, PROT_READ | PROT_WRITE, MAP_SHARED, l->fd, 0);
    l->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (l->word == MAP_FAILED || l->stop_fd < 0) goto err;
    int e = pthread_create(&l->thread, NULL, live_main, l);
    if (e != 0) {
        errno = e;
        goto err;
    }
    pthread_mutex_lock(&l->lock);
    while (!l->started) pthread_cond_wait(&l->cond, &l->lock);
    pthread_mutex_unlock(&l->lock);
    if (l->err != 0) {
        pthread_join(l->thread, NULL);
        errno = l->err;
        goto err;
    }
    *l_p = l;
    return XM_OK;
err:
    xm_log_warn("no liveness page for local clients (%m): they poll their session instead");
    if (l->word != MAP_FAILED) munmap(l->word, l->len);
    if (l->fd >= 0) close(l->fd);
    if (l->stop_fd >= 0) close(l->stop_fd);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->cond);
    free(l);
    return XM_ERR_IO;
}

int net_local_live_fd(const net_local_live_t *l)
{
    return l->fd;
}

void net_local_live_stop(net_local_live_t *l)
{
    if (l == NULL) return;
    uint64_t one = 1;
    if (write(l->stop_fd, &one, sizeof(one)) != sizeof(one)) {
        xm_log_warn("cannot stop the liveness thread: %m");
    }
    pthread_join(l->thread, NULL);
    /* the kernel marked it at the thread's end; say it in any case (a clean shutdown) */
    __atomic_store_n(l->word, (uint32_t)FUTEX_OWNER_DIED, __ATOMIC_SEQ_CST);
    munmap(l->word, l->len);
    close(l->fd);
    close(l->stop_fd);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->cond);
    free(l);
}

int net_local_reopen_ro(int fd)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    return open(path, O_RDONLY | O_CLOEXEC);
}

xm_status_t net_local_listen(const char *path, int *fd_p)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        xm_log_error("local socket path %s is longer than %zu bytes", path, sizeof(sa.sun_path) - 1);
        return XM_ERR_INVALID;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            xm_log_error("local socket path %s exists and is not a socket: refusing to replace it",
                         path);
            return XM_ERR_EXISTS;
        }
        unlink(path); /* a previous xmemd's, left by a crash */
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return XM_ERR_IO;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || chmod(path, 0666) != 0 ||
        listen(fd, 128) != 0) {
        xm_log_error("cannot listen on %s: %m", path);
        close(fd);
        return XM_ERR_IO;
    }
    *fd_p = fd;
    return XM_OK;
}

xm_status_t net_local_connect(const char *path, uint32_t timeout_ms, int *fd_p)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(sa.sun_path)) {
        return XM_ERR_INVALID;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return XM_ERR_IO;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        /* a full backlog: wait for room, like TCP's connect */
        if (errno != EAGAIN && errno != EINPROGRESS) {
            close(fd);
            return XM_ERR_CONNECT;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t el = sizeof(err);
        if (poll(&p, 1, (int)timeout_ms) <= 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
            close(fd);
            return XM_ERR_CONNECT;
        }
    }
    *fd_p = fd;
    return XM_OK;
}

ssize_t net_local_send_fd(int sock, const void *buf, size_t len, int fd)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    memset(&cm, 0, sizeof(cm));
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                       .msg_controllen = sizeof(cm.buf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    ssize_t n;
    do {
        n = sendmsg(sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t net_local_recv_fd(int sock, void *buf, size_t len, int *fd_p)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * 8)];
    } cm;
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                       .msg_controllen = sizeof(cm.buf)};
    *fd_p = -1;
    ssize_t n;
    do {
        n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfd; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd_p < 0) *fd_p = fd;
            else close(fd); /* one descriptor per reply: more is not ours to keep */
        }
    }
    return n;
}
