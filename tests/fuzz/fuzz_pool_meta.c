/* libFuzzer: pool metadata decode. The PATH.meta file of a file-backed pool may be damaged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "proto.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_pool_meta: check failed: %s (line %d)\n", #cond, __LINE__); \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Xmem__PoolMeta *meta = NULL;
    const char *why = NULL;
    if (proto_pool_decode(data, size, &meta, &why) != XM_OK) {
        CHECK(why != NULL && meta == NULL);
        return 0;
    }
    /* the promises the appliance relies on when it restores regions */
    CHECK(meta->version == 1 && meta->extent_size != 0 && meta->pool_size != 0);
    for (size_t i = 0; i < meta->n_regions; i++) {
        const Xmem__PoolRegion *r = meta->regions[i];
        CHECK(r->id != 0 && r->id < meta->next_id && r->size != 0 && r->n_extents != 0);
        CHECK((unsigned __int128)r->n_extents * meta->extent_size >= r->size);
        for (size_t g = 0; g < r->n_grants; g++) {
            CHECK(r->grants[g]->tenant != NULL && r->grants[g]->tenant[0] != '\0');
        }
    }
    /* and it survives being written back */
    size_t len = xmem__pool_meta__get_packed_size(meta);
    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf != NULL);
    CHECK(xmem__pool_meta__pack(meta, buf) == len);
    Xmem__PoolMeta *again = NULL;
    CHECK(proto_pool_decode(buf, len, &again, &why) == XM_OK);
    CHECK(again->n_regions == meta->n_regions && again->next_id == meta->next_id);
    proto_pool_free(again);
    free(buf);
    proto_pool_free(meta);
    return 0;
}
