/* The process's mapping counters in /dev/shm (include/xmem/procstat.h): one relaxed atomic
 * add per event into a page of shared memory, nothing when it is off (XMEM_PROCSTAT=0) or
 * could not be made. */
#ifndef XM_MAP_PROCSTAT_H
#define XM_MAP_PROCSTAT_H

#include <stdint.h>

#include <xmem/procstat.h>

extern xm_procstat_t *xm__procstat;

/* Make the file (once per process; at the first xm_map). */
void xm__procstat_open(void);
/* A fetch took ns: the histogram. */
void xm__procstat_fetch_time(uint64_t ns);

#define XM__PS_ADD(field, n)                                                                 \
    do {                                                                                     \
        xm_procstat_t *ps_ = __atomic_load_n(&xm__procstat, __ATOMIC_RELAXED);               \
        if (ps_ != NULL) __atomic_fetch_add(&ps_->field, (uint64_t)(n), __ATOMIC_RELAXED);   \
    } while (0)
#define XM__PS_SUB(field, n)                                                                 \
    do {                                                                                     \
        xm_procstat_t *ps_ = __atomic_load_n(&xm__procstat, __ATOMIC_RELAXED);               \
        if (ps_ != NULL) __atomic_fetch_sub(&ps_->field, (uint64_t)(n), __ATOMIC_RELAXED);   \
    } while (0)

/* A demand fetch's latency as the faulting thread sees it (post to data in hand): T0 before
 * the read is posted (0 when the counters are off), FETCHED once its data is in. */
#define XM__PS_T0() (__atomic_load_n(&xm__procstat, __ATOMIC_RELAXED) != NULL ? xm__now_ns() : 0)
#define XM__PS_FETCHED(t0)                                                                   \
    do {                                                                                     \
        if ((t0) != 0) xm__procstat_fetch_time(xm__now_ns() - (t0));                         \
    } while (0)

#endif
