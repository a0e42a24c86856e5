/* libxmem groups: one manager allocation shared by a group of clients, carved
 * into pieces by the clients themselves with remote atomics. */
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "client.h"

/*
 * Layout of a group's allocation (64-bit little-endian words, as every host's
 * remote atomics see them):
 *
 *   0          magic "XMGROUP1", written last by the creator (CAS 0 -> magic):
 *              a client that attaches earlier waits for it
 *   8          block size (power of two, 64 B .. 1 GiB)
 *   16         number of blocks
 *   24         offset of the owner map (GROUP_MAP_OFF)
 *   32         offset of the first block (4 KiB-aligned)
 *   40         lease in ms (see "Members and leases")
 *   64         GROUP_SLOTS member slots of 16 bytes: {state, heartbeat}
 *   4096       owner map: one byte per block, 8 blocks per 64-bit word
 *   data_off   the blocks
 *
 * Owner map. A block's byte is 0 when free, 0x80|s for the first block of a
 * piece held by member s (1..127), s for the piece's following blocks. A piece
 * of k blocks is claimed by compare-and-swap of the words covering its bytes,
 * lowest word first: each CAS expects those bytes 0 and sets them, leaving
 * the word's other bytes as they were (a CAS that failed only because a
 * neighbour's bytes changed is retried with the new value). Two clients can
 * therefore never both own a byte; a claim that meets a taken byte midway
 * gives back the words it took (clearing only its own bytes) and searches on.
 * Freeing is the reverse: CAS the piece's bytes back to 0. Each client keeps a
 * copy of the map (refreshed by every CAS result, and re-read in full before
 * reporting XM_ERR_NO_SPACE), so a sub-allocation or a free is usually one
 * remote atomic and no manager round trip. A freed piece is kept (its bytes
 * unchanged, still naming us) for the member's next piece of the same block
 * count, which then takes no remote atomic at all; at most SPARE_MAX pieces
 * and 1/SPARE_SHARE of the group are kept, and they go back to the map when
 * the member finds no room and when it leaves (or is reclaimed).
 *
 * Members and leases. A client joins by CAS of a free slot's state word
 * (token << 32 | generation << 2 | state) to LIVE with a random token, and
 * renews its lease by fetch-add on its heartbeat word whenever a quarter of
 * the lease has passed (every sub-allocation, free or xm_group_renew checks).
 * Every byte in the map names the member holding it, so the pieces of a
 * client that died are found by their byte: xm_group_reclaim, run by any
 * survivor, watches the slots' heartbeats and takes over a member whose
 * heartbeat has not moved for a whole lease of the survivor's own clock: CAS
 * its state LIVE -> RECLAIM (one reclaimer wins), clear every byte of that
 * member in the map (CAS per word), then CAS the slot FREE with the
 * generation bumped. A reclaimer that dies midway leaves the slot in RECLAIM,
 * which the next reclaimer finishes (clearing is idempotent). A member that
 * was only slow, not dead, finds its state word changed at its next renewal
 * and gets XM_ERR_PERM from then on; as with any lease, the lease must be long
 * against a live member's pauses (default 10 s, $XMEM_GROUP_LEASE_MS at
 * creation). A client crash at any point leaves only bytes that name it,
 * never a byte without an owner, so nothing leaks past a reclaim.
 */

#define GROUP_MAGIC 0x3150554f52474d58ull /* "XMGROUP1" */
#define GROUP_SLOTS 127u
#define GROUP_SLOT_OFF 64u
#define GROUP_MAP_OFF 4096u
#define GROUP_MAP_BLOCKS_MAX (1u << 18)   /* the map is at most 256 KiB */
#define GROUP_LEASE_DEFAULT_MS 10000u

#define SLOT_FREE 0u
#define SLOT_LIVE 1u
#define SLOT_RECLAIM 2u
#define SLOT_STATE(w) ((unsigned)((w) & 3u))
#define SLOT_GEN(w) (((w) >> 2) & 0x3fffffffu)
#define SLOT_WORD(token, gen, state) \
    (((uint64_t)(token) << 32) | ((uint64_t)((gen) & 0x3fffffffu) << 2) | (state))

#define BYTE_FIRST 0x80u

/* A member keeps up to SPARE_MAX pieces it freed, still claimed in the map (their bytes
 * unchanged), and hands them out again for a piece of the same block count with no
 * remote atomic; at most 1/SPARE_SHARE of the group's blocks are kept so. */
#define SPARE_MAX 16u
#define SPARE_SHARE 256u

typedef struct spare {
    uint64_t first;          /* first block */
    uint64_t k;              /* blocks */
} spare_t;

typedef struct slot_obs {
    uint64_t state;
    uint64_t hb;
    uint64_t since_ns;
} slot_obs_t;

/* A member's handle; one thread at a time, like its context. */
struct xm_group {
    xm_ctx_h ctx;
    xm_alloc_h alloc;
    uint64_t block;          /* block size */
    uint64_t nblocks;
    uint64_t data_off;
    uint64_t map_bytes;      /* nblocks rounded up to whole words */
    uint64_t lease_ns;
    uint8_t *map;            /* this member's copy of the owner map */
    uint64_t hint;           /* block where the next search starts */
    unsigned slot;           /* 0-based; bytes carry slot + 1 */
    uint64_t slot_word;      /* our state word while we are LIVE */
    uint64_t last_renew_ns;
    bool evicted;            /* a reclaimer took our slot: every call fails */
    spare_t spare[SPARE_MAX];/* freed pieces kept claimed, newest last */
    unsigned nspare;
    uint64_t spare_blocks;
    slot_obs_t obs[GROUP_SLOTS];
};

static uint64_t slot_off(unsigned i)
{
    return GROUP_SLOT_OFF + (uint64_t)i * 16;
}

static uint64_t map_word(const struct xm_group *g, uint64_t w)
{
    uint64_t v;
    memcpy(&v, g->map + w * 8, 8);
    return v;
}

static void map_word_set(struct xm_group *g, uint64_t w, uint64_t v)
{
    memcpy(g->map + w * 8, &v, 8);
}

static xm_status_t map_refresh(struct xm_group *g)
{
    return xm_read(g->alloc, GROUP_MAP_OFF, g->map, g->map_bytes);
}

/* Bytes [lo, hi) of word w as a mask, with value byte v in each. */
static void word_run(uint64_t w, uint64_t first, uint64_t end, uint64_t *mask_p, uint64_t *bytes_p,
                     uint8_t owner)
{
    uint64_t lo = first > w * 8 ? first - w * 8 : 0;
    uint64_t hi = end < w * 8 + 8 ? end - w * 8 : 8;
    uint64_t mask = 0, bytes = 0;
    for (uint64_t b = lo; b < hi; b++) {
        mask |= 0xffull << (b * 8);
        uint8_t v = (w * 8 + b == first) ? (uint8_t)(owner | BYTE_FIRST) : owner;
        bytes |= (uint64_t)v << (b * 8);
    }
    *mask_p = mask;
    *bytes_p = bytes;
}

/*
 * Swap the bytes under mask of word w from `from` to `to` (both already
 * masked), keeping the word's other bytes. Returns XM_OK when swapped,
 * XM_ERR_EXISTS when the masked bytes are not `from`; the cache follows.
 */
static xm_status_t word_swap(struct xm_group *g, uint64_t w, uint64_t mask, uint64_t from,
                             uint64_t to)
{
    uint64_t cur = map_word(g, w);
    for (;;) {
        if ((cur & mask) != from) return XM_ERR_EXISTS;
        uint64_t want = (cur & ~mask) | to, old;
        xm_status_t status = xm_compare_swap(g->alloc, GROUP_MAP_OFF + w * 8, cur, want, &old);
        if (status != XM_OK) return status;
        if (old == cur) {
            map_word_set(g, w, want);
            return XM_OK;
        }
        map_word_set(g, w, old);
        cur = old;
    }
}

/* Heartbeat (and check we still hold our slot) if a quarter lease has passed. */
static xm_status_t renew(struct xm_group *g, bool force)
{
    if (g->evicted) {
        return xm__ctx_error(g->ctx, XM_ERR_PERM, "this member's lease expired and its pieces "
                             "were reclaimed");
    }
    uint64_t now = xm__now_ns();
    if (!force && now - g->last_renew_ns < g->lease_ns / 4) return XM_OK;
    /* both in one round trip: the heartbeat, and a no-op CAS that reads our state word */
    xm_op_t ops[2] = {
        {.opcode = XM_OP_FETCH_ADD, .region = g->alloc, .offset = slot_off(g->slot) + 8,
         .operand = 1},
        {.opcode = XM_OP_COMPARE_SWAP, .region = g->alloc, .offset = slot_off(g->slot),
         .operand = g->slot_word, .compare = g->slot_word},
    };
    xm_status_t status = xm_submit(g->ctx, ops, 2);
    if (status != XM_OK) return status;
    if (ops[1].result != g->slot_word) {
        g->evicted = true;
        return xm__ctx_error(g->ctx, XM_ERR_PERM, "this member's lease expired and its pieces "
                             "were reclaimed");
    }
    g->last_renew_ns = now;
    return XM_OK;
}

/* Clear every map byte of member `owner` (1..127); *blocks_p counts them. */
static xm_status_t clear_owner(struct xm_group *g, uint8_t owner, uint64_t *blocks_p)
{
    xm_status_t status = map_refresh(g);
    if (status != XM_OK) return status;
    uint64_t blocks = 0;
    for (uint64_t w = 0; w < g->map_bytes / 8; w++) {
        for (;;) {
            uint64_t cur = map_word(g, w), mask = 0;
            for (unsigned b = 0; b < 8; b++) {
                uint8_t v = (uint8_t)(cur >> (b * 8));
                if (v != 0 && (v & 0x7f) == owner) mask |= 0xffull << (b * 8);
            }
            if (mask == 0) break;
            uint64_t old;
            status = xm_compare_swap(g->alloc, GROUP_MAP_OFF + w * 8, cur, cur & ~mask, &old);
            if (status != XM_OK) return status;
            if (old == cur) {
                map_word_set(g, w, cur & ~mask);
                blocks += (uint64_t)__builtin_popcountll(mask) / 8;
                break;
            }
            map_word_set(g, w, old);
        }
    }
    *blocks_p = blocks;
    return XM_OK;
}

static uint64_t lease_from_env(void)
{
    const char *e = getenv("XMEM_GROUP_LEASE_MS");
    if (e == NULL || e[0] == '\0') return GROUP_LEASE_DEFAULT_MS;
    char *end;
    unsigned long long v = strtoull(e, &end, 10);
    if (*end != '\0' || v < 10 || v > 86400000ull) return GROUP_LEASE_DEFAULT_MS;
    return v;
}

/* Read and check the header; wait (up to the context's timeout) for the creator's magic. */
static xm_status_t group_load(struct xm_group *g)
{
    uint64_t hdr[6];
    uint64_t deadline = xm__now_ns() + (uint64_t)g->ctx->timeout_ms * 1000000ull;
    for (;;) {
        xm_status_t status = xm_read(g->alloc, 0, hdr, sizeof(hdr));
        if (status != XM_OK) return status;
        if (hdr[0] == GROUP_MAGIC) break;
        if (hdr[0] != 0 || xm__now_ns() > deadline) {
            return xm__ctx_error(g->ctx, XM_ERR_INVALID, "allocation %llu is not a group",
                                 (unsigned long long)xm_region_id(g->alloc));
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    uint64_t size = xm_region_size(g->alloc);
    uint64_t block = hdr[1], nblocks = hdr[2], map_off = hdr[3], data_off = hdr[4];
    uint64_t map_bytes = (nblocks + 7) & ~7ull;
    /* the header is other clients' data: check it before trusting any of it */
    if (block < 64 || block > (1ull << 30) || (block & (block - 1)) != 0 || nblocks == 0 ||
        nblocks > GROUP_MAP_BLOCKS_MAX || map_off != GROUP_MAP_OFF ||
        data_off < GROUP_MAP_OFF + map_bytes || data_off % 4096 != 0 || data_off > size ||
        nblocks > (size - data_off) / block || hdr[5] == 0 || hdr[5] > 86400000ull) {
        return xm__ctx_error(g->ctx, XM_ERR_INVALID, "group %llu has a corrupt header",
                             (unsigned long long)xm_region_id(g->alloc));
    }
    g->block = block;
    g->nblocks = nblocks;
    g->data_off = data_off;
    g->map_bytes = map_bytes;
    g->lease_ns = hdr[5] * 1000000ull;
    g->map = malloc(map_bytes);
    if (g->map == NULL) return XM_ERR_NO_MEMORY;
    return map_refresh(g);
}

/* Take a free member slot. */
static xm_status_t group_join(struct xm_group *g)
{
    uint64_t slots[GROUP_SLOTS * 2];
    xm_status_t status = xm_read(g->alloc, GROUP_SLOT_OFF, slots, sizeof(slots));
    if (status != XM_OK) return status;
    uint32_t token = 0;
    while (token == 0) rpc_random(&token, sizeof(token));
    for (unsigned i = 0; i < GROUP_SLOTS; i++) {
        uint64_t cur = slots[i * 2];
        while (SLOT_STATE(cur) == SLOT_FREE) {
            uint64_t want = SLOT_WORD(token, SLOT_GEN(cur), SLOT_LIVE), old;
            status = xm_compare_swap(g->alloc, slot_off(i), cur, want, &old);
            if (status != XM_OK) return status;
            if (old == cur) {
                g->slot = i;
                g->slot_word = want;
                /* start searching in "our" part of the map: fewer collisions */
                g->hint = (g->nblocks * i / GROUP_SLOTS) & ~7ull;
                return renew(g, true);
            }
            cur = old;
        }
    }
    return xm__ctx_error(g->ctx, XM_ERR_NO_SPACE, "group %llu has %u members already",
                         (unsigned long long)xm_region_id(g->alloc), GROUP_SLOTS);
}

static void group_release(struct xm_group *g)
{
    if (g->alloc != NULL) xm_alloc_close(g->alloc);
    free(g->map);
    free(g);
}

XM_EXPORT xm_status_t xm_group_create(xm_ctx_h ctx, uint64_t size, const char *name,
                                      xm_group_h *group_p)
{
    if (ctx == NULL || group_p == NULL || name == NULL) return XM_ERR_INVALID;
    if (size == 0 || size > (1ull << 48)) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "group size must be 1 byte .. 256 TiB");
    }
    uint64_t block = 64;
    while ((size + block - 1) / block > GROUP_MAP_BLOCKS_MAX) block <<= 1;
    uint64_t nblocks = (size + block - 1) / block;
    uint64_t map_bytes = (nblocks + 7) & ~7ull;
    uint64_t data_off = (GROUP_MAP_OFF + map_bytes + 4095) & ~4095ull;
    xm_alloc_h alloc;
    xm_status_t status = xm_alloc(ctx, data_off + nblocks * block, "single", name, &alloc);
    if (status != XM_OK) return status;
    /* fresh memory reads as zeros: free slots, a free map; the magic goes in last */
    uint64_t hdr[5] = {block, nblocks, GROUP_MAP_OFF, data_off, lease_from_env()};
    status = xm_write(alloc, 8, hdr, sizeof(hdr));
    uint64_t old = 0;
    if (status == XM_OK) status = xm_compare_swap(alloc, 0, 0, GROUP_MAGIC, &old);
    if (status == XM_OK && old != 0) {
        status = xm__ctx_error(ctx, XM_ERR_EXISTS, "allocation %s was initialised by another client",
                               name);
    }
    uint64_t id = xm_region_id(alloc);
    xm_alloc_close(alloc);
    if (status != XM_OK) {
        xm_free(ctx, id, NULL);
        return status;
    }
    return xm_group_attach(ctx, name, group_p);
}

XM_EXPORT xm_status_t xm_group_attach(xm_ctx_h ctx, const char *name, xm_group_h *group_p)
{
    if (ctx == NULL || group_p == NULL || name == NULL) return XM_ERR_INVALID;
    struct xm_group *g = calloc(1, sizeof(*g));
    if (g == NULL) return XM_ERR_NO_MEMORY;
    g->ctx = ctx;
    xm_status_t status = xm_attach(ctx, 0, name, XM_ACCESS_READ_WRITE, &g->alloc);
    if (status == XM_OK) status = group_load(g);
    if (status == XM_OK) status = group_join(g);
    if (status != XM_OK) {
        group_release(g);
        return status;
    }
    *group_p = g;
    return XM_OK;
}

XM_EXPORT void xm_group_close(xm_group_h g)
{
    if (g == NULL) return;
    if (!g->evicted) {
        /* leave: give back our pieces, then the slot (best effort: a survivor's
         * reclaim does the same if this fails) */
        uint64_t blocks, old;
        if (xm_compare_swap(g->alloc, slot_off(g->slot), g->slot_word,
                            SLOT_WORD(0, SLOT_GEN(g->slot_word), SLOT_RECLAIM), &old) == XM_OK &&
            old == g->slot_word &&
            clear_owner(g, (uint8_t)(g->slot + 1), &blocks) == XM_OK) {
            uint64_t rec = SLOT_WORD(0, SLOT_GEN(g->slot_word), SLOT_RECLAIM);
            xm_compare_swap(g->alloc, slot_off(g->slot), rec,
                            SLOT_WORD(0, SLOT_GEN(g->slot_word) + 1, SLOT_FREE), &old);
        }
    }
    group_release(g);
}

XM_EXPORT xm_alloc_h xm_group_alloc(xm_group_h g)
{
    return g != NULL ? g->alloc : NULL;
}

/* First block of a free run of k blocks in the cached map, from the hint on, or UINT64_MAX. */
static uint64_t find_run(const struct xm_group *g, uint64_t k)
{
    uint64_t n = g->nblocks, start = g->hint < n ? g->hint : 0;
    uint64_t run = 0, at = 0;
    /* two passes: hint..end, then 0..end (a run may not wrap) */
    for (int pass = 0; pass < 2; pass++) {
        run = 0;
        for (uint64_t b = pass == 0 ? start : 0; b < n; b++) {
            if (pass == 1 && b >= start + k) break;
            if (g->map[b] != 0) {
                run = 0;
                /* skip whole taken words quickly */
                continue;
            }
            if (run++ == 0) at = b;
            if (run == k) return at;
        }
    }
    return UINT64_MAX;
}

/* Give back words [w0, w_end) of the run [first, end) that we had set. */
static void unclaim(struct xm_group *g, uint64_t first, uint64_t end, uint64_t w0, uint64_t w_end,
                    uint8_t owner)
{
    for (uint64_t w = w0; w < w_end; w++) {
        uint64_t mask, bytes;
        word_run(w, first, end, &mask, &bytes, owner);
        word_swap(g, w, mask, bytes, 0);
    }
}

/* Try to claim [first, first + k); XM_ERR_EXISTS when a byte was taken. */
static xm_status_t claim(struct xm_group *g, uint64_t first, uint64_t k)
{
    uint8_t owner = (uint8_t)(g->slot + 1);
    uint64_t end = first + k, w0 = first / 8, w_end = (end + 7) / 8;
    for (uint64_t w = w0; w < w_end; w++) {
        uint64_t mask, bytes;
        word_run(w, first, end, &mask, &bytes, owner);
        xm_status_t status = word_swap(g, w, mask, 0, bytes);
        if (status != XM_OK) {
            unclaim(g, first, end, w0, w, owner);
            return status;
        }
    }
    return XM_OK;
}

/* Clear the map bytes of our piece [first, first + k). */
static xm_status_t piece_release(struct xm_group *g, uint64_t first, uint64_t k)
{
    uint8_t owner = (uint8_t)(g->slot + 1);
    uint64_t end = first + k;
    for (uint64_t w = first / 8; w < (end + 7) / 8; w++) {
        uint64_t mask, bytes;
        word_run(w, first, end, &mask, &bytes, owner);
        xm_status_t status = word_swap(g, w, mask, bytes, 0);
        if (status == XM_ERR_EXISTS) {
            g->evicted = true;
            return xm__ctx_error(g->ctx, XM_ERR_PERM, "piece at block %llu was reclaimed",
                                 (unsigned long long)first);
        }
        if (status != XM_OK) return status;
    }
    if (first < g->hint) g->hint = first & ~7ull;
    return XM_OK;
}

/* Give every kept piece back to the group (others may then take its blocks). */
static xm_status_t spare_flush(struct xm_group *g)
{
    while (g->nspare > 0) {
        spare_t sp = g->spare[--g->nspare];
        g->spare_blocks -= sp.k;
        xm_status_t status = piece_release(g, sp.first, sp.k);
        if (status != XM_OK) return status;
    }
    return XM_OK;
}

XM_EXPORT xm_status_t xm_suballoc(xm_group_h g, uint64_t size, xm_piece_t *piece_p)
{
    if (g == NULL || piece_p == NULL) return XM_ERR_INVALID;
    if (size == 0 || size > g->nblocks * g->block) {
        return xm__ctx_error(g->ctx, XM_ERR_INVALID, "piece size must be 1 .. %llu bytes",
                             (unsigned long long)(g->nblocks * g->block));
    }
    xm_status_t status = renew(g, false);
    if (status != XM_OK) return status;
    uint64_t k = (size + g->block - 1) / g->block;
    /* a piece we freed of the same block count: its bytes already name us, the piece
     * shape included, so handing it out again changes nothing in the map. renew above
     * made sure our lease holds (within a quarter lease of the last renewal), the same
     * guarantee a claim by CAS relies on for the piece's later use */
    for (unsigned i = g->nspare; i-- > 0;) {
        if (g->spare[i].k != k) continue;
        piece_p->offset = g->data_off + g->spare[i].first * g->block;
        piece_p->size = size;
        g->spare_blocks -= k;
        g->spare[i] = g->spare[--g->nspare];
        return XM_OK;
    }
    bool refreshed = false;
    for (unsigned tries = 0; tries < 1000; tries++) {
        uint64_t first = find_run(g, k);
        if (first == UINT64_MAX) {
            /* our copy may be stale: others freed since; look once more, after giving
             * back the pieces we keep */
            if (g->nspare > 0) {
                status = spare_flush(g);
                if (status != XM_OK) return status;
                continue;
            }
            if (refreshed) break;
            status = map_refresh(g);
            if (status != XM_OK) return status;
            refreshed = true;
            continue;
        }
        status = claim(g, first, k);
        if (status == XM_OK) {
            g->hint = first + k;
            piece_p->offset = g->data_off + first * g->block;
            piece_p->size = size;
            return XM_OK;
        }
        if (status != XM_ERR_EXISTS) return status;
        /* someone took a byte of it; the cache now shows it: search again */
    }
    return xm__ctx_error(g->ctx, XM_ERR_NO_SPACE, "group %llu has no free run of %llu bytes",
                         (unsigned long long)xm_region_id(g->alloc),
                         (unsigned long long)(k * g->block));
}

XM_EXPORT xm_status_t xm_subfree(xm_group_h g, xm_piece_t piece)
{
    if (g == NULL) return XM_ERR_INVALID;
    if (piece.size == 0 || piece.offset < g->data_off || (piece.offset - g->data_off) % g->block != 0 ||
        (piece.offset - g->data_off) / g->block >= g->nblocks ||
        piece.size > (g->nblocks - (piece.offset - g->data_off) / g->block) * g->block) {
        return xm__ctx_error(g->ctx, XM_ERR_INVALID, "not a piece of this group");
    }
    xm_status_t status = renew(g, false);
    if (status != XM_OK) return status;
    uint64_t first = (piece.offset - g->data_off) / g->block;
    uint64_t k = (piece.size + g->block - 1) / g->block, end = first + k;
    uint8_t owner = (uint8_t)(g->slot + 1);
    /* our own bytes change only through us (or a reclaimer, caught by renew): the copy is
     * exact for them, so check the whole piece before touching anything */
    bool kept = false;
    for (unsigned i = 0; i < g->nspare; i++) {
        /* a kept piece overlapping this one was freed already */
        kept |= g->spare[i].first < end && first < g->spare[i].first + g->spare[i].k;
    }
    for (uint64_t b = first; b < end && !kept; b++) {
        uint8_t want = b == first ? (uint8_t)(owner | BYTE_FIRST) : owner;
        kept = g->map[b] != want;
    }
    if (kept) {
        return xm__ctx_error(g->ctx, XM_ERR_INVALID, "offset %llu (%llu bytes) is not a "
                             "piece this member holds", (unsigned long long)piece.offset,
                             (unsigned long long)piece.size);
    }
    if (g->nspare < SPARE_MAX && g->spare_blocks + k <= g->nblocks / SPARE_SHARE) {
        /* kept claimed for our next piece of this shape: no remote atomic now */
        g->spare[g->nspare++] = (spare_t){.first = first, .k = k};
        g->spare_blocks += k;
        return XM_OK;
    }
    return piece_release(g, first, k);
}

XM_EXPORT xm_status_t xm_group_renew(xm_group_h g)
{
    if (g == NULL) return XM_ERR_INVALID;
    return renew(g, true);
}

XM_EXPORT xm_status_t xm_group_reclaim(xm_group_h g, uint32_t *members_p, uint64_t *bytes_p)
{
    if (g == NULL) return XM_ERR_INVALID;
    xm_status_t status = renew(g, false);
    if (status != XM_OK) return status;
    uint64_t slots[GROUP_SLOTS * 2];
    status = xm_read(g->alloc, GROUP_SLOT_OFF, slots, sizeof(slots));
    if (status != XM_OK) return status;
    uint64_t now = xm__now_ns(), blocks_total = 0;
    uint32_t members = 0;
    for (unsigned i = 0; i < GROUP_SLOTS; i++) {
        uint64_t st = slots[i * 2], hb = slots[i * 2 + 1];
        slot_obs_t *o = &g->obs[i];
        if (i == g->slot || SLOT_STATE(st) == SLOT_FREE) {
            o->since_ns = 0;
            continue;
        }
        if (o->since_ns == 0 || o->state != st || o->hb != hb) {
            /* first sight, or it moved: the lease starts now on our clock */
            o->state = st;
            o->hb = hb;
            o->since_ns = now;
            continue;
        }
        if (now - o->since_ns < g->lease_ns) continue;
        /* silent for a whole lease: take it over (one reclaimer wins the CAS) */
        uint64_t rec = SLOT_WORD(0, SLOT_GEN(st), SLOT_RECLAIM), old;
        if (SLOT_STATE(st) == SLOT_LIVE) {
            status = xm_compare_swap(g->alloc, slot_off(i), st, rec, &old);
            if (status != XM_OK) return status;
            if (old != st) {
                o->since_ns = 0;
                continue;
            }
        }
        uint64_t blocks;
        status = clear_owner(g, (uint8_t)(i + 1), &blocks);
        if (status != XM_OK) return status;
        status = xm_compare_swap(g->alloc, slot_off(i), rec, SLOT_WORD(0, SLOT_GEN(st) + 1, SLOT_FREE),
                                 &old);
        if (status != XM_OK) return status;
        o->since_ns = 0;
        members++;
        blocks_total += blocks;
        xm_log_info("group %llu: reclaimed member %u (%llu blocks)",
                    (unsigned long long)xm_region_id(g->alloc), i, (unsigned long long)blocks);
    }
    if (members_p != NULL) *members_p = members;
    if (bytes_p != NULL) *bytes_p = blocks_total * g->block;
    return XM_OK;
}

XM_EXPORT xm_status_t xm_group_stat(xm_group_h g, xm_group_info_t *info_p)
{
    if (g == NULL || info_p == NULL) return XM_ERR_INVALID;
    uint64_t slots[GROUP_SLOTS * 2];
    xm_status_t status = xm_read(g->alloc, GROUP_SLOT_OFF, slots, sizeof(slots));
    if (status == XM_OK) status = map_refresh(g);
    if (status != XM_OK) return status;
    xm_group_info_t info = {.block_size = g->block, .blocks = g->nblocks,
                            .lease_ms = g->lease_ns / 1000000ull, .member = g->slot};
    for (unsigned i = 0; i < GROUP_SLOTS; i++) info.members += SLOT_STATE(slots[i * 2]) != SLOT_FREE;
    for (uint64_t b = 0; b < g->nblocks; b++) {
        if (g->map[b] == 0) info.free_blocks++;
        else if ((g->map[b] & 0x7f) == g->slot + 1) info.own_blocks++;
    }
    *info_p = info;
    return XM_OK;
}
