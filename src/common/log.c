/* Logging to stderr with a level and a program name. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common.h"

/* read by every thread on every log call, set by main or the first reader: an atomic,
 * relaxed (a level is one word; nothing else is published through it) */
static atomic_int log_level = -1;
static char log_ident[32] = "xmem";

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

void xm__log(xm_log_level_t level, const char *fmt, ...)
{
    if (level > xm__log_get_level()) {
        return;
    }
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    /* one fprintf per line keeps lines whole across threads */
    fprintf(stderr, "%02d:%02d:%02d.%03ld %s[%d] %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, log_ident, (int)getpid(), level_names[level], line);
}
