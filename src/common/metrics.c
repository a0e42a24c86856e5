/* Process-wide metrics: counters and the collector registry (metrics.h). */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "common.h"
#include "metrics.h"

xm_rpc_metrics_t xm__rpc_metrics;
atomic_uint_fast64_t xm__log_lines[4];

#define COLLECTORS_MAX 16

/* lock guards collectors and ncollectors; held while rendering, so a collector is never
 * removed while it runs */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    xm_metrics_collect_fn fn;
    void *arg;
} collectors[COLLECTORS_MAX];
static size_t ncollectors;

xm_status_t xm__metrics_add(xm_metrics_collect_fn fn, void *arg)
{
    xm_status_t status = XM_ERR_NO_SPACE;
    pthread_mutex_lock(&lock);
    if (ncollectors < COLLECTORS_MAX) {
        collectors[ncollectors].fn = fn;
        collectors[ncollectors].arg = arg;
        ncollectors++;
        status = XM_OK;
    }
    pthread_mutex_unlock(&lock);
    return status;
}

void xm__metrics_remove(xm_metrics_collect_fn fn, void *arg)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < ncollectors; i++) {
        if (collectors[i].fn == fn && collectors[i].arg == arg) {
            memmove(&collectors[i], &collectors[i + 1], (ncollectors - i - 1) * sizeof(collectors[0]));
            ncollectors--;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
}

void xm__metrics_render(FILE *out)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < ncollectors; i++) {
        collectors[i].fn(collectors[i].arg, out);
    }
    pthread_mutex_unlock(&lock);
}

void xm__metric_family(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void xm__metric_sample(FILE *out, const char *name, const char *labels, uint64_t value)
{
    if (labels != NULL && labels[0] != '\0') {
        fprintf(out, "%s{%s} %llu\n", name, labels, (unsigned long long)value);
    } else {
        fprintf(out, "%s %llu\n", name, (unsigned long long)value);
    }
}

const char *xm__metric_escape(const char *value, char *buf, size_t len)
{
    size_t j = 0;
    for (const char *p = value; *p != '\0' && j + 3 < len; p++) {
        if (*p == '\\' || *p == '"') {
            buf[j++] = '\\';
            buf[j++] = *p;
        } else if (*p == '\n') {
            buf[j++] = '\\';
            buf[j++] = 'n';
        } else {
            buf[j++] = *p;
        }
    }
    buf[j] = '\0';
    return buf;
}
