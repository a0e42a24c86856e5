/**
 * @file procstat.h
 * @brief The counters a process using mapped memory (::xm_map, `xmem run`) publishes
 *        for `xmem stat --pid PID`: the layout of /dev/shm/xmem-stat-UID-PID.
 *
 * libxmem creates the file (mode 0600, owned by the process's user) at the process's
 * first ::xm_map and removes it at exit; XMEM_PROCSTAT=0 in the environment turns it
 * off. Counters are updated with relaxed atomic adds where the events happen; a reader
 * maps the file read-only and samples them. Only the same user (or root) can read it.
 */
#ifndef XMEM_PROCSTAT_H
#define XMEM_PROCSTAT_H

#include <stdint.h>

/** "XMEMSTAT" in the file's first 8 bytes (little-endian). */
#define XM_PROCSTAT_MAGIC 0x544154534d454d58ull
/** Layout version; a reader refuses others. */
#define XM_PROCSTAT_VERSION 1
/** printf format of the file's path: uid, pid. */
#define XM_PROCSTAT_PATH_FMT "/dev/shm/xmem-stat-%u-%d"
/** Fetch-latency buckets: bucket i counts fetches that took less than 2^i microseconds
 * (and at least 2^(i-1)); the last counts the rest (>= 2^(XM_PROCSTAT_BUCKETS-2) us). */
#define XM_PROCSTAT_BUCKETS 24

/** The file's content. */
typedef struct xm_procstat {
    uint64_t magic;             /**< XM_PROCSTAT_MAGIC */
    uint32_t version;           /**< XM_PROCSTAT_VERSION */
    uint32_t size;              /**< sizeof(xm_procstat_t) of the writer */
    int32_t pid;                /**< the process */
    uint32_t uid;               /**< its user */
    uint64_t start_unix_ns;     /**< when the file was made (CLOCK_REALTIME) */
    uint64_t mappings;          /**< live mappings */
    uint64_t faults;            /**< page faults served from an appliance */
    uint64_t fetched_bytes;     /**< bytes read from appliances (faults and read-ahead) */
    uint64_t readahead_blocks;  /**< fetch units read ahead of a sequential access */
    uint64_t evictions;         /**< fetch units dropped from the local cache */
    uint64_t writeback_pages;   /**< 4 KiB pages written back (eviction and ::xm_sync) */
    uint64_t writeback_errors;  /**< write-backs that failed */
    uint64_t resident_bytes;    /**< bytes of the mappings in local memory now */
    uint64_t fetches;           /**< fetches timed (each fault's or read-ahead's read) */
    uint64_t fetch_ns_sum;      /**< their total time, ns */
    uint64_t fetch_hist[XM_PROCSTAT_BUCKETS]; /**< their latencies (see XM_PROCSTAT_BUCKETS) */
    uint64_t reserved_[16];     /**< zero; room for more counters */
} xm_procstat_t;

#endif /* XMEM_PROCSTAT_H */
