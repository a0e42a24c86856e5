/* Control channel sockets: listen, accept, connect, move bytes by a deadline. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "rpc.h"

static void sock_setup(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

xm_status_t rpc_listen(const char *host, const char *port, int *fd_p, uint16_t *port_p)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        xm_log_error("cannot resolve %s:%s: %s", host, port, gai_strerror(rc));
        return XM_ERR_INVALID;
    }
    xm_status_t status = XM_ERR_IO;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
            xm_log_error("cannot listen on %s:%s: %m", host, port);
            close(fd);
            continue;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        *port_p = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        *fd_p = fd;
        status = XM_OK;
        break;
    }
    freeaddrinfo(res);
    return status;
}

int rpc_accept(int listen_fd, struct sockaddr_storage *ss)
{
    socklen_t sl = sizeof(*ss);
    int fd = accept4(listen_fd, (struct sockaddr *)ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
        /* replies go out at once, also when the peer pipelines requests (Nagle would hold
         * each reply after the first until the peer's delayed ACK) */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

void rpc_peer_name(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    uint16_t port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    }
    snprintf(buf, len, "%s:%u", host, port);
}

static int remaining_ms(uint64_t deadline)
{
    uint64_t now = xm__now_ns();
    if (now >= deadline) {
        return 0;
    }
    return (int)((deadline - now + 999999) / 1000000);
}

xm_status_t rpc_connect(const char *host, const char *port, uint32_t timeout_ms, int *fd_p)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        xm_log_error("cannot resolve %s:%s: %s", host, port, gai_strerror(rc));
        return XM_ERR_CONNECT;
    }
    uint64_t deadline = xm__now_ns() + (uint64_t)timeout_ms * 1000000ull;
    xm_status_t status = XM_ERR_CONNECT;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            continue;
        }
        sock_setup(fd);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            close(fd);
            continue;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int n = poll(&pfd, 1, remaining_ms(deadline));
        int err = 0;
        socklen_t el = sizeof(err);
        if (n == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0) {
            *fd_p = fd;
            status = XM_OK;
            break;
        }
        status = n == 0 ? XM_ERR_TIMEOUT : XM_ERR_CONNECT;
        close(fd);
    }
    freeaddrinfo(res);
    return status;
}

/* Move len bytes in or out within the deadline. */
xm_status_t rpc_sock_xfer(int fd, void *buf, size_t len, bool out, uint64_t deadline_ns)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = out ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == 0) {
            return XM_ERR_DISCONNECTED;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return XM_ERR_DISCONNECTED;
        }
        struct pollfd pfd = {.fd = fd, .events = out ? POLLOUT : POLLIN};
        int ms = remaining_ms(deadline_ns);
        if (ms == 0 || poll(&pfd, 1, ms) == 0) {
            return XM_ERR_TIMEOUT;
        }
    }
    return XM_OK;
}

uint64_t rpc_deadline_after(uint32_t ms)
{
    return xm__now_ns() + (uint64_t)ms * 1000000ull;
}

void rpc_spin_readable(int fd, uint64_t ns)
{
    if (ns == 0) return;
    uint64_t end = xm__now_ns() + ns;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    do {
        if (poll(&p, 1, 0) != 0) return;
    } while (xm__now_ns() < end);
}
