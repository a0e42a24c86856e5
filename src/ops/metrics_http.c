/* The metrics endpoint: Prometheus text format at GET /metrics, served by libmicrohttpd
 * on a thread of its own that sleeps in epoll while nobody scrapes. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <protobuf-c/protobuf-c.h>
#include <xmem/version.h>

#include "../common/common.h"
#include "../common/metrics.h"
#include "../rpc/rpc.h"
#include "ops.h"
#include "xmem.pb-c.h"

struct xm_metrics_server {
    struct MHD_Daemon *mhd;
    int fd;
    uint64_t start_time;             /* unix seconds */
};

/* The control server's families: requests and failures by kind, sessions, log lines. */
static void collect_common(void *arg, FILE *out)
{
    xm_metrics_server_t *s = arg;
    char labels[128];
    xm__metric_family(out, "xmem_build_info", "gauge", "version of the running program");
    xm__metric_sample(out, "xmem_build_info", "version=\"" XM_VERSION_STRING "\"", 1);
    xm__metric_family(out, "xmem_start_time_seconds", "gauge", "when the process started (unix time)");
    xm__metric_sample(out, "xmem_start_time_seconds", NULL, s->start_time);
    static const char *const fams[2][2] = {
        {"xmem_control_requests_total", "control requests served, by message kind"},
        {"xmem_control_errors_total", "control requests answered with an error, by message kind"},
    };
    for (int f = 0; f < 2; f++) {
        xm__metric_family(out, fams[f][0], "counter", fams[f][1]);
        atomic_uint_fast64_t *v = f == 0 ? xm__rpc_metrics.requests : xm__rpc_metrics.failed;
        for (unsigned k = 0; k < XM_METRICS_KINDS; k++) {
            uint64_t n = xm__metrics_read(&v[k]);
            if (n == 0) continue;
            const ProtobufCFieldDescriptor *fd =
                k == 0 ? NULL : protobuf_c_message_descriptor_get_field(&xmem__msg__descriptor, k);
            snprintf(labels, sizeof(labels), "kind=\"%s\"", fd != NULL ? fd->name : "other");
            xm__metric_sample(out, fams[f][0], labels, n);
        }
    }
    xm__metric_family(out, "xmem_sessions", "gauge", "authenticated control sessions open");
    int64_t open = (int64_t)atomic_load_explicit(&xm__rpc_metrics.sessions, memory_order_relaxed);
    xm__metric_sample(out, "xmem_sessions", NULL, open > 0 ? (uint64_t)open : 0);
    xm__metric_family(out, "xmem_sessions_total", "counter", "control sessions authenticated");
    xm__metric_sample(out, "xmem_sessions_total", NULL, xm__metrics_read(&xm__rpc_metrics.sessions_total));
    xm__metric_family(out, "xmem_handshake_failures_total", "counter",
                      "control connections that failed to authenticate");
    xm__metric_sample(out, "xmem_handshake_failures_total", NULL,
                      xm__metrics_read(&xm__rpc_metrics.handshake_failures));
    xm__metric_family(out, "xmem_connections_refused_total", "counter",
                      "control connections refused by the connection limits");
    xm__metric_sample(out, "xmem_connections_refused_total", NULL, xm__metrics_read(&xm__rpc_metrics.refused));
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    xm__metric_family(out, "xmem_log_messages_total", "counter", "log lines written, by level");
    for (int i = 0; i < 4; i++) {
        snprintf(labels, sizeof(labels), "level=\"%s\"", levels[i]);
        xm__metric_sample(out, "xmem_log_messages_total", labels, xm__metrics_read(&xm__log_lines[i]));
    }
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code, const char *type,
                             char *body, size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        if (owned) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    static char not_found[] = "not found: metrics are at /metrics\n";
    static char bad_method[] = "only GET and HEAD\n";
    static char no_memory[] = "out of memory\n";
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0, head = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (!get && !head) {
        /* a body is not wanted: answering at once makes MHD discard it */
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", bad_method,
                     sizeof(bad_method) - 1, false);
    }
    /* the first call comes with the headers: answering only on the second (the request
     * complete) keeps the connection open for the next scrape; an early answer closes it */
    static int seen;
    if (*con_cls == NULL) {
        *con_cls = &seen;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* a GET with a body: ignored */
        return MHD_YES;
    }
    if (strcmp(url, "/metrics") != 0) {
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", not_found, sizeof(not_found) - 1, false);
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (out == NULL) {
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", no_memory,
                     sizeof(no_memory) - 1, false);
    }
    collect_common(cls, out);
    xm__metrics_render(out);
    if (fclose(out) != 0) {
        free(buf);
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", no_memory,
                     sizeof(no_memory) - 1, false);
    }
    return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf, len, true);
}

xm_status_t xm__metrics_server_start(const char *host, const char *port, xm_metrics_server_t **s_p,
                                     char *bound, size_t boundlen)
{
    xm_metrics_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    uint16_t bport = 0;
    xm_status_t status = rpc_listen(host, port, &s->fd, &bport);
    if (status != XM_OK) {
        free(s);
        return status;
    }
    s->start_time = (uint64_t)time(NULL);
    /* few connections, short timeouts, little memory: a scraper, not a web server */
    s->mhd = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD, 0, NULL, NULL, handle, s,
                              MHD_OPTION_LISTEN_SOCKET, s->fd,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
                              MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)16,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768,
                              MHD_OPTION_END);
    if (s->mhd == NULL) {
        xm_log_error("metrics: cannot start the HTTP server on %s:%s", host, port);
        close(s->fd);
        free(s);
        return XM_ERR_IO;
    }
    snprintf(bound, boundlen, strchr(host, ':') != NULL ? "[%s]:%u" : "%s:%u", host, bport);
    *s_p = s;
    return XM_OK;
}

void xm__metrics_server_stop(xm_metrics_server_t *s)
{
    if (s == NULL) return;
    MHD_stop_daemon(s->mhd); /* closes the listen socket too (it was never quiesced) */
    free(s);
}

int xm__ops_metrics_start(const xm_config_t *cfg, const char *prog, xm_metrics_server_t **s_p)
{
    *s_p = NULL;
    const char *m = xm__config_get(cfg, "metrics");
    if (m == NULL || m[0] == '\0') return 0;
    char host[256], port[16], bound[300];
    if (xm__config_get_hostport(cfg, prog, "metrics", host, sizeof(host), port, sizeof(port)) != 0)
        return 1;
    if (xm__metrics_server_start(host, port, s_p, bound, sizeof(bound)) != XM_OK) {
        xm_log_error("metrics: cannot serve on %s", m);
        return 1;
    }
    xm_log_info("metrics on http://%s/metrics", bound);
    return 0;
}
