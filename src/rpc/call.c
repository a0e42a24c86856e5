/* The mutual challenge-response of docs/security.md, for daemons that talk to
 * daemons (manager <-> appliance). libxmem and xmemd's own server keep theirs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "net.h"

static xm_status_t exchange(int fd, xm_msg_t *req, uint64_t seq, uint32_t timeout_ms,
                            xm_msg_t **rep_p, const char **why_p)
{
    req->seq = seq;
    xm_status_t status = net_send_msg(fd, req, timeout_ms);
    if (status != XM_OK) return status;
    xm_msg_t *rep;
    status = net_recv_msg(fd, XM_FRAME_MAX_REPLY, (int)timeout_ms, timeout_ms, &rep, why_p);
    if (status != XM_OK) return status;
    if (rep->seq != seq) {
        proto_msg_free(rep);
        *why_p = "reply out of turn";
        return XM_ERR_PROTOCOL;
    }
    xm_status_t s = net_reply_status(rep, NULL, 0);
    if (s != XM_OK) {
        proto_msg_free(rep);
        *why_p = s == XM_ERR_AUTH ? "the peer refused the cluster secret" : "the peer refused";
        return s;
    }
    *rep_p = rep;
    return XM_OK;
}

xm_status_t net_handshake_client(int fd, const net_secret_t *secret, const char *tenant,
                                 uint32_t timeout_ms, xm_msg_t **welcome_p, const char **why_p)
{
    *why_p = NULL;
    uint8_t client_nonce[XM_NONCE_LEN], server_nonce[XM_NONCE_LEN], mac[XM_MAC_LEN];
    net_random(client_nonce, sizeof(client_nonce));
    Xmem__Hello hello = XMEM__HELLO__INIT;
    hello.version = XM_PROTO_VERSION;
    hello.tenant = (char *)tenant;
    hello.client_nonce = (ProtobufCBinaryData){XM_NONCE_LEN, client_nonce};
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_HELLO;
    req.hello = &hello;
    xm_status_t status = exchange(fd, &req, 1, timeout_ms, &rep, why_p);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_CHALLENGE ||
        !net_auth_verify(secret, "xmem-server", client_nonce, rep->challenge->server_nonce.data,
                         tenant, rep->challenge->server_mac.data)) {
        proto_msg_free(rep);
        *why_p = "the peer did not prove it holds the cluster secret";
        return XM_ERR_AUTH;
    }
    memcpy(server_nonce, rep->challenge->server_nonce.data, XM_NONCE_LEN);
    proto_msg_free(rep);
    net_auth_mac(secret, "xmem-client", server_nonce, client_nonce, tenant, mac);
    Xmem__Auth auth = XMEM__AUTH__INIT;
    auth.client_mac = (ProtobufCBinaryData){XM_MAC_LEN, mac};
    xm_msg_t req2 = XMEM__MSG__INIT;
    req2.body_case = XMEM__MSG__BODY_AUTH;
    req2.auth = &auth;
    status = exchange(fd, &req2, 2, timeout_ms, &rep, why_p);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_WELCOME) {
        proto_msg_free(rep);
        *why_p = "no welcome";
        return XM_ERR_PROTOCOL;
    }
    *welcome_p = rep;
    return XM_OK;
}

xm_status_t net_handshake_server(int fd, const net_secret_t *secret, const Xmem__Welcome *welcome,
                                 uint32_t timeout_ms, char *tenant, size_t tenant_len,
                                 const char **why_p)
{
    *why_p = NULL;
    xm_msg_t *m = NULL;
    xm_status_t status = net_recv_msg(fd, XM_FRAME_MAX_REQUEST, (int)timeout_ms, timeout_ms, &m, why_p);
    if (status != XM_OK || m->body_case != XMEM__MSG__BODY_HELLO) {
        if (*why_p == NULL) *why_p = status != XM_OK ? xm_status_str(status) : "no hello";
        proto_msg_free(m);
        return XM_ERR_PROTOCOL;
    }
    uint8_t client_nonce[XM_NONCE_LEN], server_nonce[XM_NONCE_LEN], mac[XM_MAC_LEN];
    memcpy(client_nonce, m->hello->client_nonce.data, XM_NONCE_LEN);
    snprintf(tenant, tenant_len, "%s", m->hello->tenant);
    bool version_ok = m->hello->version == XM_PROTO_VERSION;
    uint64_t seq = m->seq;
    proto_msg_free(m);
    xm_msg_t rep = XMEM__MSG__INIT;
    rep.seq = seq;
    if (!version_ok) {
        rep.status = XM_ERR_PROTOCOL;
        rep.error = "unsupported protocol version";
        net_send_msg(fd, &rep, timeout_ms);
        *why_p = "unsupported protocol version";
        return XM_ERR_PROTOCOL;
    }
    net_random(server_nonce, sizeof(server_nonce));
    net_auth_mac(secret, "xmem-server", client_nonce, server_nonce, tenant, mac);
    Xmem__Challenge ch = XMEM__CHALLENGE__INIT;
    ch.server_nonce = (ProtobufCBinaryData){XM_NONCE_LEN, server_nonce};
    ch.server_mac = (ProtobufCBinaryData){XM_MAC_LEN, mac};
    rep.body_case = XMEM__MSG__BODY_CHALLENGE;
    rep.challenge = &ch;
    if (net_send_msg(fd, &rep, timeout_ms) != XM_OK) return XM_ERR_DISCONNECTED;

    m = NULL;
    status = net_recv_msg(fd, XM_FRAME_MAX_REQUEST, (int)timeout_ms, timeout_ms, &m, why_p);
    if (status != XM_OK || m->body_case != XMEM__MSG__BODY_AUTH) {
        if (*why_p == NULL) *why_p = status != XM_OK ? xm_status_str(status) : "no auth";
        proto_msg_free(m);
        return XM_ERR_PROTOCOL;
    }
    bool ok = net_auth_verify(secret, "xmem-client", server_nonce, client_nonce, tenant,
                              m->auth->client_mac.data);
    xm_msg_t rep2 = XMEM__MSG__INIT;
    rep2.seq = m->seq;
    proto_msg_free(m);
    if (!ok) {
        rep2.status = XM_ERR_AUTH;
        rep2.error = "wrong cluster secret";
        net_send_msg(fd, &rep2, timeout_ms);
        *why_p = "wrong cluster secret";
        return XM_ERR_AUTH;
    }
    rep2.body_case = XMEM__MSG__BODY_WELCOME;
    rep2.welcome = (Xmem__Welcome *)welcome;
    return net_send_msg(fd, &rep2, timeout_ms);
}

xm_status_t net_reply_status(const xm_msg_t *rep, char *why, size_t whylen)
{
    if (rep->status != XM_OK) {
        xm_status_t s = rep->status >= XM_ERR_AGAIN && rep->status < 0 ? (xm_status_t)rep->status
                                                                        : XM_ERR_PROTOCOL;
        snprintf(why, whylen, "%s", rep->error != NULL && rep->error[0] ? rep->error : xm_status_str(s));
        return s;
    }
    return XM_OK;
}

xm_status_t net_call_many(int fd, xm_msg_t *const *reqs, size_t n, uint64_t *seq_p,
                          uint32_t timeout_ms, xm_msg_t **reps, xm_status_t *statuses,
                          char *why, size_t whylen)
{
    for (size_t i = 0; i < n; i++) {
        reps[i] = NULL;
        statuses[i] = XM_ERR_DISCONNECTED;
    }
    /* every request in one send: the peer serves them back to back without a wake-up each */
    uint8_t *all = NULL;
    size_t all_len = 0;
    xm_status_t status = XM_OK;
    for (size_t i = 0; i < n && status == XM_OK; i++) {
        reqs[i]->seq = ++*seq_p;
        uint8_t *buf;
        size_t len;
        status = proto_encode(reqs[i], &buf, &len);
        if (status != XM_OK) break;
        uint8_t *grown = realloc(all, all_len + len);
        if (grown == NULL) {
            free(buf);
            status = XM_ERR_NO_MEMORY;
            break;
        }
        all = grown;
        memcpy(all + all_len, buf, len);
        all_len += len;
        free(buf);
    }
    if (status != XM_OK) {
        free(all);
        snprintf(why, whylen, "cannot encode: %s", xm_status_str(status));
        for (size_t i = 0; i < n; i++) statuses[i] = status;
        return status;
    }
    uint64_t deadline = xm__now_ns() + (uint64_t)timeout_ms * 1000000ull;
    status = net_send_raw_by(fd, all, all_len, deadline);
    free(all);
    if (status != XM_OK) {
        snprintf(why, whylen, "cannot send: %s", xm_status_str(status));
        status = status == XM_ERR_TIMEOUT ? XM_ERR_TIMEOUT : XM_ERR_DISCONNECTED;
        for (size_t i = 0; i < n; i++) statuses[i] = status;
        return status;
    }
    xm_status_t first = XM_OK;
    for (size_t i = 0; i < n; i++) {
        const char *w = NULL;
        xm_msg_t *rep;
        status = net_recv_msg_by(fd, XM_FRAME_MAX_REPLY, deadline, timeout_ms, &rep, &w);
        if (status != XM_OK) {
            snprintf(why, whylen, "no valid reply: %s", w != NULL ? w : xm_status_str(status));
            for (size_t j = i; j < n; j++) statuses[j] = status;
            return status; /* the transport broke: what is left is unknown */
        }
        if (rep->seq != reqs[i]->seq) {
            proto_msg_free(rep);
            snprintf(why, whylen, "reply out of turn");
            for (size_t j = i; j < n; j++) statuses[j] = XM_ERR_PROTOCOL;
            return XM_ERR_PROTOCOL;
        }
        char rw[256];
        statuses[i] = net_reply_status(rep, rw, sizeof(rw));
        if (statuses[i] == XM_OK) {
            reps[i] = rep;
        } else {
            proto_msg_free(rep);
            if (first == XM_OK) {
                first = statuses[i];
                snprintf(why, whylen, "%s", rw);
            }
        }
    }
    return first;
}

xm_status_t net_call(int fd, xm_msg_t *req, uint64_t *seq_p, uint32_t timeout_ms,
                     xm_msg_t **rep_p, char *why, size_t whylen)
{
    xm_status_t status;
    xm_status_t s = net_call_many(fd, &req, 1, seq_p, timeout_ms, rep_p, &status, why, whylen);
    return s != XM_OK ? s : status;
}
