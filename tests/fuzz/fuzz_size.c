/* libFuzzer: sizes, host:port and names, as typed into flags, env and config files. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xmem/xmem.h>

#include "../../src/common/common.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_size: check failed: %s (line %d)\n", #cond, __LINE__);    \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';

    uint64_t v = 0;
    if (xm__parse_size(text, &v) == XM_OK) {
        /* an accepted size prints without overflowing a small buffer */
        char buf[32];
        CHECK(xm__format_size(v, buf, sizeof(buf)) == buf);
        CHECK(strlen(buf) < sizeof(buf));
        /* plain digits mean exactly what strtoull says */
        if (strspn(text, "0123456789") == strlen(text)) {
            CHECK(v == strtoull(text, NULL, 10));
        }
    }

    char host[64], port[8];
    memset(host, 0x55, sizeof(host));
    memset(port, 0x55, sizeof(port));
    if (xm__parse_hostport(text, host, sizeof(host), port, sizeof(port)) == XM_OK) {
        CHECK(memchr(host, '\0', sizeof(host)) != NULL && host[0] != '\0');
        CHECK(memchr(port, '\0', sizeof(port)) != NULL && port[0] != '\0');
        long p = strtol(port, NULL, 10);
        CHECK(p >= 0 && p <= 65535);
    }

    if (xm__name_valid(text)) {
        CHECK(strlen(text) >= 1 && strlen(text) <= XM_NAME_MAX);
    }
    free(text);
    return 0;
}
