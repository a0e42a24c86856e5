/* The raw TCP reference of the benchmarks (xmem bench, bench/xfer_floor): a server thread
 * on loopback answering an 8-byte request with that many bytes (the shape of a read), or
 * draining a stream (request 0). Header-only, like map_workloads.h, so tools/xmem and
 * bench/ share it. */
#ifndef XMEM_BENCH_TCP_REF_H
#define XMEM_BENCH_TCP_REF_H

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct tcp_ref {
    int listen_fd;
    pthread_t thread;
} tcp_ref_t;

static inline uint64_t tcp_ref_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Move all of buf without blocking (busy-polls the socket). */
static inline int tcp_ref_xfer(int fd, void *buf, size_t len, bool out)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = out ? send(fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL) : recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) { p += n; len -= (size_t)n; continue; }
        if (n == 0) return -1;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
    }
    return 0;
}

/* The server's wait for a request: busy-polls for 10 ms after the last one (the round trips
 * measure a busy-polling server), then sleeps in poll(2): spinning on through the xmem
 * measurements took one of the machine's CPUs from them (on 2 vCPUs: 1 MiB reads 45 % -> 96 %
 * of the raw stream in bench/xfer_floor). */
static inline int tcp_ref_wait_request(int fd, uint64_t *last_ns)
{
    while (tcp_ref_now_ns() - *last_ns < 10000000ull) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
        if (n > 0) return 0;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return -1;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    return 0;
}

static void *tcp_ref_server(void *arg)
{
    tcp_ref_t *t = arg;
    int fd = accept(t->listen_fd, NULL, NULL);
    if (fd < 0) return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    size_t cap = 4u << 20;
    uint8_t *buf = calloc(1, cap);
    uint64_t last = tcp_ref_now_ns();
    for (;;) {
        uint64_t req;
        if (tcp_ref_wait_request(fd, &last) != 0 || tcp_ref_xfer(fd, &req, sizeof(req), false) != 0) break;
        last = tcp_ref_now_ns();
        if (req == 0) { /* stream: drain until the peer closes */
            while (recv(fd, buf, cap, 0) > 0) {}
            break;
        }
        if (req > cap || tcp_ref_xfer(fd, buf, (size_t)req, true) != 0) break;
    }
    free(buf);
    close(fd);
    return NULL;
}

/* Start the server; *client_fd_p is a connected client socket (TCP_NODELAY). 0 or -1. */
static inline int tcp_ref_start(tcp_ref_t *t, int *client_fd_p)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    t->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (t->listen_fd < 0 || bind(t->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(t->listen_fd, 1) != 0 || getsockname(t->listen_fd, (struct sockaddr *)&sa, &sl) != 0) {
        return -1;
    }
    pthread_create(&t->thread, NULL, tcp_ref_server, t);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *client_fd_p = fd;
    return 0;
}

static inline void tcp_ref_stop(tcp_ref_t *t, int client_fd)
{
    close(client_fd);
    pthread_join(t->thread, NULL);
    close(t->listen_fd);
}

/* Round trips of an 8-byte request and a size-byte answer: iters times into ns, after
 * iters / 10 of warm-up. */
static inline void tcp_ref_rtt(int fd, size_t size, size_t iters, uint8_t *buf, uint64_t *ns)
{
    uint64_t req = size;
    for (size_t i = 0; i < iters + iters / 10; i++) {
        uint64_t t0 = tcp_ref_now_ns();
        tcp_ref_xfer(fd, &req, sizeof(req), true);
        tcp_ref_xfer(fd, buf, size, false);
        if (i >= iters / 10) ns[i - iters / 10] = tcp_ref_now_ns() - t0;
    }
}

/* Stream total bytes in chunk-sized writes (ends the connection's use); GB/s, 0 on failure. */
static inline double tcp_ref_stream(int fd, uint8_t *buf, size_t chunk, uint64_t total)
{
    uint64_t req = 0;
    tcp_ref_xfer(fd, &req, sizeof(req), true);
    uint64_t t0 = tcp_ref_now_ns();
    for (uint64_t done = 0; done < total; done += chunk) {
        if (tcp_ref_xfer(fd, buf, chunk, true) != 0) return 0;
    }
    shutdown(fd, SHUT_WR);
    return (double)total / (double)(tcp_ref_now_ns() - t0);
}

#endif /* XMEM_BENCH_TCP_REF_H */
