/* Client-coordinated sub-allocation: pieces of a group carved by several
 * clients with remote atomics, no overlap, reuse, and a killed member's
 * pieces reclaimed. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static xt_cluster_t cl;

static void teardown(void)
{
    xt_cluster_stop(&cl);
}

typedef struct racer {
    int id;
    const char *provider;
    int iters;
    int failures;
    uint64_t carved;         /* bytes handed out over the run */
    uint64_t reused;         /* pieces at an offset this client had freed before */
    char why[256];
} racer_t;

#define HOLD 16

static bool check_piece(xm_alloc_h a, const xm_piece_t *p, uint8_t id, uint8_t *buf)
{
    if (xm_read(a, p->offset, buf, p->size) != XM_OK) return false;
    for (uint64_t i = 0; i < p->size; i++) {
        if (buf[i] != id) return false;
    }
    return true;
}

static void *race(void *arg)
{
    racer_t *r = arg;
    char tenant[16] = "alice";
    xm_ctx_h ctx;
    if (xt_manager_try_connect(&cl.mgr, tenant, &ctx) != XM_OK) {
        snprintf(r->why, sizeof(r->why), "connect: %s", xm_last_error(NULL));
        r->failures++;
        return NULL;
    }
    xm_group_h g;
    if (xm_group_attach(ctx, "racers", &g) != XM_OK) {
        snprintf(r->why, sizeof(r->why), "attach: %s", xm_last_error(ctx));
        r->failures++;
        xm_disconnect(ctx);
        return NULL;
    }
    xm_alloc_h a = xm_group_alloc(g);
    xm_piece_t held[HOLD];
    int nheld = 0;
    uint64_t freed[64];
    int nfreed = 0;
    uint8_t *buf = malloc(4096), *pat = malloc(4096);
    memset(pat, r->id, 4096);
    uint64_t seed = (uint64_t)r->id * 0x9e3779b97f4a7c15ull + 1;
    for (int i = 0; i < r->iters && r->failures == 0; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        bool do_free = nheld == HOLD || (nheld > 0 && (seed >> 33) % 3 == 0);
        if (do_free) {
            int k = (int)((seed >> 40) % (uint64_t)nheld);
            /* our id is still in every byte: nobody else was given any of it */
            if (!check_piece(a, &held[k], (uint8_t)r->id, buf)) {
                snprintf(r->why, sizeof(r->why), "piece at %llu (%llu bytes) was overwritten",
                         (unsigned long long)held[k].offset, (unsigned long long)held[k].size);
                r->failures++;
                break;
            }
            if (xm_subfree(g, held[k]) != XM_OK) {
                snprintf(r->why, sizeof(r->why), "subfree: %s", xm_last_error(ctx));
                r->failures++;
                break;
            }
            freed[nfreed++ % 64] = held[k].offset;
            held[k] = held[--nheld];
            continue;
        }
        uint64_t size = 1 + (seed >> 20) % 4096;
        xm_piece_t p;
        xm_status_t s = xm_suballoc(g, size, &p);
        if (s != XM_OK) {
            snprintf(r->why, sizeof(r->why), "suballoc %llu: %s", (unsigned long long)size,
                     xm_last_error(ctx));
            r->failures++;
            break;
        }
        for (int j = 0; j < (nfreed < 64 ? nfreed : 64); j++) r->reused += freed[j] == p.offset;
        if (xm_write(a, p.offset, pat, p.size) != XM_OK) {
            snprintf(r->why, sizeof(r->why), "write: %s", xm_last_error(ctx));
            r->failures++;
            break;
        }
        r->carved += p.size;
        held[nheld++] = p;
    }
    for (int k = 0; k < nheld && r->failures == 0; k++) {
        if (!check_piece(a, &held[k], (uint8_t)r->id, buf)) {
            snprintf(r->why, sizeof(r->why), "held piece at %llu was overwritten",
                     (unsigned long long)held[k].offset);
            r->failures++;
        }
    }
    free(buf);
    free(pat);
    xm_group_close(g);   /* gives back what is still held */
    xm_disconnect(ctx);
    return NULL;
}

static void race_body(const char *provider)
{
    xt_cluster_start(&cl, 1, "64M", provider, NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_group_h g;
    /* 192 KiB in 64 B blocks: three clients holding up to 16 pieces of up to 4 KiB
     * need at most 3 * 16 * 4 KiB, so the space must be reused many times over */
    cr_assert_eq(xm_group_create(ctx, 192u << 10, "racers", &g), XM_OK, "%s", xm_last_error(ctx));
    xm_group_info_t info;
    cr_assert_eq(xm_group_stat(g, &info), XM_OK);
    cr_assert_eq(info.block_size, 64);
    cr_assert_eq(info.free_blocks, info.blocks);
    racer_t r[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        r[i] = (racer_t){.id = i + 1, .provider = provider, .iters = 1500};
        pthread_create(&th[i], NULL, race, &r[i]);
    }
    uint64_t carved = 0, reused = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(r[i].failures, 0, "client %d: %s", r[i].id, r[i].why);
        carved += r[i].carved;
        reused += r[i].reused;
    }
    cr_assert_gt(carved, 4 * (192u << 10), "only %llu bytes carved", (unsigned long long)carved);
    cr_assert_gt(reused, 0, "no freed piece was handed out again");
    /* every member left: every block is free again, and the whole group is one piece */
    cr_assert_eq(xm_group_stat(g, &info), XM_OK);
    cr_assert_eq(info.members, 1);
    cr_assert_eq(info.free_blocks, info.blocks);
    xm_piece_t all;
    cr_assert_eq(xm_suballoc(g, 192u << 10, &all), XM_OK, "%s", xm_last_error(ctx));
    xm_piece_t more;
    cr_assert_eq(xm_suballoc(g, 1, &more), XM_ERR_NO_SPACE);
    cr_assert_eq(xm_subfree(g, all), XM_OK);
    cr_assert_eq(xm_subfree(g, all), XM_ERR_INVALID, "a second free of the same piece");
    xm_group_close(g);
    cr_assert_eq(xm_free(ctx, 0, "racers"), XM_OK);
    xm_disconnect(ctx);
}

Test(group, races_three_clients_no_overlap_tcp, .fini = teardown, .timeout = 120)
{
    race_body("tcp");
}

Test(group, races_three_clients_no_overlap_local, .fini = teardown, .timeout = 120)
{
    race_body("local");
}

/* Child: join, take pieces, report how many bytes, then wait to be killed. */
static void member_child(int wfd)
{
    xm_ctx_h ctx = NULL;
    xm_group_h g = NULL;
    uint64_t deadline = xt_now_ms() + 20000;
    while (xt_now_ms() < deadline) {
        if (ctx == NULL && xt_manager_try_connect(&cl.mgr, "alice", &ctx) != XM_OK) ctx = NULL;
        if (ctx != NULL && xm_group_attach(ctx, "crashy", &g) == XM_OK) break;
        usleep(20000);
    }
    if (g == NULL) _exit(2);
    uint64_t blocks = 0;
    uint8_t pat[512];
    memset(pat, 0xcc, sizeof(pat));
    for (int i = 0; i < 10; i++) {
        xm_piece_t p;
        if (xm_suballoc(g, 512, &p) != XM_OK) _exit(3);
        if (xm_write(xm_group_alloc(g), p.offset, pat, sizeof(pat)) != XM_OK) _exit(4);
        blocks += 512;
    }
    if (write(wfd, &blocks, sizeof(blocks)) != sizeof(blocks)) _exit(5);
    for (;;) pause();
}

Test(group, killed_member_reclaimed, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 1, "64M", "tcp", NULL);
    setenv("XMEM_GROUP_LEASE_MS", "300", 1);
    int pfd[2];
    cr_assert(pipe(pfd) == 0);
    /* the member is forked before this process opens any context */
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(pfd[0]);
        member_child(pfd[1]);
    }
    close(pfd[1]);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_group_h g;
    cr_assert_eq(xm_group_create(ctx, 1u << 20, "crashy", &g), XM_OK, "%s", xm_last_error(ctx));
    /* ours, to check a reclaim leaves other members' pieces alone */
    xm_piece_t mine;
    cr_assert_eq(xm_suballoc(g, 1000, &mine), XM_OK);
    uint8_t pat[1000], back[1000];
    memset(pat, 0x5a, sizeof(pat));
    cr_assert_eq(xm_write(xm_group_alloc(g), mine.offset, pat, sizeof(pat)), XM_OK);
    uint64_t child_bytes = 0;
    cr_assert_eq(read(pfd[0], &child_bytes, sizeof(child_bytes)), (ssize_t)sizeof(child_bytes),
                 "the member did not take its pieces");
    close(pfd[0]);
    xm_group_info_t info;
    cr_assert_eq(xm_group_stat(g, &info), XM_OK);
    cr_assert_eq(info.members, 2);
    cr_assert_eq(info.lease_ms, 300);
    uint64_t held_by_child = info.blocks - info.free_blocks - info.own_blocks;
    cr_assert_eq(held_by_child * info.block_size, child_bytes);

    /* a third member, alive and quiet, renewing its lease: never reclaimed */
    xm_ctx_h ctx3 = xt_manager_connect(&cl.mgr, "alice");
    xm_group_h g3;
    cr_assert_eq(xm_group_attach(ctx3, "crashy", &g3), XM_OK, "%s", xm_last_error(ctx3));
    xm_piece_t p3;
    cr_assert_eq(xm_suballoc(g3, 64, &p3), XM_OK);

    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    uint32_t members = 0, total_members = 0;
    uint64_t bytes = 0, total_bytes = 0;
    uint64_t deadline = xt_now_ms() + 5000;
    while (total_members == 0 && xt_now_ms() < deadline) {
        cr_assert_eq(xm_group_reclaim(g, &members, &bytes), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(xm_group_renew(g3), XM_OK, "%s", xm_last_error(ctx3));
        total_members += members;
        total_bytes += bytes;
        usleep(50000);
    }
    cr_assert_eq(total_members, 1, "the dead member was not reclaimed");
    cr_assert_eq(total_bytes, child_bytes);
    cr_assert_eq(xm_group_stat(g, &info), XM_OK);
    cr_assert_eq(info.members, 2);
    cr_assert_eq(info.free_blocks, info.blocks - info.own_blocks - 1, "only ours and g3's remain");
    cr_assert_eq(xm_read(xm_group_alloc(g), mine.offset, back, sizeof(back)), XM_OK);
    cr_assert(memcmp(pat, back, sizeof(back)) == 0, "a survivor's piece was touched");
    /* the freed space is handed out again */
    xm_piece_t again;
    cr_assert_eq(xm_suballoc(g, child_bytes, &again), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_subfree(g, again), XM_OK);

    /* a member that only went quiet past its lease is evicted: it gets XM_ERR_PERM,
     * never a piece someone else holds */
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(xm_group_reclaim(g, &members, NULL), XM_OK);
        if (members == 1) break;
        usleep(50000);
    }
    cr_assert_eq(members, 1, "the silent member was not reclaimed");
    xm_piece_t late;
    cr_assert_eq(xm_suballoc(g3, 64, &late), XM_ERR_PERM);
    cr_assert_eq(xm_subfree(g3, p3), XM_ERR_PERM);
    xm_group_close(g3);
    xm_disconnect(ctx3);

    /* bad input */
    xm_piece_t bogus = {.offset = mine.offset + 1, .size = 10};
    cr_assert_eq(xm_subfree(g, bogus), XM_ERR_INVALID);
    cr_assert_eq(xm_suballoc(g, 2u << 20, &bogus), XM_ERR_INVALID);
    xm_alloc_h plain;
    cr_assert_eq(xm_alloc(ctx, 1u << 20, NULL, "plain", &plain), XM_OK);
    cr_assert_eq(xm_write(plain, 0, "not a group", 8), XM_OK);
    xm_group_h pg;
    cr_assert_eq(xm_group_attach(ctx, "plain", &pg), XM_ERR_INVALID, "a plain allocation is no group");
    xm_alloc_close(plain);
    cr_assert_eq(xm_subfree(g, mine), XM_OK);
    xm_group_close(g);
    cr_assert_eq(xm_free(ctx, 0, "crashy"), XM_OK);
    xm_disconnect(ctx);
    unsetenv("XMEM_GROUP_LEASE_MS");
}

/* A member keeps pieces it freed (bounded) and hands them out again with no remote
 * atomic; they stay claimed in the map meanwhile, are never handed out twice, and go
 * back to the group when the member runs out of room and when it leaves. */
Test(group, freed_pieces_kept_then_given_back, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 1, "64M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_ctx_h ctx2 = xt_manager_connect(&cl.mgr, "alice");
    xm_group_h g, g2;
    cr_assert_eq(xm_group_create(ctx, 1u << 20, "keeper", &g), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_group_attach(ctx2, "keeper", &g2), XM_OK, "%s", xm_last_error(ctx2));
    xm_group_info_t info;
    cr_assert_eq(xm_group_stat(g2, &info), XM_OK);
    uint64_t blocks = info.blocks, whole = info.blocks * info.block_size;
    xm_piece_t p, p2, q;
    cr_assert_eq(xm_suballoc(g, 1024, &p), XM_OK);
    cr_assert_eq(xm_subfree(g, p), XM_OK);
    cr_assert_eq(xm_subfree(g, p), XM_ERR_INVALID, "a kept piece freed twice");
    /* the other member sees the kept piece as still held: nobody else can take it */
    cr_assert_eq(xm_group_stat(g2, &info), XM_OK);
    cr_assert_eq(info.free_blocks, blocks - 1024 / info.block_size);
    cr_assert_eq(xm_suballoc(g, 1000, &p2), XM_OK);
    cr_assert_eq(p2.offset, p.offset, "the kept piece was not handed out again");
    cr_assert_eq(xm_suballoc(g, 1024, &q), XM_OK);
    cr_assert_neq(q.offset, p2.offset, "one piece handed out twice");
    cr_assert_eq(xm_subfree(g, p2), XM_OK);
    cr_assert_eq(xm_subfree(g, q), XM_OK);
    /* out of room for the whole group: the kept pieces go back first, then it fits */
    xm_piece_t all;
    cr_assert_eq(xm_suballoc(g, whole, &all), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_suballoc(g2, 64, &q), XM_ERR_NO_SPACE);
    cr_assert_eq(xm_subfree(g, all), XM_OK);
    /* leaving gives back what is kept */
    cr_assert_eq(xm_suballoc(g, 1024, &p), XM_OK);
    cr_assert_eq(xm_subfree(g, p), XM_OK);
    xm_group_close(g);
    cr_assert_eq(xm_group_stat(g2, &info), XM_OK);
    cr_assert_eq(info.free_blocks, blocks, "a member that left still holds blocks");
    xm_group_close(g2);
    cr_assert_eq(xm_free(ctx, 0, "keeper"), XM_OK);
    xm_disconnect(ctx2);
    xm_disconnect(ctx);
}
