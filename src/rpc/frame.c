/* Control channel: framed protobuf messages over TCP with timeouts, and the
 * mutual authentication MACs. */
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

#include <sodium.h>

#include "../common/common.h"
#include "net.h"

static void sock_setup(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

xm_status_t net_listen(const char *host, const char *port, int *fd_p, uint16_t *port_p)
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

int net_accept(int listen_fd, struct sockaddr_storage *ss)
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

void net_peer_name(const struct sockaddr_storage *ss, char *buf, size_t len)
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

xm_status_t net_connect(const char *host, const char *port, uint32_t timeout_ms, int *fd_p)
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
static xm_status_t sock_xfer(int fd, void *buf, size_t len, bool out, uint64_t deadline)
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
        int ms = remaining_ms(deadline);
        if (ms == 0 || poll(&pfd, 1, ms) == 0) {
            return XM_ERR_TIMEOUT;
        }
    }
    return XM_OK;
}

static uint64_t deadline_after(uint32_t ms)
{
    return xm__now_ns() + (uint64_t)ms * 1000000ull;
}

xm_status_t net_send_msg_by(int fd, const xm_msg_t *msg, uint64_t deadline_ns)
{
    uint8_t *buf;
    size_t len;
    xm_status_t status = proto_encode(msg, &buf, &len);
    if (status != XM_OK) {
        return status;
    }
    status = sock_xfer(fd, buf, len, true, deadline_ns);
    free(buf);
    return status;
}

void net_spin_readable(int fd, uint64_t ns)
{
    if (ns == 0) return;
    uint64_t end = xm__now_ns() + ns;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    do {
        if (poll(&p, 1, 0) != 0) return;
    } while (xm__now_ns() < end);
}

xm_status_t net_send_raw_by(int fd, const void *buf, size_t len, uint64_t deadline_ns)
{
    return sock_xfer(fd, (void *)buf, len, true, deadline_ns);
}

xm_status_t net_send_msg(int fd, const xm_msg_t *msg, uint32_t timeout_ms)
{
    return net_send_msg_by(fd, msg, deadline_after(timeout_ms));
}

xm_status_t net_recv_msg_by(int fd, size_t max, uint64_t deadline_ns, uint32_t frame_ms,
                            xm_msg_t **msg_p, const char **why_p)
{
    *why_p = NULL;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n;
    do {
        n = poll(&pfd, 1, deadline_ns == UINT64_MAX ? -1 : remaining_ms(deadline_ns));
    } while (n < 0 && errno == EINTR);
    if (n == 0) {
        return XM_ERR_TIMEOUT;
    }
    /* once a frame starts it must finish within frame_ms, and by the deadline */
    uint64_t deadline = XM_MIN(deadline_ns, deadline_after(frame_ms));
    uint8_t hdr[XM_FRAME_HEADER];
    xm_status_t status = sock_xfer(fd, hdr, sizeof(hdr), false, deadline);
    if (status != XM_OK) {
        return status;
    }
    size_t len;
    if (proto_frame_len(hdr, max, &len) != XM_OK) {
        *why_p = "frame length 0 or above the limit";
        return XM_ERR_PROTOCOL;
    }
    uint8_t *body = malloc(len);
    if (body == NULL) {
        return XM_ERR_NO_MEMORY;
    }
    status = sock_xfer(fd, body, len, false, deadline);
    if (status == XM_OK) {
        status = proto_decode(body, len, max, msg_p, why_p);
    } else if (status == XM_ERR_DISCONNECTED) {
        *why_p = "truncated frame";
    }
    free(body);
    return status;
}

xm_status_t net_recv_msg(int fd, size_t max, int idle_ms, uint32_t timeout_ms, xm_msg_t **msg_p,
                         const char **why_p)
{
    return net_recv_msg_by(fd, max, idle_ms < 0 ? UINT64_MAX : deadline_after((uint32_t)idle_ms),
                           timeout_ms, msg_p, why_p);
}

xm_status_t net_secret_load(const char *path, net_secret_t *secret, char *why, size_t whylen)
{
    uint8_t raw[4096];
    size_t len;
    xm_status_t status = xm__secret_load(path, raw, sizeof(raw), &len, why, whylen);
    if (status != XM_OK) {
        return status;
    }
    if (sodium_init() < 0) {
        return XM_ERR_IO;
    }
    crypto_generichash(secret->key, sizeof(secret->key), raw, len, NULL, 0);
    sodium_memzero(raw, sizeof(raw));
    return XM_OK;
}

void net_auth_mac(const net_secret_t *secret, const char *role, const uint8_t *nonce_a,
                  const uint8_t *nonce_b, const char *tenant, uint8_t mac[XM_MAC_LEN])
{
    crypto_auth_hmacsha512256_state st;
    crypto_auth_hmacsha512256_init(&st, secret->key, sizeof(secret->key));
    crypto_auth_hmacsha512256_update(&st, (const uint8_t *)role, strlen(role) + 1);
    crypto_auth_hmacsha512256_update(&st, nonce_a, XM_NONCE_LEN);
    crypto_auth_hmacsha512256_update(&st, nonce_b, XM_NONCE_LEN);
    crypto_auth_hmacsha512256_update(&st, (const uint8_t *)tenant, strlen(tenant) + 1);
    crypto_auth_hmacsha512256_final(&st, mac);
}

bool net_auth_verify(const net_secret_t *secret, const char *role, const uint8_t *nonce_a,
                     const uint8_t *nonce_b, const char *tenant, const uint8_t *mac)
{
    uint8_t want[XM_MAC_LEN];
    net_auth_mac(secret, role, nonce_a, nonce_b, tenant, want);
    return sodium_memcmp(want, mac, XM_MAC_LEN) == 0;
}

void net_random(void *buf, size_t len)
{
    if (sodium_init() < 0) {
        abort(); /* no randomness source: nothing safe can be done */
    }
    randombytes_buf(buf, len);
}
