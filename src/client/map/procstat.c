/* The process's mapping counters in shared memory for `xmem stat --pid` (procstat.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../common/common.h"
#include "procstat.h"

xm_procstat_t *xm__procstat;

/* lock guards owner, path and the creation; xm__procstat is read without it (a pointer
 * set once per process, cleared in a forked child before it runs anything else) */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t owner;
static char path[64];
static bool hooks;

static void remove_file(void)
{
    if (owner == getpid() && path[0] != '\0') unlink(path);
}

/* a child has no mappings (MADV_DONTFORK) and no page of its parent's: it makes its own */
static void forget_in_child(void)
{
    xm__procstat = NULL;
    pthread_mutex_init(&lock, NULL); /* another thread of the parent may have held it */
    owner = 0;
    path[0] = '\0';
}

/* Remove files of this user left by processes that no longer exist (killed, or ended by
 * _exit: no exit handler ran). */
static void sweep_stale(void)
{
    DIR *d = opendir("/dev/shm");
    if (d == NULL) return;
    char prefix[48];
    int plen = snprintf(prefix, sizeof(prefix), "xmem-stat-%u-", (unsigned)getuid());
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, (size_t)plen) != 0) continue;
        char *end;
        long pid = strtol(e->d_name + plen, &end, 10);
        if (*end != '\0' || pid <= 0) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        struct stat st;
        /* only our own user's files (the name says so; the owner must agree) */
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
            st.st_uid == getuid())
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

void xm__procstat_open(void)
{
    if (xm__procstat != NULL) return;
    const char *env = getenv("XMEM_PROCSTAT");
    if (env != NULL && strcmp(env, "0") == 0) return;
    pthread_mutex_lock(&lock);
    if (xm__procstat != NULL || owner == getpid()) goto out; /* made, or failed once */
    owner = getpid();
    snprintf(path, sizeof(path), XM_PROCSTAT_PATH_FMT, (unsigned)getuid(), (int)owner);
    /* a file left by a dead process of ours with this pid is stale; another user's file
     * cannot be removed (sticky /dev/shm) and then O_EXCL refuses to use it */
    sweep_stale();
    unlink(path);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        xm_log_warn("map: no counters for xmem stat --pid (%s: %s)", path, strerror(errno));
        path[0] = '\0';
        goto out;
    }
    void *p = MAP_FAILED;
    if (ftruncate(fd, sizeof(xm_procstat_t)) == 0)
        p = mmap(NULL, sizeof(xm_procstat_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        xm_log_warn("map: no counters for xmem stat --pid (%s: %s)", path, strerror(errno));
        unlink(path);
        path[0] = '\0';
        goto out;
    }
    madvise(p, sizeof(xm_procstat_t), MADV_DONTFORK);
    xm_procstat_t *ps = p;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ps->version = XM_PROCSTAT_VERSION;
    ps->size = sizeof(xm_procstat_t);
    ps->pid = (int32_t)owner;
    ps->uid = (uint32_t)getuid();
    ps->start_unix_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    __atomic_store_n(&ps->magic, XM_PROCSTAT_MAGIC, __ATOMIC_RELEASE); /* valid from here */
    if (!hooks) {
        hooks = true;
        atexit(remove_file);
        pthread_atfork(NULL, NULL, forget_in_child);
    }
    __atomic_store_n(&xm__procstat, ps, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&lock);
}

void xm__procstat_fetch_time(uint64_t ns)
{
    xm_procstat_t *ps = __atomic_load_n(&xm__procstat, __ATOMIC_RELAXED);
    if (ps == NULL) return;
    uint64_t us = ns / 1000;
    unsigned b = 0;
    while (b < XM_PROCSTAT_BUCKETS - 1 && us >= (1ull << b)) b++;
    __atomic_fetch_add(&ps->fetches, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&ps->fetch_ns_sum, ns, __ATOMIC_RELAXED);
    __atomic_fetch_add(&ps->fetch_hist[b], 1, __ATOMIC_RELAXED);
}
