/* libxmem I/O: bounds-checked one-sided reads, writes and atomics, sync and
 * async. The public calls check their arguments and hand the operation to the
 * context's data path (dp.c), which any number of threads share. */
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "client.h"

static xm_status_t op_check(xm_ctx_h ctx, const xm_op_t *op)
{
    const xm_region_h r = op->region;
    if (r == NULL || r->ctx != ctx) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "operation without a region of this context");
    }
    switch (op->opcode) {
    case XM_OP_READ:
    case XM_OP_WRITE:
        if (op->buf == NULL) return xm__ctx_error(ctx, XM_ERR_INVALID, "no buffer");
        if (op->length == 0 || op->offset >= r->size || op->length > r->size - op->offset) {
            return xm__ctx_error(ctx, XM_ERR_RANGE,
                                 "%zu bytes at offset %llu do not fit region %llu of %llu bytes",
                                 op->length, (unsigned long long)op->offset,
                                 (unsigned long long)r->id, (unsigned long long)r->size);
        }
        if (op->opcode == XM_OP_WRITE && r->access != XM_ACCESS_READ_WRITE) {
            return xm__ctx_error(ctx, XM_ERR_PERM, "region %llu is open read-only",
                                 (unsigned long long)r->id);
        }
        return XM_OK;
    case XM_OP_FETCH_ADD:
    case XM_OP_COMPARE_SWAP:
        if (op->offset % 8 != 0 || r->size < 8 || op->offset > r->size - 8) {
            return xm__ctx_error(ctx, op->offset % 8 != 0 ? XM_ERR_INVALID : XM_ERR_RANGE,
                                 "atomic at offset %llu: needs 8 aligned bytes inside the region",
                                 (unsigned long long)op->offset);
        }
        if (r->access != XM_ACCESS_READ_WRITE) {
            return xm__ctx_error(ctx, XM_ERR_PERM, "region %llu is open read-only",
                                 (unsigned long long)r->id);
        }
        return XM_OK;
    }
    return xm__ctx_error(ctx, XM_ERR_INVALID, "unknown opcode %d", (int)op->opcode);
}

XM_EXPORT int xm_progress(xm_ctx_h ctx)
{
    return ctx != NULL ? xm__dp_progress(ctx->dp) : 0;
}

XM_EXPORT xm_status_t xm_post(xm_ctx_h ctx, xm_op_t *op)
{
    if (ctx == NULL || op == NULL) return XM_ERR_INVALID;
    xm_status_t status = op_check(ctx, op);
    if (status != XM_OK) {
        op->pending_ = 0;
        op->status = status;
        return status;
    }
    /* replicate / ec: resil.c does the whole operation (many pieces in flight) now */
    if (xm__resil_is(op->region)) {
        xm__resil_op(op);
        return op->status;
    }
    return xm__dp_post(ctx->dp, op, 0);
}

XM_EXPORT xm_status_t xm_wait(xm_ctx_h ctx, xm_op_t **ops, size_t n)
{
    if (ctx == NULL || (ops == NULL && n > 0)) return XM_ERR_INVALID;
    return xm__dp_wait(ctx->dp, ops, n);
}

XM_EXPORT xm_status_t xm_submit(xm_ctx_h ctx, xm_op_t *ops, size_t n)
{
    if (ctx == NULL || (ops == NULL && n > 0)) return XM_ERR_INVALID;
    xm_status_t first = XM_OK;
    for (size_t i = 0; i < n; i++) {
        xm_status_t s = xm_post(ctx, &ops[i]);
        if (s != XM_OK && first == XM_OK) first = s;
    }
    for (size_t i = 0; i < n; i++) {
        xm_op_t *p = &ops[i];
        xm_status_t s = xm__dp_wait(ctx->dp, &p, 1);
        if (s != XM_OK && first == XM_OK) first = s;
    }
    return first;
}

static xm_status_t run_one(xm_region_h region, xm_op_t *op)
{
    if (region == NULL) return XM_ERR_INVALID;
    op->region = region;
    xm_status_t status = xm_post(region->ctx, op);
    if (status != XM_OK || xm__resil_is(region)) return status; /* resil.c's op is done */
    return xm__dp_wait(region->ctx->dp, &op, 1);
}

XM_EXPORT xm_status_t xm_read(xm_region_h region, uint64_t offset, void *buf, size_t length)
{
    xm_op_t op = {.opcode = XM_OP_READ, .offset = offset, .buf = buf, .length = length};
    return run_one(region, &op);
}

XM_EXPORT xm_status_t xm_write(xm_region_h region, uint64_t offset, const void *buf, size_t length)
{
    xm_op_t op = {.opcode = XM_OP_WRITE, .offset = offset, .buf = (void *)buf, .length = length};
    return run_one(region, &op);
}

XM_EXPORT xm_status_t xm_fetch_add(xm_region_h region, uint64_t offset, uint64_t add,
                                   uint64_t *old_p)
{
    xm_op_t op = {.opcode = XM_OP_FETCH_ADD, .offset = offset, .operand = add};
    xm_status_t status = run_one(region, &op);
    if (status == XM_OK && old_p != NULL) *old_p = op.result;
    return status;
}

XM_EXPORT xm_status_t xm_compare_swap(xm_region_h region, uint64_t offset, uint64_t expected,
                                      uint64_t desired, uint64_t *old_p)
{
    xm_op_t op = {.opcode = XM_OP_COMPARE_SWAP, .offset = offset, .operand = desired,
                  .compare = expected};
    xm_status_t status = run_one(region, &op);
    if (status == XM_OK && old_p != NULL) *old_p = op.result;
    return status;
}

xm_status_t xm__region_copy(xm_region_h r, xm_region_h *copy_p)
{
    xm_region_h c = malloc(sizeof(*c));
    if (c == NULL) return XM_ERR_NO_MEMORY;
    memcpy(c, r, sizeof(*c));
    c->ctx = NULL;
    if (r->parts != NULL) {
        c->parts = malloc(r->nparts * sizeof(*c->parts));
        if (c->parts == NULL) {
            free(c);
            return XM_ERR_NO_MEMORY;
        }
        memcpy(c->parts, r->parts, r->nparts * sizeof(*c->parts));
        for (uint32_t i = 0; i < r->nparts; i++) {
            if (c->parts[i].lmap != NULL) xm__lmap_get(c->parts[i].lmap);
        }
    }
    /* the local transport's mappings stay while the copy uses them */
    if (c->lmap != NULL) xm__lmap_get(c->lmap);
    xm__resil_get(c->resil);
    *copy_p = c;
    return XM_OK;
}

void xm__region_free(xm_region_h r)
{
    if (r == NULL) return;
    if (r->lmap != NULL) xm__lmap_put(r->lmap);
    xm__resil_put(r->resil);
    for (uint32_t i = 0; r->parts != NULL && i < r->nparts; i++) {
        if (r->parts[i].lmap != NULL) xm__lmap_put(r->parts[i].lmap);
    }
    free(r->parts);
    free(r);
}
