/* The shm provider (one host): our own endpoint names in /dev/shm, the doorbell an idle
 * target sleeps on, and the naps between. Everything shm-only lives here; removing shm is
 * removing this file and its line in ofi.c's providers[]. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <rdma/fi_cm.h>
#include <rdma/fi_endpoint.h>

#include "../common/common.h"
#include "ofi.h"

/*
 * Doorbell of a target over shm. shm's completion queue has no wait object, so an idle
 * target sleeps on a futex in a page of its own in /dev/shm (named after its endpoint, so
 * a client finds it from the address it was given) and a client that posts while it
 * sleeps rings it. Dekker-style: the target sets sleeping, fences, polls once more, then
 * waits on seq; a client posts (the command is in the target's queue when fi_* returns),
 * fences, and rings when it sees sleeping. Either the target's last poll sees the command
 * or the client sees sleeping. Anything not rung (a transfer's later segments) is still
 * served within the wait's timeout.
 */
#define BELL_MAGIC 0x786d656d62656c6cull /* "xmembell" */
#define BELL_SUFFIX ".bell"
#define BELL_PEERS 1024 /* initiator: peers (fi_addr_t from 0) that can ring */

/* The shm endpoints' names: SHM_NAME_PREFIX PID "." NONCE, a file each in /dev/shm. */
#define SHM_NAME_PREFIX "xmem-"

/* after the spin, naps this long before sleeping on the doorbell (a large transfer's later
 * segments are not rung; the naps keep them moving between a client's polls) */
#define NAP_PHASE_NS 20000000ull
#define NAP_NS 20000L
/* an asleep target still polls this often (what nothing rang: see the doorbell) */
#define BELL_WAIT_NS 100000000L

struct bell {
    _Atomic uint32_t seq;      /* futex word: bumped by every ring */
    _Atomic uint32_t sleeping; /* the target is (about to be) asleep on seq */
    uint64_t magic;
    _Atomic uint64_t rings;    /* statistics: rings seen */
};

/* fab->prov over shm. A target's bell is its own; an initiator's peers' bells are written
 * once each by net_peer_insert (under lock) and read by posts from any thread. */
typedef struct shm_state {
    struct bell *bell;                         /* target: the doorbell its clients ring */
    _Atomic(struct bell *) peer[BELL_PEERS];   /* initiator: its peers' doorbells, by fi_addr_t */
    pthread_mutex_t lock;                      /* serialises peer inserts only */
} shm_state_t;

static long futex(_Atomic uint32_t *word, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)word, op, val, ts, NULL, 0);
}

/* The doorbell's name for an shm endpoint address we named (SHM_NAME_PREFIX...); false
 * for any other address. */
static bool bell_name(const uint8_t *addr, size_t len, char *out, size_t outlen)
{
    size_t n = strnlen((const char *)addr, len);
    if (n < 6 || n + sizeof(BELL_SUFFIX) + 1 > outlen || memcmp(addr, SHM_NAME_PREFIX, 5) != 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = (char)addr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '.' || c == '-')) return false;
    }
    snprintf(out, outlen, "/%.*s" BELL_SUFFIX, (int)n, (const char *)addr);
    return true;
}

/* Target: create, size and map our doorbell (0600: our user's processes only). */
static xm_status_t bell_create(net_fabric_t *fab, shm_state_t *st)
{
    char name[XM_FABRIC_ADDR_MAX + 16];
    if (!bell_name(fab->addr, fab->addr_len, name, sizeof(name))) {
        xm_log_error("shm endpoint name is not ours; no doorbell");
        return XM_ERR_TRANSPORT;
    }
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        xm_log_error("cannot create the doorbell %s: %m", name);
        return XM_ERR_IO;
    }
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)sizeof(struct bell)) == 0) {
        p = mmap(NULL, sizeof(struct bell), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    close(fd);
    if (p == MAP_FAILED) {
        xm_log_error("cannot map the doorbell %s: %m", name);
        shm_unlink(name);
        return XM_ERR_IO;
    }
    st->bell = p;
    st->bell->magic = BELL_MAGIC;
    return XM_OK;
}

/* Remove the /dev/shm files of our endpoints whose process is gone (killed before it
 * could close them). Only names we give, and only when the pid is not running. */
static void reap_stale(void)
{
    DIR *d = opendir("/dev/shm");
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, SHM_NAME_PREFIX, strlen(SHM_NAME_PREFIX)) != 0) continue;
        char *end;
        long pid = strtol(e->d_name + strlen(SHM_NAME_PREFIX), &end, 10);
        if (pid > 0 && *end == '.' && kill((pid_t)pid, 0) != 0 && errno == ESRCH) shm_unlink(e->d_name);
    }
    closedir(d);
}

static int shm_getinfo(struct fi_info *hints, net_role_t role, const char *host,
                       const char *service, struct fi_info **info_p)
{
    (void)host;
    (void)service;
    if (role == NET_ROLE_TARGET) hints->caps |= FI_RMA_EVENT; /* the loop sees remote accesses */
    return fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, info_p);
}

/* shm names its region in /dev/shm "PID:EP:DOMAIN" by default: a process killed with -9
 * leaves its file, and a later process given the same pid cannot enable an endpoint
 * (EBUSY). Our own unique name, and the files of our dead processes go. */
static xm_status_t shm_before_enable(net_fabric_t *fab, net_role_t role)
{
    (void)role;
    reap_stale();
    char name[64];
    uint64_t nonce;
    rpc_random(&nonce, sizeof(nonce));
    snprintf(name, sizeof(name), SHM_NAME_PREFIX "%d.%016llx", (int)getpid(), (unsigned long long)nonce);
    int rc = fi_setname(&fab->ep->fid, name, strlen(name) + 1);
    return rc == 0 ? XM_OK : ofi_fail("fi_setname", rc);
}

static xm_status_t shm_after_enable(net_fabric_t *fab, net_role_t role)
{
    shm_state_t *st = calloc(1, sizeof(*st));
    if (st == NULL) return XM_ERR_NO_MEMORY;
    pthread_mutex_init(&st->lock, NULL);
    fab->prov = st;
    return role == NET_ROLE_TARGET ? bell_create(fab, st) : XM_OK;
}

static void shm_close(net_fabric_t *fab)
{
    shm_state_t *st = fab->prov;
    if (st == NULL) return;
    if (st->bell != NULL) {
        char name[XM_FABRIC_ADDR_MAX + 16];
        if (bell_name(fab->addr, fab->addr_len, name, sizeof(name))) shm_unlink(name);
        munmap(st->bell, sizeof(*st->bell));
    }
    for (size_t i = 0; i < BELL_PEERS; i++) {
        struct bell *b = atomic_load(&st->peer[i]);
        if (b != NULL) munmap(b, sizeof(*b));
    }
    pthread_mutex_destroy(&st->lock);
    free(st);
    fab->prov = NULL;
}

/* Initiator: map the peer's doorbell, if it has one (an appliance of an older build has
 * none: it naps instead and needs no ring). */
static void shm_peer_inserted(net_fabric_t *fab, const uint8_t *addr, size_t len, fi_addr_t peer)
{
    shm_state_t *st = fab->prov;
    char name[XM_FABRIC_ADDR_MAX + 16];
    if (st == NULL || peer >= BELL_PEERS || !bell_name(addr, len, name, sizeof(name))) {
        xm_log_debug("shm peer %llu: no doorbell to look for", (unsigned long long)peer);
        return;
    }
    pthread_mutex_lock(&st->lock);
    if (atomic_load(&st->peer[peer]) != NULL) goto out;
    int fd = shm_open(name, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) goto out;
    struct stat sb;
    void *p = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_uid == geteuid() &&
        (size_t)sb.st_size >= sizeof(struct bell)) {
        p = mmap(NULL, sizeof(struct bell), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    close(fd);
    if (p == MAP_FAILED) goto out;
    if (((struct bell *)p)->magic != BELL_MAGIC) {
        munmap(p, sizeof(struct bell));
        goto out;
    }
    atomic_store(&st->peer[peer], (struct bell *)p);
    xm_log_debug("shm peer %llu: doorbell %s", (unsigned long long)peer, name);
out:
    pthread_mutex_unlock(&st->lock);
}

/* Initiator: after a post to peer (or one its full queue refused: it has work), wake it if
 * it sleeps. */
static void shm_posted(net_fabric_t *fab, fi_addr_t peer)
{
    shm_state_t *st = fab->prov;
    if (st == NULL || peer >= BELL_PEERS) return;
    struct bell *b = atomic_load_explicit(&st->peer[peer], memory_order_acquire);
    if (b == NULL) return;
    atomic_thread_fence(memory_order_seq_cst); /* our command is in its queue before we look */
    if (atomic_load_explicit(&b->sleeping, memory_order_relaxed) == 0) return;
    atomic_fetch_add_explicit(&b->seq, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->rings, 1, memory_order_relaxed);
    futex(&b->seq, FUTEX_WAKE, 1, NULL);
}

/* A large transfer in progress shows neither in the counter nor as a completion, but the
 * progress calls that move it take a while. Two long calls in a row: about one idle call in
 * 4,500 is long by itself (an interrupt, a preemption), and counting those kept an idle
 * shm appliance from ever sleeping. */
static bool shm_moving(net_fabric_t *fab, ofi_progress_t *p, uint64_t call_ns)
{
    (void)fab;
    bool is_long = call_ns > 2000;
    bool moving = is_long && p->prev_long;
    p->prev_long = is_long;
    return moving;
}

/* Target: sleep on the doorbell until rung or BELL_WAIT_NS; true when rung or when the last
 * look before sleeping found work. */
static bool bell_sleep(net_fabric_t *fab, struct bell *b, ofi_progress_t *p)
{
    uint32_t seq = atomic_load_explicit(&b->seq, memory_order_relaxed);
    atomic_store_explicit(&b->sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* sleeping is visible before our last look */
    bool woke = ofi_progress_round(fab, p);
    if (!woke) {
        struct timespec ts = {0, BELL_WAIT_NS};
        futex(&b->seq, FUTEX_WAIT, seq, &ts); /* not FUTEX_PRIVATE: clients are other processes */
        woke = atomic_load_explicit(&b->seq, memory_order_relaxed) != seq;
    }
    atomic_store_explicit(&b->sleeping, 0, memory_order_relaxed);
    return woke;
}

/* Target, idle past the spin: 20 µs naps for NAP_PHASE_NS, then the doorbell. */
static void shm_idle(net_fabric_t *fab, ofi_progress_t *p)
{
    shm_state_t *st = fab->prov;
    if (st != NULL && st->bell != NULL && xm__now_ns() - p->last_active >= p->spin_ns + NAP_PHASE_NS) {
        if (bell_sleep(fab, st->bell, p)) p->last_active = xm__now_ns();
        p->prev_long = false;
        return;
    }
    struct timespec nap = {0, NAP_NS};
    nanosleep(&nap, NULL);
}

const xfer_ops_t ofi_shm_ops = {
    .name = "shm",
    .caps = NET_CAP_CHECK_PEER | NET_CAP_SAME_HOST,
    .target_cq_wait = FI_WAIT_NONE, /* shm 1.17 opens no CQ with FI_WAIT_FD */
    /* shm matches up to its whole command queue (1,024) in one progress call: as many small
     * receives (a longer message is truncated and dropped all the same) */
    .drain_bufs = 512,
    .drain_buf_size = 256,
    .getinfo = shm_getinfo,
    .before_enable = shm_before_enable,
    .after_enable = shm_after_enable,
    .close = shm_close,
    .peer_inserted = shm_peer_inserted,
    .posted = shm_posted,
    .moving = shm_moving,
    .idle = shm_idle,
};
