/* libFuzzer: control-message decode. A peer controls every byte of a frame body. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_msg: check failed: %s (line %d)\n", #cond, __LINE__);     \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    xm_msg_t *m = NULL;
    const char *why = NULL;
    if (proto_decode(data, size, XM_FRAME_MAX_REPLY, &m, &why) != XM_OK) {
        CHECK(why != NULL && m == NULL);
        return 0;
    }
    CHECK(m != NULL);
    /* what we accept we can send back, and it means the same thing */
    const char *why2 = NULL;
    CHECK(proto_validate(m, &why2) == XM_OK);
    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK(proto_encode(m, &buf, &len) == XM_OK);
    size_t body = 0;
    CHECK(proto_frame_len(buf, XM_FRAME_MAX_REPLY, &body) == XM_OK);
    CHECK(body + XM_FRAME_HEADER == len);
    xm_msg_t *m2 = NULL;
    CHECK(proto_decode(buf + XM_FRAME_HEADER, body, XM_FRAME_MAX_REPLY, &m2, &why2) == XM_OK);
    CHECK(m2->body_case == m->body_case);
    CHECK(m2->seq == m->seq && m2->status == m->status);
    /* a canonical encoding is stable */
    uint8_t *buf2 = NULL;
    size_t len2 = 0;
    CHECK(proto_encode(m2, &buf2, &len2) == XM_OK);
    CHECK(len2 == len && memcmp(buf, buf2, len) == 0);
    free(buf2);
    free(buf);
    proto_msg_free(m2);
    proto_msg_free(m);
    return 0;
}
