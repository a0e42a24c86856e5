/* common: logging, status strings, sizes, time. Knows nothing of libfabric. */
#ifndef XM_COMMON_H
#define XM_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <xmem/status.h>

#define XM_EXPORT __attribute__((visibility("default")))
#define XM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define XM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define XM_MAX(a, b) ((a) > (b) ? (a) : (b))

typedef enum xm_log_level {
    XM_LOG_ERROR = 0,
    XM_LOG_WARN = 1,
    XM_LOG_INFO = 2,
    XM_LOG_DEBUG = 3,
} xm_log_level_t;

/* Process-wide log level; starts from $XMEM_LOG_LEVEL, else warn. */
void xm__log_set_level(xm_log_level_t level);
xm_log_level_t xm__log_get_level(void);
/* "error", "warn", "info", "debug" -> level; false when unknown. */
bool xm__log_parse_level(const char *text, xm_log_level_t *level_p);
/* Set the program name printed on each line. */
void xm__log_set_ident(const char *ident);
const char *xm__log_ident(void);

/* Where log lines go: stderr (default) and a file get "ISO-8601-TIME IDENT[PID] LEVEL: MSG";
 * syslog(3) (facility daemon) and a sink get the message alone. */
typedef enum xm_log_target {
    XM_LOG_TO_STDERR = 0,
    XM_LOG_TO_FILE,
    XM_LOG_TO_SYSLOG,
    XM_LOG_TO_SINK,
} xm_log_target_t;
/* A daemon's own destination (journald, src/ops/service.c); called with the target lock held
 * shared, from any thread. */
typedef void (*xm_log_sink_fn)(xm_log_level_t level, const char *msg);
/* Switch the destination: path for a file (opened append, created 0640; XM_ERR_IO when it
 * cannot be, the old target kept), fn for a sink. */
xm_status_t xm__log_set_target(xm_log_target_t to, const char *path, xm_log_sink_fn fn);
/* Reopen the log file by its path (after logrotate moved it; SIGHUP); no-op for other
 * targets. XM_ERR_IO (logged): the old descriptor is kept. */
xm_status_t xm__log_reopen(void);
void xm__log(xm_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define xm_log_error(...) xm__log(XM_LOG_ERROR, __VA_ARGS__)
#define xm_log_warn(...) xm__log(XM_LOG_WARN, __VA_ARGS__)
#define xm_log_info(...)                                                                     \
    do {                                                                                     \
        if (xm__log_get_level() >= XM_LOG_INFO) xm__log(XM_LOG_INFO, __VA_ARGS__);           \
    } while (0)
#define xm_log_debug(...)                                                                    \
    do {                                                                                     \
        if (xm__log_get_level() >= XM_LOG_DEBUG) xm__log(XM_LOG_DEBUG, __VA_ARGS__);         \
    } while (0)

/* Monotonic clock in nanoseconds. */
static inline uint64_t xm__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* "4096", "64K", "1.5G": powers of 1024; XM_ERR_INVALID on anything else or overflow. */
xm_status_t xm__parse_size(const char *text, uint64_t *size_p);
/* Human-readable size ("64.0 GiB") into buf. */
const char *xm__format_size(uint64_t size, char *buf, size_t len);
/* Split "HOST:PORT" ("[v6]:PORT" too); XM_ERR_INVALID when malformed. */
xm_status_t xm__parse_hostport(const char *text, char *host, size_t hostlen, char *port,
                               size_t portlen);
/* Entry i (from 0) of a comma-separated HOST:PORT list (a manager group) into host/port;
 * false: no such entry, or not HOST:PORT. */
bool xm__hostport_list_pick(const char *list, size_t i, char *host, size_t hostlen, char *port,
                            size_t portlen);
/* A name is 1..XM_NAME_MAX printable, non-space ASCII bytes. */
bool xm__name_valid(const char *name);
/* Read the cluster secret (at least 16 bytes) from a file; XM_ERR_AUTH with the reason
 * in why when missing, unreadable or short. */
xm_status_t xm__secret_load(const char *path, uint8_t *secret, size_t cap, size_t *len_p,
                            char *why, size_t whylen);

#endif
