/* The one handshake (client and server) and sealed frames (docs/security.md). */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "rpc.h"

#define ABYTES 16u /* both AEADs' tag */

_Static_assert(crypto_aead_aes256gcm_ABYTES == ABYTES && crypto_aead_chacha20poly1305_ietf_ABYTES == ABYTES,
               "AEAD tags");
_Static_assert(crypto_aead_aes256gcm_NPUBBYTES == 12 && crypto_aead_chacha20poly1305_ietf_NPUBBYTES == 12,
               "AEAD nonces");
_Static_assert(crypto_kx_PUBLICKEYBYTES == XM_KX_LEN, "kx key");
_Static_assert(RPC_ID_PK_LEN == XM_IDENTITY_PK_LEN && RPC_ID_SIG_LEN == XM_IDENTITY_SIG_LEN,
               "identity sizes");

void rpc_conn_init(rpc_conn_t *c, int fd)
{
    memset(c, 0, sizeof(*c));
    c->fd = fd;
}

static void dir_init(rpc_dir_t *d, rpc_cipher_t cipher, const uint8_t key[32])
{
    memcpy(d->key, key, 32);
    if (cipher == RPC_CIPHER_AES256GCM) crypto_aead_aes256gcm_beforenm(&d->aes, key);
    d->counter = 0;
}

void rpc_conn_keys(rpc_conn_t *c, rpc_cipher_t cipher, const uint8_t tx[32], const uint8_t rx[32])
{
    c->cipher = cipher;
    dir_init(&c->tx, cipher, tx);
    dir_init(&c->rx, cipher, rx);
    c->secure = true;
}

/* The ciphers this machine can seal with. */
static uint32_t ciphers_here(void)
{
    return RPC_CIPHER_CHACHA20 | (crypto_aead_aes256gcm_is_available() ? RPC_CIPHER_AES256GCM : 0);
}

/* The nonce of a direction's next frame: its count, little-endian, then zeros. */
static void nonce_of(uint64_t counter, uint8_t nonce[12])
{
    memset(nonce, 0, 12);
    for (int i = 0; i < 8; i++) nonce[i] = (uint8_t)(counter >> (8 * i));
}

void rpc_conn_close(rpc_conn_t *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->secure = false;
    sodium_memzero(&c->tx, sizeof(c->tx));
    sodium_memzero(&c->rx, sizeof(c->rx));
}

size_t rpc_frame_max(size_t max)
{
    return max + ABYTES;
}

/* ---- frames ------------------------------------------------------------------- */

xm_status_t rpc_seal(rpc_conn_t *c, const xm_msg_t *msg, uint8_t **buf_p, size_t *len_p)
{
    uint8_t *buf;
    size_t len;
    xm_status_t status = proto_encode(msg, &buf, &len);
    if (status != XM_OK || !c->secure) {
        if (status == XM_OK) {
            *buf_p = buf;
            *len_p = len;
        }
        return status;
    }
    /* sealed in place: the body is encrypted where it was encoded, the tag appended */
    uint8_t *grown = realloc(buf, len + ABYTES);
    if (grown == NULL) {
        sodium_memzero(buf, len);
        free(buf);
        return XM_ERR_NO_MEMORY;
    }
    buf = grown;
    size_t body = len - XM_FRAME_HEADER;
    uint8_t nonce[12];
    nonce_of(c->tx.counter++, nonce);
    unsigned long long clen;
    if (c->cipher == RPC_CIPHER_AES256GCM) {
        crypto_aead_aes256gcm_encrypt_afternm(buf + XM_FRAME_HEADER, &clen, buf + XM_FRAME_HEADER,
                                              body, NULL, 0, NULL, nonce, &c->tx.aes);
    } else {
        crypto_aead_chacha20poly1305_ietf_encrypt(buf + XM_FRAME_HEADER, &clen, buf + XM_FRAME_HEADER,
                                                  body, NULL, 0, NULL, nonce, c->tx.key);
    }
    uint32_t n = (uint32_t)clen;
    buf[0] = (uint8_t)(n >> 24);
    buf[1] = (uint8_t)(n >> 16);
    buf[2] = (uint8_t)(n >> 8);
    buf[3] = (uint8_t)n;
    *buf_p = buf;
    *len_p = XM_FRAME_HEADER + (size_t)clen;
    return XM_OK;
}

xm_status_t rpc_open(rpc_conn_t *c, const uint8_t *body, size_t len, size_t max, xm_msg_t **msg_p,
                     const char **why_p)
{
    *why_p = NULL;
    if (!c->secure) return proto_decode(body, len, max, msg_p, why_p);
    if (len <= ABYTES) {
        *why_p = "sealed frame too short";
        return XM_ERR_PROTOCOL;
    }
    uint8_t *plain = malloc(len - ABYTES);
    if (plain == NULL) return XM_ERR_NO_MEMORY;
    uint8_t nonce[12];
    nonce_of(c->rx.counter, nonce);
    unsigned long long plain_len;
    int rc = c->cipher == RPC_CIPHER_AES256GCM
                 ? crypto_aead_aes256gcm_decrypt_afternm(plain, &plain_len, NULL, body, len, NULL, 0,
                                                         nonce, &c->rx.aes)
                 : crypto_aead_chacha20poly1305_ietf_decrypt(plain, &plain_len, NULL, body, len, NULL,
                                                             0, nonce, c->rx.key);
    if (rc != 0) {
        free(plain);
        /* the frame expected here did not come: the session must end */
        *why_p = "a frame failed authentication (altered, replayed, reordered or injected)";
        return XM_ERR_PROTOCOL;
    }
    c->rx.counter++;
    xm_status_t status = proto_decode(plain, (size_t)plain_len, max, msg_p, why_p);
    sodium_memzero(plain, (size_t)plain_len);
    free(plain);
    return status;
}

xm_status_t rpc_send(rpc_conn_t *c, const xm_msg_t *msg, uint64_t deadline_ns)
{
    uint8_t *buf;
    size_t len;
    xm_status_t status = rpc_seal(c, msg, &buf, &len);
    if (status != XM_OK) return status;
    status = rpc_sock_xfer(c->fd, buf, len, true, deadline_ns);
    free(buf);
    return status;
}

xm_status_t rpc_recv(rpc_conn_t *c, size_t max, uint64_t deadline_ns, uint32_t frame_ms,
                     xm_msg_t **msg_p, const char **why_p)
{
    *why_p = NULL;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int n;
    do {
        uint64_t now = xm__now_ns();
        int ms = deadline_ns == UINT64_MAX ? -1
                 : now >= deadline_ns     ? 0
                                          : (int)((deadline_ns - now + 999999) / 1000000);
        n = poll(&pfd, 1, ms);
    } while (n < 0 && errno == EINTR);
    if (n == 0) return XM_ERR_TIMEOUT;
    /* once a frame starts it must finish within frame_ms, and by the deadline */
    uint64_t deadline = XM_MIN(deadline_ns, rpc_deadline_after(frame_ms));
    uint8_t hdr[XM_FRAME_HEADER];
    xm_status_t status = rpc_sock_xfer(c->fd, hdr, sizeof(hdr), false, deadline);
    if (status != XM_OK) return status;
    size_t len;
    if (proto_frame_len(hdr, c->secure ? rpc_frame_max(max) : max, &len) != XM_OK) {
        *why_p = "frame length 0 or above the limit";
        return XM_ERR_PROTOCOL;
    }
    uint8_t *body = malloc(len);
    if (body == NULL) return XM_ERR_NO_MEMORY;
    status = rpc_sock_xfer(c->fd, body, len, false, deadline);
    if (status == XM_OK) {
        status = rpc_open(c, body, len, max, msg_p, why_p);
    } else if (status == XM_ERR_DISCONNECTED) {
        *why_p = "truncated frame";
    }
    free(body);
    return status;
}

/* ---- the handshake ------------------------------------------------------------- */

/* T0: the Hello and the server's nonce and X25519 key; T1 = H(T0 || server_header), everything
 * both sides said before the client's MAC. The server's stream key is bound to T0 (its header
 * comes from it), the client's to T1. */
static void transcript0(const Xmem__Hello *h, const uint8_t *server_nonce, const uint8_t *server_kx,
                        uint8_t out[32])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    static const char label[] = "xmem-hs-v2";
    crypto_generichash_update(&st, (const uint8_t *)label, sizeof(label));
    uint8_t le[12];
    for (int i = 0; i < 4; i++) le[i] = (uint8_t)(h->version >> (8 * i));
    for (int i = 0; i < 8; i++) le[4 + i] = (uint8_t)(h->cred_id >> (8 * i));
    crypto_generichash_update(&st, le, sizeof(le));
    crypto_generichash_update(&st, (const uint8_t *)h->tenant, strlen(h->tenant) + 1);
    crypto_generichash_update(&st, h->client_nonce.data, XM_NONCE_LEN);
    crypto_generichash_update(&st, h->client_kx.data, XM_KX_LEN);
    uint8_t offered[4];
    for (int i = 0; i < 4; i++) offered[i] = (uint8_t)(h->ciphers >> (8 * i));
    crypto_generichash_update(&st, offered, sizeof(offered));
    crypto_generichash_update(&st, server_nonce, XM_NONCE_LEN);
    crypto_generichash_update(&st, server_kx, XM_KX_LEN);
    crypto_generichash_final(&st, out, 32);
}

/* H(a || b) for 32-byte a and n-byte b. */
static void chain(const uint8_t a[32], const uint8_t *b, size_t n, uint8_t out[32])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, a, 32);
    crypto_generichash_update(&st, b, n);
    crypto_generichash_final(&st, out, 32);
}

static void mac(const uint8_t key[RPC_KEY_LEN], const char *label, const uint8_t t1[32],
                const uint8_t *extra, size_t extra_len, uint8_t out[XM_MAC_LEN])
{
    crypto_auth_hmacsha512256_state st;
    crypto_auth_hmacsha512256_init(&st, key, RPC_KEY_LEN);
    crypto_auth_hmacsha512256_update(&st, (const uint8_t *)label, strlen(label) + 1);
    crypto_auth_hmacsha512256_update(&st, t1, 32);
    if (extra_len > 0) crypto_auth_hmacsha512256_update(&st, extra, extra_len);
    crypto_auth_hmacsha512256_final(&st, out);
}

/* A direction's key: its X25519 session key bound to the credential and a transcript. */
static void stream_key(const uint8_t key[RPC_KEY_LEN], const uint8_t kx_key[crypto_kx_SESSIONKEYBYTES],
                       const uint8_t t[32], uint8_t out[32])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, key, RPC_KEY_LEN, 32);
    crypto_generichash_update(&st, kx_key, crypto_kx_SESSIONKEYBYTES);
    crypto_generichash_update(&st, t, 32);
    crypto_generichash_final(&st, out, 32);
}

/* T1: T0, the server's salt (the Challenge's header field) and the cipher it chose. */
static void transcript1(const uint8_t t0[32], const uint8_t *server_header, uint32_t cipher,
                        uint8_t out[32])
{
    uint8_t b[XM_STREAM_HEADER_LEN + 4];
    memcpy(b, server_header, XM_STREAM_HEADER_LEN);
    for (int i = 0; i < 4; i++) b[XM_STREAM_HEADER_LEN + i] = (uint8_t)(cipher >> (8 * i));
    chain(t0, b, sizeof(b), out);
}

xm_status_t rpc_handshake_client(rpc_conn_t *c, const rpc_cred_t *cred, const char *principal,
                                 uint32_t timeout_ms, xm_msg_t **welcome_p, char *why,
                                 size_t whylen)
{
    uint64_t deadline = rpc_deadline_after(timeout_ms);
    const char *w = NULL;
    if (sodium_init() < 0) return XM_ERR_IO;
    if ((principal[0] == '@') != cred->cluster) {
        snprintf(why, whylen, cred->cluster ? "the cluster secret takes only @ roles; %s needs its "
                 "own credential (xmem tenant add %s)" : "a tenant credential cannot take the role %s",
                 principal, principal);
        return XM_ERR_AUTH;
    }
    uint8_t client_nonce[XM_NONCE_LEN], kx_pk[crypto_kx_PUBLICKEYBYTES], kx_sk[crypto_kx_SECRETKEYBYTES];
    rpc_random(client_nonce, sizeof(client_nonce));
    crypto_kx_keypair(kx_pk, kx_sk);
    Xmem__Hello hello = XMEM__HELLO__INIT;
    hello.version = XM_PROTO_VERSION;
    hello.tenant = (char *)principal;
    hello.cred_id = cred->cluster ? 0 : cred->id;
    hello.client_nonce = (ProtobufCBinaryData){XM_NONCE_LEN, client_nonce};
    hello.client_kx = (ProtobufCBinaryData){XM_KX_LEN, kx_pk};
    hello.ciphers = ciphers_here();
    xm_msg_t req = XMEM__MSG__INIT, *rep = NULL;
    req.seq = 1;
    req.body_case = XMEM__MSG__BODY_HELLO;
    req.hello = &hello;
    c->secure = false;
    xm_status_t status = rpc_send(c, &req, deadline);
    if (status == XM_OK) status = rpc_recv(c, XM_FRAME_MAX_REPLY, deadline, timeout_ms, &rep, &w);
    if (status != XM_OK) {
        snprintf(why, whylen, "handshake: %s", w != NULL ? w : xm_status_str(status));
        goto out;
    }
    if (rep->status != XM_OK) {
        status = rpc_reply_status(rep, why, whylen);
        goto out;
    }
    if (rep->body_case != XMEM__MSG__BODY_CHALLENGE) {
        snprintf(why, whylen, "handshake: no challenge");
        status = XM_ERR_PROTOCOL;
        goto out;
    }
    const Xmem__Challenge *ch = rep->challenge;
    uint8_t t0[32], t1[32], want[XM_MAC_LEN];
    transcript0(&hello, ch->server_nonce.data, ch->server_kx.data, t0);
    transcript1(t0, ch->server_header.data, ch->cipher, t1);
    mac(cred->key, "xmem-server", t1, NULL, 0, want);
    if (sodium_memcmp(want, ch->server_mac.data, XM_MAC_LEN) != 0) {
        snprintf(why, whylen, "the peer did not prove it holds the %s",
                 cred->cluster ? "cluster secret" : "key of this tenant credential");
        status = XM_ERR_AUTH;
        goto out;
    }
    c->peer_identified = false;
    if (ch->identity_pk.len == XM_IDENTITY_PK_LEN) {
        uint8_t signed_msg[14 + 32];
        memcpy(signed_msg, "xmem-identity", 14);
        memcpy(signed_msg + 14, t1, 32);
        if (crypto_sign_verify_detached(ch->identity_sig.data, signed_msg, sizeof(signed_msg),
                                        ch->identity_pk.data) != 0) {
            snprintf(why, whylen, "the peer's identity signature is wrong");
            status = XM_ERR_AUTH;
            goto out;
        }
        memcpy(c->peer_pk, ch->identity_pk.data, RPC_ID_PK_LEN);
        c->peer_identified = true;
    }
    uint8_t rx[crypto_kx_SESSIONKEYBYTES], tx[crypto_kx_SESSIONKEYBYTES];
    if (crypto_kx_client_session_keys(rx, tx, kx_pk, kx_sk, ch->server_kx.data) != 0) {
        snprintf(why, whylen, "handshake: bad key exchange");
        status = XM_ERR_AUTH;
        goto out;
    }
    if ((ch->cipher & hello.ciphers) == 0 || (ch->cipher & (ch->cipher - 1)) != 0) {
        snprintf(why, whylen, "handshake: the peer chose a cipher that was not offered");
        status = XM_ERR_PROTOCOL;
        goto out;
    }
    /* the client's salt (the Auth's header field) ends the transcript; each direction's key
     * is its X25519 key bound to the credential and the whole transcript */
    uint8_t header[XM_STREAM_HEADER_LEN], ktx[32], krx[32];
    rpc_random(header, sizeof(header));
    chain(t1, header, sizeof(header), c->transcript);
    stream_key(cred->key, rx, c->transcript, krx);
    stream_key(cred->key, tx, c->transcript, ktx);
    rpc_conn_keys(c, (rpc_cipher_t)ch->cipher, ktx, krx);
    c->secure = false; /* the Auth still goes in clear */
    sodium_memzero(ktx, sizeof(ktx));
    sodium_memzero(krx, sizeof(krx));
    sodium_memzero(rx, sizeof(rx));
    sodium_memzero(tx, sizeof(tx));
    proto_msg_free(rep);
    rep = NULL;

    uint8_t cmac[XM_MAC_LEN];
    mac(cred->key, "xmem-client", t1, header, sizeof(header), cmac);
    Xmem__Auth auth = XMEM__AUTH__INIT;
    auth.client_mac = (ProtobufCBinaryData){XM_MAC_LEN, cmac};
    auth.client_header = (ProtobufCBinaryData){XM_STREAM_HEADER_LEN, header};
    xm_msg_t req2 = XMEM__MSG__INIT;
    req2.seq = 2;
    req2.body_case = XMEM__MSG__BODY_AUTH;
    req2.auth = &auth;
    status = rpc_send(c, &req2, deadline);
    if (status != XM_OK) {
        snprintf(why, whylen, "handshake: %s", xm_status_str(status));
        goto out;
    }
    c->secure = true; /* the Welcome is the first sealed frame */
    status = rpc_recv(c, XM_FRAME_MAX_REPLY, deadline, timeout_ms, &rep, &w);
    if (status != XM_OK) {
        /* a refusal of our MAC comes in clear: the server cannot seal for a peer it doubts */
        snprintf(why, whylen, "the peer refused the credential or broke off the handshake (%s)",
                 w != NULL ? w : xm_status_str(status));
        if (status == XM_ERR_PROTOCOL || status == XM_ERR_DISCONNECTED) status = XM_ERR_AUTH;
        goto out;
    }
    if (rep->status != XM_OK || rep->body_case != XMEM__MSG__BODY_WELCOME || rep->seq != 2) {
        status = rep->status != XM_OK ? rpc_reply_status(rep, why, whylen) : XM_ERR_PROTOCOL;
        if (rep->status == XM_OK) snprintf(why, whylen, "handshake: no welcome");
        goto out;
    }
    c->seq = 2;
    *welcome_p = rep;
    rep = NULL;
out:
    sodium_memzero(kx_sk, sizeof(kx_sk));
    proto_msg_free(rep);
    if (status != XM_OK) c->secure = false;
    return status;
}

/* Refuse in clear, before any key is shared, with a reason. */
static void refuse(rpc_conn_t *c, uint64_t seq, xm_status_t status, const char *text,
                   uint64_t deadline)
{
    xm_msg_t rep = XMEM__MSG__INIT;
    rep.seq = seq;
    rep.status = status;
    rep.error = (char *)text;
    c->secure = false;
    rpc_send(c, &rep, deadline);
}

xm_status_t rpc_handshake_server(rpc_conn_t *c, rpc_keyring_t *kr, const rpc_identity_t *idn,
                                 const Xmem__Welcome *welcome, rpc_admit_cb admit, void *arg,
                                 uint32_t timeout_ms, const char **why_p)
{
    /* the whole handshake has one budget: a peer without a credential cannot hold a
     * connection slot longer than timeout_ms */
    uint64_t deadline = rpc_deadline_after(timeout_ms);
    *why_p = NULL;
    c->secure = false;
    xm_msg_t *m = NULL;
    xm_status_t status = rpc_recv(c, XM_FRAME_MAX_REQUEST, deadline, timeout_ms, &m, why_p);
    if (status != XM_OK || m->body_case != XMEM__MSG__BODY_HELLO) {
        if (*why_p == NULL) *why_p = status != XM_OK ? xm_status_str(status) : "no hello";
        proto_msg_free(m);
        return XM_ERR_PROTOCOL;
    }
    const Xmem__Hello *h = m->hello;
    uint64_t seq = m->seq;
    if (h->version != XM_PROTO_VERSION) {
        refuse(c, seq, XM_ERR_PROTOCOL, "unsupported protocol version", deadline);
        proto_msg_free(m);
        *why_p = "unsupported protocol version";
        return XM_ERR_PROTOCOL;
    }
    uint8_t key[RPC_KEY_LEN];
    status = rpc_keyring_key(kr, h->tenant, h->cred_id, key, why_p);
    if (status != XM_OK) {
        refuse(c, seq, XM_ERR_AUTH, *why_p, deadline);
        snprintf(c->principal, sizeof(c->principal), "%s", h->tenant);
        proto_msg_free(m);
        return status;
    }
    snprintf(c->principal, sizeof(c->principal), "%s", h->tenant);
    c->cred_id = h->cred_id;
    uint8_t server_nonce[XM_NONCE_LEN], kx_pk[crypto_kx_PUBLICKEYBYTES], kx_sk[crypto_kx_SECRETKEYBYTES];
    uint8_t rx[crypto_kx_SESSIONKEYBYTES], tx[crypto_kx_SESSIONKEYBYTES];
    uint8_t header[XM_STREAM_HEADER_LEN], t0[32], t1[32], smac[XM_MAC_LEN], sig[RPC_ID_SIG_LEN];
    uint8_t ktx[32], krx[32];
    /* AES-256-GCM where both ends have it (~5x cheaper per frame here), else ChaCha20-Poly1305 */
    uint32_t both = h->ciphers & ciphers_here();
    uint32_t cipher = (both & RPC_CIPHER_AES256GCM) ? RPC_CIPHER_AES256GCM : RPC_CIPHER_CHACHA20;
    rpc_random(server_nonce, sizeof(server_nonce));
    crypto_kx_keypair(kx_pk, kx_sk);
    if (crypto_kx_server_session_keys(rx, tx, kx_pk, kx_sk, h->client_kx.data) != 0) {
        refuse(c, seq, XM_ERR_PROTOCOL, "bad key exchange", deadline);
        proto_msg_free(m);
        m = NULL;
        *why_p = "bad key exchange";
        status = XM_ERR_PROTOCOL;
        goto out;
    }
    if ((both & (RPC_CIPHER_AES256GCM | RPC_CIPHER_CHACHA20)) == 0) {
        refuse(c, seq, XM_ERR_PROTOCOL, "no cipher in common", deadline);
        proto_msg_free(m);
        m = NULL;
        *why_p = "no cipher in common";
        status = XM_ERR_PROTOCOL;
        goto out;
    }
    rpc_random(header, sizeof(header)); /* the server's salt */
    transcript0(h, server_nonce, kx_pk, t0);
    transcript1(t0, header, cipher, t1);
    mac(key, "xmem-server", t1, NULL, 0, smac);
    Xmem__Challenge ch = XMEM__CHALLENGE__INIT;
    ch.server_nonce = (ProtobufCBinaryData){XM_NONCE_LEN, server_nonce};
    ch.server_mac = (ProtobufCBinaryData){XM_MAC_LEN, smac};
    ch.server_kx = (ProtobufCBinaryData){XM_KX_LEN, kx_pk};
    ch.server_header = (ProtobufCBinaryData){XM_STREAM_HEADER_LEN, header};
    ch.cipher = cipher;
    if (idn != NULL) {
        uint8_t signed_msg[14 + 32];
        memcpy(signed_msg, "xmem-identity", 14);
        memcpy(signed_msg + 14, t1, 32);
        crypto_sign_detached(sig, NULL, signed_msg, sizeof(signed_msg), idn->sk);
        ch.identity_pk = (ProtobufCBinaryData){RPC_ID_PK_LEN, (uint8_t *)idn->pk};
        ch.identity_sig = (ProtobufCBinaryData){RPC_ID_SIG_LEN, sig};
    }
    xm_msg_t rep = XMEM__MSG__INIT;
    rep.seq = seq;
    rep.body_case = XMEM__MSG__BODY_CHALLENGE;
    rep.challenge = &ch;
    proto_msg_free(m);
    m = NULL;
    if (rpc_send(c, &rep, deadline) != XM_OK) {
        *why_p = "the peer went away";
        status = XM_ERR_DISCONNECTED;
        goto out;
    }
    status = rpc_recv(c, XM_FRAME_MAX_REQUEST, deadline, timeout_ms, &m, why_p);
    if (status != XM_OK || m->body_case != XMEM__MSG__BODY_AUTH) {
        if (*why_p == NULL) *why_p = status != XM_OK ? xm_status_str(status) : "no auth";
        status = XM_ERR_PROTOCOL;
        goto out;
    }
    uint8_t want[XM_MAC_LEN];
    mac(key, "xmem-client", t1, m->auth->client_header.data, XM_STREAM_HEADER_LEN, want);
    if (sodium_memcmp(want, m->auth->client_mac.data, XM_MAC_LEN) != 0) {
        refuse(c, m->seq, XM_ERR_AUTH, "wrong credential", deadline);
        *why_p = "wrong credential (the MAC did not verify)";
        status = XM_ERR_AUTH;
        goto out;
    }
    chain(t1, m->auth->client_header.data, XM_STREAM_HEADER_LEN, c->transcript);
    stream_key(key, tx, c->transcript, ktx);
    stream_key(key, rx, c->transcript, krx);
    rpc_conn_keys(c, (rpc_cipher_t)cipher, ktx, krx); /* the Welcome is the first sealed frame */
    /* the credential was looked up at the Hello: a revocation since then must not let the
     * peer in (it could hold its Auth back across `xmem tenant rm`) */
    if (!rpc_keyring_valid(kr, c->principal, c->cred_id)) {
        *why_p = "tenant credential revoked";
        status = XM_ERR_AUTH;
    } else if (admit != NULL) {
        status = admit(arg, c, why_p);
    }
    if (status != XM_OK) {
        xm_msg_t no = XMEM__MSG__INIT;
        no.seq = m->seq;
        no.status = status;
        no.error = (char *)*why_p;
        rpc_send(c, &no, deadline);
        goto out;
    }
    Xmem__Welcome w = *welcome;
    w.principal = c->principal;
    xm_msg_t rep2 = XMEM__MSG__INIT;
    rep2.seq = m->seq;
    rep2.body_case = XMEM__MSG__BODY_WELCOME;
    rep2.welcome = &w;
    status = rpc_send(c, &rep2, deadline);
    if (status != XM_OK) *why_p = "the peer went away";
out:
    proto_msg_free(m);
    sodium_memzero(key, sizeof(key));
    sodium_memzero(kx_sk, sizeof(kx_sk));
    sodium_memzero(rx, sizeof(rx));
    sodium_memzero(tx, sizeof(tx));
    sodium_memzero(ktx, sizeof(ktx));
    sodium_memzero(krx, sizeof(krx));
    if (status != XM_OK) c->secure = false;
    return status;
}
