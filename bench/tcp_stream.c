/* Raw TCP streaming reference for striped streaming: one client moves SIZE bytes
 * split evenly over N servers in parallel (one thread and connection per server,
 * 1 MiB writes/reads), as a stripe over N appliances would.
 *   tcp_stream serve HOST:PORT               serve until killed
 *   tcp_stream run SIZE HOST:PORT[,HOST:PORT...]
 * prints "raw TCP write" (client -> servers, until every server has acknowledged
 * its share) and "raw TCP read" (servers -> client) in GB/s, and the client's CPU
 * use over each (100% = one CPU busy). No libxmem. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_util.h"

#define CHUNK (1u << 20)
#define MAX_PEERS 16

static int full_io(int fd, void *buf, size_t len, int wr)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = wr ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int resolve(const char *hostport, int passive, struct addrinfo **ai_p)
{
    char host[256], port[16];
    if (bench_split_hostport(hostport, host, sizeof(host), port, sizeof(port)) != 0) {
        fprintf(stderr, "tcp_stream: expected HOST:PORT, got '%s'\n", hostport);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                             .ai_flags = passive ? AI_PASSIVE : 0};
    int rc = getaddrinfo(host, port, &hints, ai_p);
    if (rc != 0) fprintf(stderr, "tcp_stream: %s: %s\n", hostport, gai_strerror(rc));
    return rc == 0 ? 0 : -1;
}

/* One connection: a request is 'W' or 'R' and a 64-bit length; 'W' is answered with
 * one byte once all its bytes arrived, 'R' with that many bytes. */
static void *serve_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char *buf = malloc(CHUNK);
    memset(buf, 7, CHUNK);
    for (;;) {
        char op;
        uint64_t len;
        if (full_io(fd, &op, 1, 0) != 0 || full_io(fd, &len, 8, 0) != 0) break;
        int failed = 0;
        for (uint64_t done = 0; done < len && !failed; done += CHUNK) {
            size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
            failed = full_io(fd, buf, n, op == 'R');
        }
        if (failed || (op == 'W' && full_io(fd, &op, 1, 1) != 0)) break;
    }
    close(fd);
    free(buf);
    return NULL;
}

static int serve(const char *hostport)
{
    struct addrinfo *ai;
    if (resolve(hostport, 1, &ai) != 0) return 1;
    int lfd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || bind(lfd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(lfd, 64) != 0) {
        fprintf(stderr, "tcp_stream: listen %s: %s\n", hostport, strerror(errno));
        return 1;
    }
    freeaddrinfo(ai);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pthread_t th;
        if (pthread_create(&th, NULL, serve_conn, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        pthread_detach(th);
    }
}

typedef struct peer {
    int fd;
    uint64_t len;
    char op;
    char *buf;
    int failed;
} peer_t;

static void *stream(void *arg)
{
    peer_t *p = arg;
    char ack;
    p->failed = full_io(p->fd, &p->op, 1, 1) != 0 || full_io(p->fd, &p->len, 8, 1) != 0;
    for (uint64_t done = 0; done < p->len && !p->failed; done += CHUNK) {
        size_t n = p->len - done < CHUNK ? (size_t)(p->len - done) : CHUNK;
        p->failed = full_io(p->fd, p->buf, n, p->op == 'W');
    }
    if (!p->failed && p->op == 'W') p->failed = full_io(p->fd, &ack, 1, 0);
    return NULL;
}

static uint64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

static int run(const char *size_text, char *targets)
{
    char *end;
    uint64_t size = strtoull(size_text, &end, 10);
    switch (*end) {
    case 'G': case 'g': size <<= 30; break;
    case 'M': case 'm': size <<= 20; break;
    case 'K': case 'k': size <<= 10; break;
    default: break;
    }
    peer_t peers[MAX_PEERS];
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(targets, ",", &save); t != NULL && n < MAX_PEERS;
         t = strtok_r(NULL, ",", &save), n++) {
        struct addrinfo *ai;
        if (resolve(t, 0, &ai) != 0) return 1;
        int fd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            fprintf(stderr, "tcp_stream: connect %s: %s\n", t, strerror(errno));
            return 1;
        }
        freeaddrinfo(ai);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        peers[n] = (peer_t){.fd = fd, .buf = malloc(CHUNK)};
        memset(peers[n].buf, 1, CHUNK);
    }
    if (n == 0 || size == 0) {
        fprintf(stderr, "tcp_stream: nothing to do\n");
        return 1;
    }
    for (int w = 1; w >= 0; w--) {
        pthread_t th[MAX_PEERS];
        uint64_t t0 = bench_now_ns(), c0 = cpu_ns();
        for (int i = 0; i < n; i++) {
            peers[i].op = w ? 'W' : 'R';
            peers[i].len = size / (uint64_t)n;
            pthread_create(&th[i], NULL, stream, &peers[i]);
        }
        int failed = 0;
        for (int i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
            failed |= peers[i].failed;
        }
        uint64_t ns = bench_now_ns() - t0, cpu = cpu_ns() - c0;
        if (failed) {
            fprintf(stderr, "tcp_stream: a connection failed\n");
            return 1;
        }
        printf("%-40s %10.2f GB/s (%d servers, 1 MiB ops, client CPU %3.0f%%)\n",
               w ? "raw TCP write" : "raw TCP read", (double)(size / (uint64_t)n * (uint64_t)n) / (double)ns,
               n, 100.0 * (double)cpu / (double)ns);
    }
    for (int i = 0; i < n; i++) {
        close(peers[i].fd);
        free(peers[i].buf);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(argv[2]);
    if (argc == 4 && strcmp(argv[1], "run") == 0) return run(argv[2], argv[3]);
    fprintf(stderr, "usage: tcp_stream serve HOST:PORT | tcp_stream run SIZE HOST:PORT[,HOST:PORT...]\n");
    return 2;
}
