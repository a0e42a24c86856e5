/* libxmem: internal clones of a context and of region handles, so that a
 * mapping's handler threads have data paths of their own (a context is not
 * thread-safe, and the application keeps using its own). */
#include <stdlib.h>
#include <string.h>

#include "../../common/common.h"
#include "map.h"

/* Copy everything that says where and who (addresses, secret, tenant,
 * provider, timeout, peers), nothing that is a live resource: the clone
 * opens its own data endpoint (and, where it needs one, its own control
 * connection) on first use. */
xm_status_t xm__ctx_clone(xm_ctx_h ctx, xm_ctx_h *clone_p)
{
    xm_ctx_h c = malloc(sizeof(*c));
    if (c == NULL) return XM_ERR_NO_MEMORY;
    memcpy(c, ctx, sizeof(*c));
    rpc_conn_init(&c->conn, -1);
    memset(&c->fab, 0, sizeof(c->fab));
    c->fab.wait_fd = -1;
    c->fab_open = false;
    c->fab_broken = false;
    c->inflight = c->inflight_tail = NULL;
    c->chunks = 0;
    c->last_error[0] = '\0';
    c->peers = NULL;
    c->npeers = 0;
    xm_status_t status = xm__ctx_clone_refresh(c, ctx);
    if (status != XM_OK) {
        free(c);
        return status;
    }
    *clone_p = c;
    return XM_OK;
}

xm_status_t xm__ctx_clone_refresh(xm_ctx_h clone, xm_ctx_h ctx)
{
    if (ctx->npeers <= clone->npeers) return XM_OK;
    xm__peer_t *p = realloc(clone->peers, ctx->npeers * sizeof(*p));
    if (p == NULL) return XM_ERR_NO_MEMORY;
    clone->peers = p;
    for (uint32_t i = clone->npeers; i < ctx->npeers; i++) {
        p[i] = ctx->peers[i];
        p[i].inserted = false;
        if (clone->fab_open) {
            xm_status_t status = net_peer_insert(&clone->fab, p[i].addr, p[i].addr_len, NULL, &p[i].fi);
            if (status != XM_OK) {
                clone->fab_broken = true; /* reopened (inserting every peer) on next use */
            } else {
                p[i].inserted = true;
            }
        }
    }
    clone->npeers = ctx->npeers;
    if (clone->provider[0] == '\0') memcpy(clone->provider, ctx->provider, sizeof(clone->provider));
    return XM_OK;
}

void xm__ctx_clone_destroy(xm_ctx_h clone)
{
    xm_disconnect(clone);
}

xm_status_t xm__region_clone(xm_region_h r, xm_ctx_h ctx, xm_region_h *clone_p)
{
    xm_region_h c = malloc(sizeof(*c));
    if (c == NULL) return XM_ERR_NO_MEMORY;
    memcpy(c, r, sizeof(*c));
    c->ctx = ctx;
    if (r->parts != NULL) {
        c->parts = malloc(r->nparts * sizeof(*c->parts));
        if (c->parts == NULL) {
            free(c);
            return XM_ERR_NO_MEMORY;
        }
        memcpy(c->parts, r->parts, r->nparts * sizeof(*c->parts));
    }
    *clone_p = c;
    return XM_OK;
}
