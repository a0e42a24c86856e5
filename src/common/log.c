/* Logging with a level and a program name: to stderr (default), a file (reopened on
 * SIGHUP for logrotate), syslog(3), or a sink a daemon installs (journald). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "common.h"
#include "metrics.h"

/* read by every thread on every log call, set by main or the first reader: an atomic,
 * relaxed (a level is one word; nothing else is published through it) */
static atomic_int log_level = -1;
static char log_ident[32] = "xmem";

/*
 * Where lines go. target_lock (a rwlock) guards target, file_fd, file_path and sink:
 * every log call holds it shared while writing, so a reopen (exclusive) never closes
 * a descriptor another thread is writing to. Set up by main before threads start;
 * reopened from the signal loop (SIGHUP).
 */
static pthread_rwlock_t target_lock = PTHREAD_RWLOCK_INITIALIZER;
static xm_log_target_t target = XM_LOG_TO_STDERR;
static int file_fd = -1;
static char file_path[4096];
static xm_log_sink_fn sink;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

bool xm__log_parse_level(const char *text, xm_log_level_t *level_p)
{
    for (size_t i = 0; i < XM_ARRAY_LEN(level_names); i++) {
        if (text != NULL && strcasecmp(text, level_names[i]) == 0) {
            *level_p = (xm_log_level_t)i;
            return true;
        }
    }
    return false;
}

xm_log_level_t xm__log_get_level(void)
{
    int level = atomic_load_explicit(&log_level, memory_order_relaxed);
    if (level < 0) {
        xm_log_level_t parsed = XM_LOG_WARN;
        xm__log_parse_level(getenv("XMEM_LOG_LEVEL"), &parsed);
        /* first reader wins; a level set meanwhile by xm__log_set_level is kept */
        int expected = -1;
        if (!atomic_compare_exchange_strong_explicit(&log_level, &expected, (int)parsed,
                                                     memory_order_relaxed, memory_order_relaxed)) {
            return (xm_log_level_t)expected;
        }
        level = (int)parsed;
    }
    return (xm_log_level_t)level;
}

void xm__log_set_level(xm_log_level_t level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

void xm__log_set_ident(const char *ident)
{
    snprintf(log_ident, sizeof(log_ident), "%s", ident);
}

const char *xm__log_ident(void)
{
    return log_ident;
}

static int open_log_file(const char *path)
{
    /* 0640: operators of the daemon's group may read it, others not */
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
}

xm_status_t xm__log_set_target(xm_log_target_t to, const char *path, xm_log_sink_fn fn)
{
    int fd = -1;
    if (to == XM_LOG_TO_FILE) {
        if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(file_path)) {
            return XM_ERR_INVALID;
        }
        fd = open_log_file(path);
        if (fd < 0) {
            return XM_ERR_IO;
        }
    } else if (to == XM_LOG_TO_SINK && fn == NULL) {
        return XM_ERR_INVALID;
    }
    if (to == XM_LOG_TO_SYSLOG) {
        openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
    }
    pthread_rwlock_wrlock(&target_lock);
    int old = file_fd;
    if (target == XM_LOG_TO_SYSLOG && to != XM_LOG_TO_SYSLOG) closelog();
    target = to;
    file_fd = fd;
    sink = fn;
    if (to == XM_LOG_TO_FILE) snprintf(file_path, sizeof(file_path), "%s", path);
    else file_path[0] = '\0';
    pthread_rwlock_unlock(&target_lock);
    if (old >= 0) close(old);
    return XM_OK;
}

xm_status_t xm__log_reopen(void)
{
    char path[sizeof(file_path)];
    pthread_rwlock_rdlock(&target_lock);
    bool is_file = target == XM_LOG_TO_FILE;
    snprintf(path, sizeof(path), "%s", file_path);
    pthread_rwlock_unlock(&target_lock);
    if (!is_file) return XM_OK;
    int fd = open_log_file(path);
    if (fd < 0) {
        int err = errno;
        /* the old file keeps the lines: nothing is lost, the operator is told */
        errno = err;
        xm_log_error("cannot reopen log file %s: %m (still writing to the old one)", path);
        return XM_ERR_IO;
    }
    pthread_rwlock_wrlock(&target_lock);
    int old = file_fd;
    file_fd = fd;
    pthread_rwlock_unlock(&target_lock);
    if (old >= 0) close(old);
    return XM_OK;
}

void xm__log(xm_log_level_t level, const char *fmt, ...)
{
    if (level > xm__log_get_level()) {
        return;
    }
    xm__metrics_inc(&xm__log_lines[level]);
    int saved_errno = errno; /* for %m, and untouched for the caller */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    errno = saved_errno;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_rwlock_rdlock(&target_lock);
    if (target == XM_LOG_TO_SYSLOG) {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        syslog(prio[level], "%s", msg); /* syslog stamps the time and ident itself */
    } else if (target == XM_LOG_TO_SINK) {
        sink(level, msg);
    } else {
        /* ISO 8601 with date, milliseconds and the UTC offset of local time:
         * 2026-12-06T06:56:06.123+00:00 */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        long off = tm.tm_gmtoff / 60;
        char sign = off < 0 ? '-' : '+';
        if (off < 0) off = -off;
        char line[1200];
        int n = snprintf(line, sizeof(line),
                         "%04d-%02d-%02dT%02d:%02d:%02d.%03ld%c%02ld:%02ld %s[%d] %s: %s\n",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, ts.tv_nsec / 1000000, sign, off / 60, off % 60, log_ident,
                         (int)getpid(), level_names[level], msg);
        if (n >= (int)sizeof(line)) {
            n = (int)sizeof(line) - 1;
            line[n - 1] = '\n';
        }
        /* one write per line keeps lines whole across threads (O_APPEND for files) */
        int fd = target == XM_LOG_TO_FILE && file_fd >= 0 ? file_fd : STDERR_FILENO;
        ssize_t w = write(fd, line, (size_t)n);
        (void)w; /* nowhere to report a failed log write */
    }
    pthread_rwlock_unlock(&target_lock);
    errno = saved_errno;
}
