/* kv_compare: 4 KiB GET latency of memcached and redis against an xmem read,
 * one client, in one run, as one table.
 *
 * memcached and redis are driven the way their clients drive them: one
 * blocking TCP socket with TCP_NODELAY, one request, wait for the whole reply.
 * xmem is driven through libxmem's synchronous xm_read (which polls its
 * completion queue until the read is done). Every reply is parsed and its
 * 4096 bytes are compared with what was stored; a mismatch exits 1.
 *
 *   kv_compare [--memcached HOST:PORT] [--redis HOST:PORT]
 *              [--appliance HOST:PORT] [--secret-file PATH] [--provider tcp]
 *              [--iters N] [--json]
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "bench_util.h"

#define VALUE_LEN 4096
#define KEY "xmem-kv-compare"

typedef struct result {
    const char *name;
    bool ran;
    const char *why;       /* when not ran */
    double p50_us, p99_us, ops_s;
} result_t;

static uint8_t g_value[VALUE_LEN];

/* ---- a blocking TCP connection with a read buffer ------------------------- */

typedef struct conn {
    int fd;
    uint8_t buf[VALUE_LEN + 512];
    size_t head, tail; /* unread bytes are buf[head..tail) */
} conn_t;

static int conn_open(conn_t *c, const char *hostport)
{
    char host[256], port[32];
    if (bench_split_hostport(hostport, host, sizeof(host), port, sizeof(port)) != 0) {
        fprintf(stderr, "kv_compare: '%s' is not HOST:PORT\n", hostport);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "kv_compare: %s: %s\n", hostport, gai_strerror(rc));
        return -1;
    }
    c->fd = -1;
    for (struct addrinfo *a = ai; a != NULL && c->fd < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            c->fd = fd;
        } else {
            close(fd);
        }
    }
    freeaddrinfo(ai);
    if (c->fd < 0) {
        fprintf(stderr, "kv_compare: cannot connect to %s: %s\n", hostport, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* bounded: a silent server fails the run instead of hanging it */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    c->head = c->tail = 0;
    return 0;
}

static void conn_close(conn_t *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static int send_all(conn_t *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Make at least want bytes readable in the buffer (compacting it first). */
static int fill(conn_t *c, size_t want)
{
    if (want > sizeof(c->buf)) return -1;
    if (c->tail - c->head >= want) return 0;
    if (c->head > 0) {
        memmove(c->buf, c->buf + c->head, c->tail - c->head);
        c->tail -= c->head;
        c->head = 0;
    }
    while (c->tail < want) {
        ssize_t n = recv(c->fd, c->buf + c->tail, sizeof(c->buf) - c->tail, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        c->tail += (size_t)n;
    }
    return 0;
}

/* One line ending in \r\n; returns it NUL-terminated (without \r\n), or NULL. */
static char *read_line(conn_t *c)
{
    for (;;) {
        for (size_t i = c->head; i + 1 < c->tail; i++) {
            if (c->buf[i] == '\r' && c->buf[i + 1] == '\n') {
                c->buf[i] = '\0';
                char *line = (char *)c->buf + c->head;
                c->head = i + 2;
                return line;
            }
        }
        if (c->tail - c->head >= 256) return NULL; /* no header line is this long */
        if (fill(c, c->tail - c->head + 1) != 0) return NULL;
    }
}

/* Take exactly len bytes followed by \r\n; returns a pointer into the buffer. */
static const uint8_t *read_block(conn_t *c, size_t len)
{
    if (fill(c, len + 2) != 0) return NULL;
    const uint8_t *p = c->buf + c->head;
    if (p[len] != '\r' || p[len + 1] != '\n') return NULL;
    c->head += len + 2;
    return p;
}

/* ---- memcached text protocol ---------------------------------------------- */

static int mc_set(conn_t *c)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof(hdr), "set %s 0 0 %d\r\n", KEY, VALUE_LEN);
    if (send_all(c, hdr, (size_t)n) != 0 || send_all(c, g_value, VALUE_LEN) != 0 ||
        send_all(c, "\r\n", 2) != 0) {
        return -1;
    }
    char *line = read_line(c);
    if (line == NULL || strcmp(line, "STORED") != 0) {
        fprintf(stderr, "kv_compare: memcached set: %s\n", line != NULL ? line : "no reply");
        return -1;
    }
    return 0;
}

/* GET: "VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n"; data points into the buffer. */
static int mc_get(conn_t *c, const uint8_t **data)
{
    static const char req[] = "get " KEY "\r\n";
    if (send_all(c, req, sizeof(req) - 1) != 0) return -1;
    char *line = read_line(c);
    char key[128];
    unsigned flags;
    unsigned long bytes;
    if (line == NULL || sscanf(line, "VALUE %127s %u %lu", key, &flags, &bytes) != 3 ||
        strcmp(key, KEY) != 0 || bytes != VALUE_LEN) {
        fprintf(stderr, "kv_compare: memcached get: unexpected reply '%s'\n",
                line != NULL ? line : "(none)");
        return -1;
    }
    /* data, \r\n and END\r\n in the buffer at once, so the value stays where it is */
    if (fill(c, VALUE_LEN + 7) != 0) return -1;
    const uint8_t *p = c->buf + c->head;
    if (memcmp(p + VALUE_LEN, "\r\nEND\r\n", 7) != 0) {
        fprintf(stderr, "kv_compare: memcached get: no END after the value\n");
        return -1;
    }
    c->head += VALUE_LEN + 7;
    *data = p;
    return 0;
}

/* ---- redis RESP ------------------------------------------------------------ */

static int redis_set(conn_t *c)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof(hdr), "*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%d\r\n", strlen(KEY), KEY,
                     VALUE_LEN);
    if (send_all(c, hdr, (size_t)n) != 0 || send_all(c, g_value, VALUE_LEN) != 0 ||
        send_all(c, "\r\n", 2) != 0) {
        return -1;
    }
    char *line = read_line(c);
    if (line == NULL || strcmp(line, "+OK") != 0) {
        fprintf(stderr, "kv_compare: redis SET: %s\n", line != NULL ? line : "no reply");
        return -1;
    }
    return 0;
}

/* GET: "$4096\r\n<data>\r\n". */
static int redis_get(conn_t *c, const uint8_t **data)
{
    static char req[64];
    static size_t reqlen;
    if (reqlen == 0) {
        reqlen = (size_t)snprintf(req, sizeof(req), "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n", strlen(KEY), KEY);
    }
    if (send_all(c, req, reqlen) != 0) return -1;
    char *line = read_line(c);
    char *end;
    long len = line != NULL && line[0] == '$' ? strtol(line + 1, &end, 10) : -2;
    if (line == NULL || line[0] != '$' || *end != '\0' || len != VALUE_LEN) {
        fprintf(stderr, "kv_compare: redis GET: unexpected reply '%s'\n", line != NULL ? line : "(none)");
        return -1;
    }
    const uint8_t *p = read_block(c, VALUE_LEN);
    if (p == NULL) return -1;
    *data = p;
    return 0;
}

/* ---- timing loops ---------------------------------------------------------- */

typedef int (*get_fn)(conn_t *c, const uint8_t **data);

static int fill_result(result_t *res, uint64_t *ns, size_t iters, uint64_t elapsed)
{
    res->p50_us = (double)bench_quantile(ns, iters, 0.50, 0) / 1000.0;
    res->p99_us = (double)bench_quantile(ns, iters, 0.99, 1) / 1000.0;
    res->ops_s = (double)iters / ((double)elapsed / 1e9);
    res->ran = true;
    return 0;
}

/* Returns 0, 1 on a wrong value, 2 on a transport failure. */
static int run_tcp_kv(result_t *res, const char *hostport, int (*set)(conn_t *), get_fn get,
                      size_t iters)
{
    static conn_t c;
    if (conn_open(&c, hostport) != 0) return 2;
    int rc = 2;
    uint64_t *ns = malloc(iters * sizeof(*ns));
    if (ns == NULL || set(&c) != 0) goto out;
    size_t warm = iters / 10;
    for (size_t i = 0; i < warm; i++) {
        const uint8_t *d;
        if (get(&c, &d) != 0) goto out;
        if (memcmp(d, g_value, VALUE_LEN) != 0) {
            fprintf(stderr, "kv_compare: %s returned different bytes than were set\n", res->name);
            rc = 1;
            goto out;
        }
    }
    uint64_t start = bench_now_ns();
    for (size_t i = 0; i < iters; i++) {
        const uint8_t *d;
        uint64_t t0 = bench_now_ns();
        if (get(&c, &d) != 0) goto out;
        ns[i] = bench_now_ns() - t0;
        if (memcmp(d, g_value, VALUE_LEN) != 0) {
            fprintf(stderr, "kv_compare: %s returned different bytes than were set (GET %zu)\n",
                    res->name, i);
            rc = 1;
            goto out;
        }
    }
    fill_result(res, ns, iters, bench_now_ns() - start);
    rc = 0;
out:
    free(ns);
    conn_close(&c);
    return rc;
}

static int run_xmem(result_t *res, const xm_connect_opts_t *opts, size_t iters, char *mode,
                    size_t modelen)
{
    xm_ctx_h ctx;
    xm_status_t s = xm_connect(opts, &ctx);
    if (s != XM_OK) {
        fprintf(stderr, "kv_compare: xmem connect: %s: %s\n", xm_status_str(s), xm_last_error(NULL));
        return 2;
    }
    xm_appliance_info_t ai;
    if (xm_appliance_stat(ctx, &ai) == XM_OK) {
        snprintf(mode, modelen, "%s", ai.provider);
    }
    int rc = 2;
    uint64_t *ns = malloc(iters * sizeof(*ns));
    uint8_t *buf = aligned_alloc(4096, VALUE_LEN);
    xm_region_h r = NULL;
    if (ns == NULL || buf == NULL) goto out;
    s = xm_region_create(ctx, VALUE_LEN, NULL, &r);
    if (s != XM_OK) {
        fprintf(stderr, "kv_compare: xmem region create: %s: %s\n", xm_status_str(s), xm_last_error(ctx));
        goto out;
    }
    s = xm_write(r, 0, g_value, VALUE_LEN);
    size_t warm = iters / 10;
    for (size_t i = 0; i < warm && s == XM_OK; i++) {
        s = xm_read(r, 0, buf, VALUE_LEN);
        if (s == XM_OK && memcmp(buf, g_value, VALUE_LEN) != 0) {
            fprintf(stderr, "kv_compare: xmem read returned different bytes than were written\n");
            rc = 1;
            goto out;
        }
    }
    if (s != XM_OK) {
        fprintf(stderr, "kv_compare: xmem: %s: %s\n", xm_status_str(s), xm_last_error(ctx));
        goto out;
    }
    uint64_t start = bench_now_ns();
    for (size_t i = 0; i < iters; i++) {
        memset(buf, 0, 64); /* a read that did nothing cannot pass the check */
        uint64_t t0 = bench_now_ns();
        s = xm_read(r, 0, buf, VALUE_LEN);
        ns[i] = bench_now_ns() - t0;
        if (s != XM_OK) {
            fprintf(stderr, "kv_compare: xmem read: %s: %s\n", xm_status_str(s), xm_last_error(ctx));
            goto out;
        }
        if (memcmp(buf, g_value, VALUE_LEN) != 0) {
            fprintf(stderr, "kv_compare: xmem read returned different bytes than were written (read %zu)\n", i);
            rc = 1;
            goto out;
        }
    }
    fill_result(res, ns, iters, bench_now_ns() - start);
    rc = 0;
out:
    if (r != NULL) {
        uint64_t id = xm_region_id(r);
        xm_region_close(r);
        xm_region_destroy(ctx, id, NULL);
    }
    free(ns);
    free(buf);
    xm_disconnect(ctx);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kv_compare [--memcached HOST:PORT] [--redis HOST:PORT]\n"
            "                  [--appliance HOST:PORT] [--secret-file PATH] [--provider tcp]\n"
            "                  [--iters N] [--json]\n"
            "4 KiB value GETs, one client, blocking sockets for memcached/redis, xm_read for xmem.\n"
            "Without --appliance, xmem uses $XMEM_APPLIANCE (skipped when that is unset too).\n");
}

int main(int argc, char **argv)
{
    const char *mc = NULL, *rd = NULL, *appl = NULL, *secret = NULL, *prov = NULL;
    size_t iters = 20000;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (has && strcmp(a, "--memcached") == 0) {
            mc = argv[++i];
        } else if (has && strcmp(a, "--redis") == 0) {
            rd = argv[++i];
        } else if (has && strcmp(a, "--appliance") == 0) {
            appl = argv[++i];
        } else if (has && strcmp(a, "--secret-file") == 0) {
            secret = argv[++i];
        } else if (has && strcmp(a, "--provider") == 0) {
            prov = argv[++i];
        } else if (has && strcmp(a, "--iters") == 0) {
            char *end;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || v < 10 || v > 100000000ul) {
                fprintf(stderr, "kv_compare: --iters: a number from 10 to 100000000\n");
                return 2;
            }
            iters = v;
        } else {
            fprintf(stderr, "kv_compare: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (appl == NULL) {
        const char *env = getenv("XMEM_APPLIANCE");
        if (env != NULL && env[0] != '\0') appl = env;
    }
    /* a value that no short pattern repeats: a stale or shifted reply fails the check */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < VALUE_LEN; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        g_value[i] = (uint8_t)(x >> 24);
    }

    result_t res[3] = {{.name = "memcached", .why = "no --memcached given"},
                       {.name = "redis", .why = "no --redis given"},
                       {.name = "xmem", .why = "no --appliance given (nor XMEM_APPLIANCE)"}};
    char mode[XM_NAME_MAX + 1] = "?";
    int rc = 0, r;
    if (mc != NULL) {
        r = run_tcp_kv(&res[0], mc, mc_set, mc_get, iters);
        if (r != 0) { res[0].why = "failed (see above)"; rc = rc > 0 && rc < r ? rc : r; }
    }
    if (rd != NULL) {
        r = run_tcp_kv(&res[1], rd, redis_set, redis_get, iters);
        if (r != 0) { res[1].why = "failed (see above)"; rc = rc > 0 && rc < r ? rc : r; }
    }
    if (appl != NULL) {
        xm_connect_opts_t opts = {.size = sizeof(xm_connect_opts_t), .appliance = appl, .secret_file = secret, .provider = prov};
        r = run_xmem(&res[2], &opts, iters, mode, sizeof(mode));
        if (r != 0) { res[2].why = "failed (see above)"; rc = rc > 0 && rc < r ? rc : r; }
    }

    double xp50 = res[2].ran ? res[2].p50_us : NAN;
    if (json) {
        printf("{\"value_bytes\":%d,\"iters\":%zu,\"xmem_provider\":\"%s\",\"rows\":[", VALUE_LEN,
               iters, mode);
        for (int i = 0; i < 3; i++) {
            printf("%s{\"peer\":\"%s\",\"ran\":%s", i ? "," : "", res[i].name, res[i].ran ? "true" : "false");
            if (res[i].ran) {
                printf(",\"p50_us\":%.2f,\"p99_us\":%.2f,\"ops_s\":%.0f", res[i].p50_us,
                       res[i].p99_us, res[i].ops_s);
                if (res[2].ran) printf(",\"p50_over_xmem_p50\":%.2f", res[i].p50_us / xp50);
            } else {
                printf(",\"skipped\":\"%s\"", res[i].why);
            }
            printf("}");
        }
        printf("]}\n");
    } else {
        printf("kv_compare: %d-byte value GETs, one client, %zu timed (+%zu warm-up) each; "
               "memcached/redis: blocking socket, TCP_NODELAY; xmem: xm_read over %s\n",
               VALUE_LEN, iters, iters / 10, mode);
        printf("%-10s %10s %10s %10s %18s\n", "peer", "p50 us", "p99 us", "ops/s", "p50 / xmem p50");
        for (int i = 0; i < 3; i++) {
            if (!res[i].ran) {
                printf("%-10s skipped: %s\n", res[i].name, res[i].why);
                continue;
            }
            char ratio[32] = "-";
            if (res[2].ran) snprintf(ratio, sizeof(ratio), "%.2fx", res[i].p50_us / xp50);
            printf("%-10s %10.1f %10.1f %10.0f %18s\n", res[i].name, res[i].p50_us, res[i].p99_us,
                   res[i].ops_s, ratio);
        }
    }
    return rc;
}
