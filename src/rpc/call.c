/* Calls on an established session: pipelined requests, replies in order, deadlines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "rpc.h"

xm_status_t rpc_reply_status(const xm_msg_t *rep, char *why, size_t whylen)
{
    if (rep->status != XM_OK) {
        xm_status_t s = rep->status >= XM_ERR_AGAIN && rep->status < 0 ? (xm_status_t)rep->status
                                                                        : XM_ERR_PROTOCOL;
        snprintf(why, whylen, "%s", rep->error != NULL && rep->error[0] ? rep->error : xm_status_str(s));
        return s;
    }
    return XM_OK;
}

xm_status_t rpc_call_many(rpc_conn_t *c, xm_msg_t *const *reqs, size_t n, uint32_t timeout_ms, xm_msg_t **reps, xm_status_t *statuses,
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
        reqs[i]->seq = ++c->seq;
        uint8_t *buf;
        size_t len;
        status = rpc_seal(c, reqs[i], &buf, &len);
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
        /* frames sealed and not sent have moved the stream on: the session cannot go on */
        if (c->secure) rpc_conn_close(c);
        return status;
    }
    uint64_t deadline = xm__now_ns() + (uint64_t)timeout_ms * 1000000ull;
    status = rpc_sock_xfer(c->fd, all, all_len, true, deadline);
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
        status = rpc_recv(c, XM_FRAME_MAX_REPLY, deadline, timeout_ms, &rep, &w);
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
        statuses[i] = rpc_reply_status(rep, rw, sizeof(rw));
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

xm_status_t rpc_call(rpc_conn_t *c, xm_msg_t *req, uint32_t timeout_ms, xm_msg_t **rep_p,
                     char *why, size_t whylen)
{
    xm_status_t status;
    xm_status_t s = rpc_call_many(c, &req, 1, timeout_ms, rep_p, &status, why, whylen);
    return s != XM_OK ? s : status;
}
