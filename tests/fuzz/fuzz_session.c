/* libFuzzer: sealed control frames (src/rpc/session.c). Once a session is up a peer, or
 * anyone on the path, controls every byte of every frame: rpc_open must refuse all but
 * what the other end sealed, in order, and never crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/rpc/rpc.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_session: check failed: %s (line %d)\n", #cond, __LINE__);  \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

/* A session pair: a's tx feeds b's rx; the first input byte's bit 1 picks the cipher. */
static void pair(rpc_conn_t *a, rpc_conn_t *b, rpc_cipher_t cipher)
{
    static const uint8_t k1[32] = {7, 1, 2, 3}, k2[32] = {9, 8, 7};
    rpc_conn_init(a, -1);
    rpc_conn_init(b, -1);
    rpc_conn_keys(a, cipher, k1, k2);
    rpc_conn_keys(b, cipher, k2, k1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (sodium_init() < 0 || size < 1) return 0;
    rpc_conn_t tx, rx;
    rpc_cipher_t cipher = (data[0] & 2) && crypto_aead_aes256gcm_is_available() ? RPC_CIPHER_AES256GCM
                                                                              : RPC_CIPHER_CHACHA20;
    pair(&tx, &rx, cipher);
    xm_msg_t *m = NULL;
    const char *why = NULL;
    if ((data[0] & 1) == 0) {
        /* bytes nobody sealed: always refused */
        xm_status_t s = rpc_open(&rx, data + 1, size - 1, XM_FRAME_MAX_REPLY, &m, &why);
        CHECK(s != XM_OK && m == NULL && why != NULL);
        return 0;
    }
    /* a frame we sealed, then one byte changed (or none, when the position is past its end) */
    Xmem__RegionCreate rq = XMEM__REGION_CREATE__INIT;
    rq.size = 4096;
    char name[64];
    size_t nlen = size - 1 < sizeof(name) - 1 ? size - 1 : sizeof(name) - 1;
    for (size_t i = 0; i < nlen; i++) name[i] = (char)('a' + data[1 + i] % 26);
    name[nlen] = '\0';
    rq.name = name;
    xm_msg_t req = XMEM__MSG__INIT;
    req.seq = 1;
    req.body_case = XMEM__MSG__BODY_REGION_CREATE;
    req.region_create = &rq;
    uint8_t *buf;
    size_t len;
    CHECK(rpc_seal(&tx, &req, &buf, &len) == XM_OK);
    size_t body = len - XM_FRAME_HEADER;
    size_t pos = size >= 3 ? ((size_t)data[size - 2] << 8 | data[size - 1]) : body;
    bool changed = pos < body;
    if (changed) buf[XM_FRAME_HEADER + pos] ^= (uint8_t)(data[0] | 1);
    xm_status_t s = rpc_open(&rx, buf + XM_FRAME_HEADER, body, XM_FRAME_MAX_REPLY, &m, &why);
    if (changed) {
        CHECK(s != XM_OK && m == NULL);
    } else {
        CHECK(s == XM_OK && m != NULL && m->body_case == XMEM__MSG__BODY_REGION_CREATE);
        CHECK(strcmp(m->region_create->name, name) == 0);
        proto_msg_free(m);
        m = NULL;
        /* the same frame again is a replay */
        s = rpc_open(&rx, buf + XM_FRAME_HEADER, body, XM_FRAME_MAX_REPLY, &m, &why);
        CHECK(s != XM_OK && m == NULL);
    }
    free(buf);
    return 0;
}
