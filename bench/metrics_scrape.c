/*
 * Latency of a Prometheus scrape of xmemd's --metrics endpoint against a raw TCP round trip
 * of the same shape, in the same run. It starts an xmemd (loopback, free ports, --metrics
 * 127.0.0.1:0), then times, N times each:
 *   - raw TCP, new connection: connect, send a 40-byte request, read a reply as large as a
 *     scrape's, the server closes (a blocking thread-per-connection server in this process);
 *   - scrape, new connection: the same with GET /metrics HTTP/1.0 (what curl does);
 *   - raw TCP, kept connection: request/reply on one connection (blocking both ends);
 *   - scrape, keep-alive: GET /metrics HTTP/1.1 on one connection (what Prometheus does).
 * usage: metrics_scrape [--xmemd PATH] [--n 2000]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"

static size_t reply_len = 4096; /* set to the scrape's size before the reference runs */
static pid_t xmemd_pid;          /* stopped however the bench ends */

static void stop_xmemd(void)
{
    if (xmemd_pid > 0) {
        kill(xmemd_pid, SIGTERM);
        waitpid(xmemd_pid, NULL, 0);
        xmemd_pid = 0;
    }
}

static int connect_to(uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("metrics_scrape: connect");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* ---- the raw TCP reference server: reads a request (to "\r\n\r\n"), writes reply_len bytes;
 * keep: serve requests on the connection until it closes, else close after one ---- */
typedef struct ref_server {
    int lfd;
    uint16_t port;
    bool keep;
} ref_server_t;

static bool read_request(int fd)
{
    char buf[512];
    size_t got = 0;
    while (got < sizeof(buf)) {
        ssize_t r = recv(fd, buf + got, sizeof(buf) - got, 0);
        if (r <= 0) return false;
        got += (size_t)r;
        if (got >= 4 && memcmp(buf + got - 4, "\r\n\r\n", 4) == 0) return true;
    }
    return false;
}

static void *ref_main(void *arg)
{
    ref_server_t *s = arg;
    char *reply = malloc(1 << 20);
    memset(reply, 'x', 1 << 20);
    for (;;) {
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0) break;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        do {
            if (!read_request(fd)) break;
            size_t off = 0;
            while (off < reply_len) {
                ssize_t w = send(fd, reply + off, reply_len - off, MSG_NOSIGNAL);
                if (w <= 0) break;
                off += (size_t)w;
            }
        } while (s->keep);
        close(fd);
    }
    free(reply);
    return NULL;
}

static void ref_start(ref_server_t *s, bool keep)
{
    s->keep = keep;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof(sa);
    if (bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(s->lfd, 128) != 0 ||
        getsockname(s->lfd, (struct sockaddr *)&sa, &sl) != 0) {
        perror("metrics_scrape: listen");
        exit(1);
    }
    s->port = ntohs(sa.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, ref_main, s);
    pthread_detach(t);
}

/* ---- clients --------------------------------------------------------------------- */

/* Read an HTTP response with Content-Length (keep-alive) or to EOF; its total size. */
static size_t read_response(int fd, bool to_eof, char *buf, size_t cap)
{
    size_t got = 0, want = SIZE_MAX;
    for (;;) {
        if (got >= want) return got;
        ssize_t r = recv(fd, buf + got, cap - got, 0);
        if (r <= 0) return to_eof ? got : 0;
        got += (size_t)r;
        if (want == SIZE_MAX && !to_eof) {
            buf[got < cap ? got : cap - 1] = '\0';
            char *end = strstr(buf, "\r\n\r\n");
            char *cl = strcasestr(buf, "Content-Length:");
            if (end != NULL && cl != NULL) want = (size_t)(end + 4 - buf) + strtoull(cl + 15, NULL, 10);
        }
        if (to_eof && got == cap) return got;
    }
}

static size_t fixed_reply(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    while (got < reply_len) {
        ssize_t r = recv(fd, buf + got, cap - got, 0);
        if (r <= 0) break;
        got += (size_t)r;
    }
    return got;
}

static const char http10[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n";
static const char http11[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n";

typedef struct row {
    const char *what;
    uint64_t *ns;
    size_t bytes;
} row_t;

static void measure(row_t *r, int n, uint16_t port, bool http, bool keep, char *buf, size_t cap)
{
    const char *req = keep ? http11 : http10;
    size_t req_len = strlen(req);
    int fd = keep ? connect_to(port) : -1;
    for (int i = -n / 10; i < n; i++) { /* the first tenth warms up */
        uint64_t t0 = bench_now_ns();
        if (!keep) fd = connect_to(port);
        if (send(fd, req, req_len, MSG_NOSIGNAL) != (ssize_t)req_len) {
            perror("metrics_scrape: send");
            exit(1);
        }
        size_t got = http ? read_response(fd, !keep, buf, cap) : fixed_reply(fd, buf, cap);
        if (!keep) close(fd);
        uint64_t t1 = bench_now_ns();
        if (got == 0) {
            fprintf(stderr, "metrics_scrape: %s: no answer\n", r->what);
            exit(1);
        }
        if (i >= 0) r->ns[i] = t1 - t0;
        r->bytes = got;
    }
    if (keep) close(fd);
}

int main(int argc, char **argv)
{
    char self[4096], xmemd[4200];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    self[sl > 0 ? sl : 0] = '\0';
    snprintf(xmemd, sizeof(xmemd), "%s/xmemd", dirname(self));
    int n = 2000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--xmemd") == 0) snprintf(xmemd, sizeof(xmemd), "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--n") == 0) n = atoi(argv[i + 1]);
    }
    if (n < 10) n = 10;
    char dir[] = "/tmp/xmem-metrics-scrape-XXXXXX";
    if (mkdtemp(dir) == NULL) return 1;
    char secret[128], log[128], cmd[512];
    snprintf(secret, sizeof(secret), "%s/secret", dir);
    snprintf(log, sizeof(log), "%s/xmemd.log", dir);
    int sfd = open(secret, O_WRONLY | O_CREAT | O_EXCL, 0600), rfd = open("/dev/urandom", O_RDONLY);
    uint8_t key[32];
    if (sfd < 0 || rfd < 0 || read(rfd, key, 32) != 32 || write(sfd, key, 32) != 32) return 1;
    close(sfd);
    close(rfd);
    pid_t pid = fork();
    if (pid == 0) {
        int lf = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(lf, 2);
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 1);
        execl(xmemd, xmemd, "--listen", "127.0.0.1:0", "--pool", "256M", "--secret-file", secret,
              "--log-level", "info", "--metrics", "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    xmemd_pid = pid;
    atexit(stop_xmemd);
    uint16_t mport = 0;
    for (int tries = 0; tries < 200 && mport == 0; tries++) {
        usleep(50000);
        FILE *f = fopen(log, "r");
        char line[512];
        while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
            char *at = strstr(line, "metrics on http://127.0.0.1:");
            if (at != NULL) mport = (uint16_t)atoi(at + strlen("metrics on http://127.0.0.1:"));
        }
        if (f != NULL) fclose(f);
    }
    if (mport == 0) {
        fprintf(stderr, "metrics_scrape: %s did not serve metrics (log %s)\n", xmemd, log);
        return 1;
    }
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    /* the reference answers with as many bytes as a scrape is */
    int fd = connect_to(mport);
    send(fd, http10, strlen(http10), MSG_NOSIGNAL);
    reply_len = read_response(fd, true, buf, cap);
    close(fd);
    ref_server_t once, kept;
    ref_start(&once, false);
    ref_start(&kept, true);

    row_t rows[4] = {{"raw TCP, new connection"}, {"scrape, new connection (HTTP/1.0)"},
                     {"raw TCP, kept connection"}, {"scrape, keep-alive (HTTP/1.1)"}};
    for (int i = 0; i < 4; i++) rows[i].ns = calloc((size_t)n, sizeof(uint64_t));
    measure(&rows[0], n, once.port, false, false, buf, cap);
    measure(&rows[1], n, mport, true, false, buf, cap);
    measure(&rows[2], n, kept.port, false, true, buf, cap);
    measure(&rows[3], n, mport, true, true, buf, cap);

    printf("metrics_scrape: xmemd %s, %d scrapes per row, response %zu bytes, loopback\n", xmemd, n, reply_len);
    printf("%-36s %10s %10s %10s %8s\n", "", "p50 us", "p99 us", "max us", "x raw");
    double ref50[2] = {0, 0};
    for (int i = 0; i < 4; i++) {
        uint64_t p50 = bench_quantile(rows[i].ns, (size_t)n, 0.5, 0);
        uint64_t p99 = bench_quantile(rows[i].ns, (size_t)n, 0.99, 1);
        uint64_t mx = rows[i].ns[n - 1];
        if (i % 2 == 0) ref50[i / 2] = (double)p50;
        printf("%-36s %10.1f %10.1f %10.1f %8.2f\n", rows[i].what, p50 / 1e3, p99 / 1e3, mx / 1e3,
               (double)p50 / ref50[i / 2]);
    }
    stop_xmemd();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    return 0;
}
