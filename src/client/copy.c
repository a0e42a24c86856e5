/* libxmem: xm_region_copy, a region copied to a region on another appliance by the source
 * appliance itself (src/appliance/copy.c, docs/region-copy.md): the client starts the copy,
 * then asks for its progress until it ends. No byte goes through the client. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/common.h"
#include "client.h"

#define COPY_POLL_MS 20

static xm_status_t copy_state(xm_ctx_h ctx, xm_msg_t *rep, Xmem__CopyState *out)
{
    if (rep->body_case != XMEM__MSG__BODY_COPY_STATE) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "appliance sent no copy state");
    }
    *out = *rep->copy_state;
    out->why = NULL;
    return XM_OK;
}

/* The copy's state now (cancel: stop it); why copied into why (failed copies). */
static xm_status_t copy_ask(xm_ctx_h ctx, uint64_t id, bool cancel, Xmem__CopyState *st, char *why,
                            size_t whylen)
{
    Xmem__CopyRef ref = XMEM__COPY_REF__INIT;
    ref.id = id;
    ref.cancel = cancel;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_COPY_STATUS;
    req.copy_status = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    snprintf(why, whylen, "%s", rep->body_case == XMEM__MSG__BODY_COPY_STATE && rep->copy_state->why != NULL
                                    ? rep->copy_state->why : "");
    status = copy_state(ctx, rep, st);
    if (status == XM_OK) proto_msg_free(rep);
    return status;
}

static const char *opts_check(const xm_copy_opts_t *opts)
{
    if (opts == NULL) return NULL;
    if (opts->size < sizeof(size_t) || opts->size > 4096) return "xm_copy_opts_t.size is not set";
    /* bytes a newer header has beyond ours must be zero */
    const uint8_t *p = (const uint8_t *)opts;
    for (size_t i = sizeof(xm_copy_opts_t); i < opts->size; i++) {
        if (p[i] != 0) return "xm_copy_opts_t has options this library does not know";
    }
    return NULL;
}

XM_EXPORT xm_status_t xm_region_copy(xm_region_h source, xm_region_h target,
                                     const xm_copy_opts_t *opts_in, uint64_t *done_p)
{
    if (source == NULL || target == NULL || source->ctx == NULL || target->ctx == NULL) {
        return XM_ERR_INVALID;
    }
    xm_ctx_h ctx = source->ctx;
    const char *bad = opts_check(opts_in);
    if (bad != NULL) return xm__ctx_error(ctx, XM_ERR_INVALID, "%s", bad);
    xm_copy_opts_t opts = {.size = sizeof(opts)};
    if (opts_in != NULL) memcpy(&opts, opts_in, XM_MIN(opts_in->size, sizeof(opts)));
    if (source->parts != NULL || target->parts != NULL || ctx->manager || target->ctx->manager) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "region copy takes plain regions (not allocations)");
    }
    if (target->access != XM_ACCESS_READ_WRITE) {
        return xm__ctx_error(ctx, XM_ERR_PERM, "the target region was opened read-only");
    }
    if (target->size < source->size) {
        return xm__ctx_error(ctx, XM_ERR_RANGE, "target region %llu (%llu bytes) is smaller than "
                             "source region %llu (%llu bytes)", (unsigned long long)target->id,
                             (unsigned long long)target->size, (unsigned long long)source->id,
                             (unsigned long long)source->size);
    }
    if (opts.offset > source->size) {
        return xm__ctx_error(ctx, XM_ERR_RANGE, "copy offset past the end of the source region");
    }
    /* where the target's data endpoint is, as its appliance told the target's context */
    xm__dp_t *dp = target->ctx->dp;
    uint8_t addr[XM_FABRIC_ADDR_MAX];
    size_t addr_len = 0;
    pthread_mutex_lock(&dp->lock);
    if (dp->npeers > 0 && dp->peer_chunk[0] != NULL) {
        addr_len = dp->peer_chunk[0][0].addr_len;
        memcpy(addr, dp->peer_chunk[0][0].addr, addr_len);
    }
    pthread_mutex_unlock(&dp->lock);
    if (addr_len == 0) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "the target's appliance has no data address");
    }
    char control[INET6_ADDRSTRLEN + 16] = "";
    pthread_mutex_lock(&target->ctx->ctl_lock);
    if (target->ctx->ctrl_peer.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&target->ctx->ctrl_peer;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(control, sizeof(control), "%s:%u", ip, ntohs(sin->sin_port));
    }
    pthread_mutex_unlock(&target->ctx->ctl_lock);

    Xmem__RegionRef ref = XMEM__REGION_REF__INIT;
    ref.id = source->id;
    ref.name = "";
    ref.access = XMEM__ACCESS__ACCESS_READ;
    Xmem__RegionCopy rc = XMEM__REGION_COPY__INIT;
    rc.source = &ref;
    rc.target_fabric_addr = (ProtobufCBinaryData){addr_len, addr};
    rc.target_control = control;
    rc.target_region = target->id;
    rc.target_key = target->key;
    rc.offset = opts.offset;
    rc.chunk = opts.chunk;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_COPY;
    req.region_copy = &rc;
    uint64_t done = opts.offset;
    if (done_p != NULL) *done_p = done;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    Xmem__CopyState st;
    status = copy_state(ctx, rep, &st);
    if (status != XM_OK) return status;
    proto_msg_free(rep);
    uint64_t id = st.id;
    uint64_t reported = UINT64_MAX;
    uint32_t poll_ms = opts.poll_ms != 0 ? opts.poll_ms : COPY_POLL_MS;
    char why[XM_ERROR_TEXT_MAX + 1] = "";
    for (;;) {
        if (st.done > done) done = st.done;
        if (done_p != NULL) *done_p = done;
        if (opts.progress != NULL && done != reported) {
            reported = done;
            opts.progress(done, st.total, opts.arg);
        }
        if (st.state != 1) break;
        struct timespec nap = {poll_ms / 1000, (long)(poll_ms % 1000) * 1000000L};
        nanosleep(&nap, NULL);
        status = copy_ask(ctx, id, false, &st, why, sizeof(why));
        if (status != XM_OK) {
            return xm__ctx_error(ctx, status, "lost the source appliance %s:%s during the copy of "
                                 "region %llu (%s); %llu of %llu bytes were acknowledged: resume "
                                 "from there or destroy the target region", ctx->host, ctx->port,
                                 (unsigned long long)source->id, xm_status_str(status),
                                 (unsigned long long)done, (unsigned long long)source->size);
        }
    }
    if (st.state == 2) return XM_OK;
    status = st.error < 0 && st.error >= -1000 ? (xm_status_t)st.error : XM_ERR_IO;
    return xm__ctx_error(ctx, status, "copy of region %llu to region %llu failed after %llu of "
                         "%llu bytes: %s", (unsigned long long)source->id,
                         (unsigned long long)target->id, (unsigned long long)done,
                         (unsigned long long)st.total, why[0] != '\0' ? why : xm_status_str(status));
}
