/* client/local: libxmem's side of the local transport (local.c; src/xfer/local.h). */
#ifndef XM_CLIENT_LOCAL_H
#define XM_CLIENT_LOCAL_H

#include <stdbool.h>

#include <xmem/xmem.h>

#include "../proto/proto.h"

typedef struct xm__lmap xm__lmap_t;
struct xm__local;

/* ctx.c: the appliance's Welcome (its boot id and local socket). */
void xm__local_welcome(xm_ctx_h ctx, const Xmem__Welcome *w);
/* ctx.c: the context is going away (mappings keep what they use). */
void xm__local_ctx_gone(xm_ctx_h ctx);
/* region.c: map a plain region of the context's appliance when the transport allows;
 * sets r->lmap / r->local, or leaves them NULL (over the fabric). An error only with
 * XMEM_TRANSPORT=local when the appliance offers the region locally and it failed. */
xm_status_t xm__local_region(xm_ctx_h ctx, xm_region_h r);
/* alloc.c: the same for every part of an allocation (parts[i].lmap / .local). */
xm_status_t xm__local_alloc(xm_ctx_h ctx, xm_region_h a, const Xmem__AllocDesc *d);
/* region.c: unmap (a reference: copies of the handle hold their own, xm__lmap_get). */
void xm__local_close(xm_region_h r);
void xm__lmap_get(xm__lmap_t *m);
void xm__lmap_put(xm__lmap_t *m);
/*
 * The data path: when every part op touches is mapped, do op here and now (memcpy or
 * __atomic builtins, then the retirement checks), set op->status (release) and return
 * true; false: op goes over the fabric. Any thread.
 */
bool xm__local_op(xm_op_t *op);
/* An allocation with parts on this host and parts elsewhere: is part mapped here? Does r have
 * any part mapped here? */
bool xm__local_part(xm_region_h r, uint32_t part);
bool xm__local_any(xm_region_h r);
/* Do the pieces of op that lie in mapped parts, now, with the same checks as xm__local_op (the
 * caller posts the others over the fabric); the status, xm_last_error set on failure. */
xm_status_t xm__local_some(xm_op_t *op);

#endif
