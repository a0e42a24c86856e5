/* CLOCK victim selection of the mapping cache (no network). */
#include <criterion/criterion.h>

#include "../../src/client/map/map.h"

static xm__block_t blk(uint8_t state, uint8_t ref)
{
    return (xm__block_t){.state = state, .ref = ref};
}

Test(map_clock, unreferenced_resident_block_is_the_victim)
{
    xm__block_t b[4] = {blk(XM__BLK_RESIDENT, 1), blk(XM__BLK_RESIDENT, 0), blk(XM__BLK_RESIDENT, 1),
                        blk(XM__BLK_RESIDENT, 0)};
    uint32_t hand = 0, v;
    cr_assert(xm__clock_pick(b, 4, &hand, &v));
    cr_assert_eq(v, 1, "block 0 was referenced: its bit is cleared and it is passed over");
    cr_assert_eq(b[0].ref, 0);
    cr_assert_eq(hand, 2);
    cr_assert(xm__clock_pick(b, 4, &hand, &v));
    cr_assert_eq(v, 3);
    cr_assert_eq(b[2].ref, 0);
    /* the hand wraps: block 0 lost its bit on the first pass */
    cr_assert(xm__clock_pick(b, 4, &hand, &v));
    cr_assert_eq(v, 0);
}

Test(map_clock, all_referenced_second_sweep_finds_one)
{
    xm__block_t b[3] = {blk(XM__BLK_RESIDENT, 1), blk(XM__BLK_RESIDENT, 1), blk(XM__BLK_RESIDENT, 1)};
    uint32_t hand = 1, v;
    cr_assert(xm__clock_pick(b, 3, &hand, &v));
    cr_assert_eq(v, 1, "the hand's own block, once its bit is cleared");
}

Test(map_clock, busy_pinned_and_empty_blocks_are_never_victims)
{
    xm__block_t b[5] = {blk(XM__BLK_EMPTY, 0), blk(XM__BLK_FETCHING, 0), blk(XM__BLK_EVICTING, 0),
                        blk(XM__BLK_POISONED, 0), blk(XM__BLK_RESIDENT, 0)};
    b[4].pins = 1;
    uint32_t hand = 0, v;
    cr_assert_not(xm__clock_pick(b, 5, &hand, &v));
    b[4].pins = 0;
    cr_assert(xm__clock_pick(b, 5, &hand, &v));
    cr_assert_eq(v, 4);
    cr_assert_not(xm__clock_pick(b, 0, &hand, &v));
}

Test(map_clock, drop_behind_takes_the_nearest_resident_block_below_the_stream)
{
    xm__block_t b[8] = {blk(XM__BLK_RESIDENT, 1), blk(XM__BLK_RESIDENT, 1), blk(XM__BLK_EMPTY, 0),
                        blk(XM__BLK_RESIDENT, 1), blk(XM__BLK_EVICTING, 0), blk(XM__BLK_RESIDENT, 0),
                        blk(XM__BLK_FETCHING, 0), blk(XM__BLK_RESIDENT, 0)};
    b[5].pins = 1;
    uint32_t v;
    cr_assert(xm__behind_pick(b, 7, 8, &v));
    cr_assert_eq(v, 3, "referenced bits do not matter; busy and pinned blocks are skipped");
    cr_assert_eq(b[3].ref, 1, "and nothing is cleared");
    cr_assert(xm__behind_pick(b, 3, 8, &v));
    cr_assert_eq(v, 1);
    cr_assert_not(xm__behind_pick(b, 7, 2, &v), "only span blocks are looked at");
    cr_assert_not(xm__behind_pick(b, 0, 8, &v), "nothing below block 0");
}
