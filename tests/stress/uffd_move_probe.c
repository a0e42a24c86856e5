/* Kernel probe (no xmem): does UFFDIO_MOVE fail with EEXIST although it moved
 * the page? The setting of xmem's eviction (src/client/map/cache.c): a range
 * registered MISSING|WP with WP_ASYNC, pages installed with UFFDIO_COPY_MODE_WP
 * by a fault handler, application threads storing into them, an evictor
 * moving single pages out to an empty staging page of its own.
 *
 *   uffd_move_probe [seconds] [writers] [evictors] [handlers] [put_back]
 *   PROBE_READ=1 uffd_move_probe ...   (loads only: no write-protect changes)
 *
 * Exit 1 when a move reported EEXIST and the page is at the destination
 * anyway (seen on 6.18 with stores; never with PROBE_READ=1), 0 when not seen,
 * 77 without userfaultfd MOVE/WP_ASYNC. Not run by CTest: it tests the kernel. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../src/client/map/uffd_compat.h"

#define PG 4096ul
#define N 16
static int uffd;
static uint8_t *R;
static atomic_int stop, stop_ev, stop_h;
static uint8_t srcpage[PG] __attribute__((aligned(4096)));

static void *handler(void *a)
{
    (void)a;
    struct pollfd p = {.fd = uffd, .events = POLLIN};
    while (!atomic_load(&stop_h)) {
        if (poll(&p, 1, 100) <= 0) continue;
        struct uffd_msg m;
        if (read(uffd, &m, sizeof(m)) != sizeof(m)) continue;
        if (m.event != UFFD_EVENT_PAGEFAULT) continue;
        uintptr_t pg = m.arg.pagefault.address & ~(PG - 1);
        struct uffdio_copy c = {.dst = pg, .src = (uintptr_t)srcpage, .len = PG, .mode = UFFDIO_COPY_MODE_WP};
        if (ioctl(uffd, UFFDIO_COPY, &c) != 0 && errno != EEXIST) {
            /* the page may be in the middle of a move; just wake */
        }
        struct uffdio_range r = {.start = pg, .len = PG};
        ioctl(uffd, UFFDIO_WAKE, &r);
    }
    return NULL;
}

static void *writer(void *a)
{
    uint64_t x = (uintptr_t)a * 7919 + 1;
    while (!atomic_load(&stop)) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        volatile uint64_t *w = (volatile uint64_t *)(R + (x % N) * PG + ((x >> 8) % 512) * 8);
        if (getenv("PROBE_READ")) (void)*w; else *w = x;
    }
    return NULL;
}

static atomic_long st_moves, st_ok, st_enoent, st_eagain, st_eexist_moved, st_eexist_other, st_other;
static int put_back;
static void *evictor(void *a)
{
    uint8_t *S = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register rs = {.range = {(uintptr_t)S, PG}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &rs)) { perror("register staging"); exit(2); }
    uint64_t x = 12345 + (uintptr_t)a * 31;
    while (!atomic_load(&stop_ev)) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint8_t *src = R + (x % N) * PG;
        madvise(S, PG, MADV_DONTNEED);
        unsigned char before = 0;
        mincore(S, PG, &before);
        if (before & 1) { printf("staging not empty after MADV_DONTNEED\n"); continue; }
        struct uffdio_move mv = {.dst = (uintptr_t)S, .src = (uintptr_t)src, .len = PG, .mode = UFFDIO_MOVE_MODE_DONTWAKE};
        atomic_fetch_add(&st_moves, 1);
        int rc = ioctl(uffd, UFFDIO_MOVE, &mv);
        int err = errno;
        unsigned char d = 0, s = 0;
        mincore(S, PG, &d);
        mincore(src, PG, &s);
        if (rc == 0) atomic_fetch_add(&st_ok, 1);
        else if (err == ENOENT) atomic_fetch_add(&st_enoent, 1);
        else if (err == EAGAIN) atomic_fetch_add(&st_eagain, 1);
        else if (err == EEXIST && (d & 1)) {
            if (atomic_fetch_add(&st_eexist_moved, 1) < 5) printf("UFFDIO_MOVE returned EEXIST (move=%lld) but the page is now at dst (dst present=%d, src present=%d)\n", (long long)mv.move, d & 1, s & 1);
        } else if (err == EEXIST) atomic_fetch_add(&st_eexist_other, 1);
        else { if (atomic_fetch_add(&st_other, 1) < 5) printf("UFFDIO_MOVE: %s (move=%lld)\n", strerror(err), (long long)mv.move); }
        if (put_back && (d & 1) && !(s & 1)) {
            struct uffdio_move back = {.dst = (uintptr_t)src, .src = (uintptr_t)S, .len = PG};
            if (ioctl(uffd, UFFDIO_MOVE, &back) != 0) madvise(S, PG, MADV_DONTNEED);
        }
        /* else: dropped, like an eviction; the next store faults and the handler copies it in */
        struct uffdio_range r = {.start = (uintptr_t)src, .len = PG};
        ioctl(uffd, UFFDIO_WAKE, &r);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 5;
    int nwriters = argc > 2 ? atoi(argv[2]) : 2;
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) != 0) { perror("uffd"); return 77; }
    R = mmap(NULL, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(R, N * PG, MADV_NOHUGEPAGE);
    struct uffdio_register rr = {.range = {(uintptr_t)R, N * PG}, .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &rr)) { perror("register"); return 2; }
    memset(srcpage, 0x5a, PG);
    pthread_t h, w[8];
    pthread_create(&h, NULL, handler, NULL);
    for (int i = 0; i < nwriters; i++) pthread_create(&w[i], NULL, writer, (void *)(uintptr_t)(i + 1));
    int nevict = argc > 3 ? atoi(argv[3]) : 2;
    int nhandlers = argc > 4 ? atoi(argv[4]) : 2;
    put_back = argc > 5 ? atoi(argv[5]) : 0;
    pthread_t ev[8], hh[8];
    for (int i = 1; i < nhandlers; i++) pthread_create(&hh[i], NULL, handler, NULL);
    for (int i = 0; i < nevict; i++) pthread_create(&ev[i], NULL, evictor, (void *)(uintptr_t)i);
    sleep((unsigned)seconds);
    atomic_store(&stop_ev, 1);
    for (int i = 0; i < nevict; i++) pthread_join(ev[i], NULL);
    atomic_store(&stop, 1); /* writers: the handlers still serve their last faults */
    for (int i = 0; i < nwriters; i++) pthread_join(w[i], NULL);
    atomic_store(&stop_h, 1);
    pthread_join(h, NULL);
    for (int i = 1; i < nhandlers; i++) pthread_join(hh[i], NULL);
    long moves = st_moves, ok = st_ok, enoent = st_enoent, eagain = st_eagain, eexist_moved = st_eexist_moved,
         eexist_other = st_eexist_other, other = st_other;
    printf("moves %ld: ok %ld, ENOENT %ld, EAGAIN %ld, EEXIST-but-moved %ld, EEXIST-not-moved %ld, other %ld\n",
           moves, ok, enoent, eagain, eexist_moved, eexist_other, other);
    return eexist_moved > 0;
}
