/* libFuzzer: the file-region table decode (IDENTITY-STEM.files, docs/file-regions.md).
 * The table is xmemd's own 0600 file, but it may be damaged (a full disk, a crash in a
 * write, an edit): decoding never crashes, and what passes the checks keeps the
 * promises the appliance relies on when it restores file regions. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/common/common.h"
#include "proto.h"

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_files: check failed: %s (line %d)\n", #cond, __LINE__); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Xmem__FileRegionTable *tab = NULL;
    const char *why = NULL;
    if (proto_files_decode(data, size, &tab, &why) != XM_OK) {
        CHECK(why != NULL && tab == NULL);
        return 0;
    }
    CHECK(tab->version == 1);
    for (size_t i = 0; i < tab->n_regions; i++) {
        const Xmem__FileRegionRecord *rec = tab->regions[i];
        const char *bad = NULL;
        if (!proto_file_record_ok(rec, &bad)) {
            CHECK(bad != NULL);
            continue;
        }
        CHECK(rec->id != 0 && xm__name_valid(rec->owner));
        CHECK(rec->name[0] == '\0' || xm__name_valid(rec->name));
        CHECK(rec->path[0] == '/' && strlen(rec->path) < 4096);
        for (size_t g = 0; g < rec->n_grants; g++) {
            CHECK(xm__name_valid(rec->grants[g]->tenant));
            CHECK(rec->grants[g]->access == XMEM__ACCESS__ACCESS_READ ||
                  rec->grants[g]->access == XMEM__ACCESS__ACCESS_READ_WRITE);
        }
    }
    xmem__file_region_table__free_unpacked(tab, NULL);
    return 0;
}
