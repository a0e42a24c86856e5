/* client: xm_version and the sized-struct rules of the ABI (include/xmem/xmem.h, "ABI rules"). */
#include <string.h>

#include <xmem/xmem.h>

#include "../common/common.h"
#include "abi.h"

/*
 * Frozen layouts: a public struct that changes size or moves a field breaks
 * programs built against an earlier header. Sized structs may only grow at
 * the end (add a check for the new field); fixed ones never change size.
 */
#if UINTPTR_MAX == UINT64_MAX
_Static_assert(sizeof(xm_op_t) == 200, "xm_op_t is fixed-size: private state goes in reserved_");
_Static_assert(offsetof(xm_op_t, reserved_) == 72, "xm_op_t's public fields never move");
_Static_assert(sizeof(xm_region_info_t) == 224, "xm_region_info_t is fixed-size: use reserved_");
_Static_assert(sizeof(xm_appliance_info_t) == 224, "xm_appliance_info_t is fixed-size: use reserved_");
_Static_assert(sizeof(xm_alloc_info_t) == 296, "xm_alloc_info_t is fixed-size: use reserved_");
_Static_assert(sizeof(xm_appliance_entry_t) == 248, "xm_appliance_entry_t is fixed-size: use reserved_");
_Static_assert(sizeof(xm_group_info_t) == 112, "xm_group_info_t is fixed-size: use reserved_");
_Static_assert(sizeof(xm_piece_t) == 16, "xm_piece_t never changes");
_Static_assert(sizeof(xm_grant_info_t) == 88, "xm_grant_info_t is fixed-size: use reserved_");
_Static_assert(offsetof(xm_connect_opts_t, manager) == 48, "xm_connect_opts_t only grows at the end");
_Static_assert(offsetof(xm_map_opts_t, flags) == 28, "xm_map_opts_t only grows at the end");
_Static_assert(offsetof(xm_map_stats_t, huge_frames) == 80, "xm_map_stats_t only grows at the end");
#endif
_Static_assert(offsetof(xm_connect_opts_t, size) == 0 && offsetof(xm_map_opts_t, size) == 0 &&
                   offsetof(xm_map_stats_t, size) == 0,
               "a sized struct starts with its size");

XM_EXPORT const char *xm_version(unsigned *number_p)
{
    if (number_p != NULL) *number_p = XM_VERSION_NUMBER;
    return XM_VERSION_STRING;
}

xm_status_t xm__sized_in(void *dst, size_t dst_size, const void *src)
{
    size_t size;
    memcpy(&size, src, sizeof(size));
    /* no options struct is near 4 KiB: a larger size is an uninitialised one */
    if (size < sizeof(size_t) || size > 4096) return XM_ERR_INVALID;
    /* a newer caller's options this library does not know must be unset */
    for (size_t i = dst_size; i < size; i++) {
        if (((const unsigned char *)src)[i] != 0) return XM_ERR_INVALID;
    }
    size_t n = XM_MIN(size, dst_size);
    memcpy((char *)dst + sizeof(size_t), (const char *)src + sizeof(size_t), n - sizeof(size_t));
    return XM_OK;
}

xm_status_t xm__sized_out(void *dst, const void *src, size_t src_size)
{
    size_t size;
    memcpy(&size, dst, sizeof(size));
    if (size < sizeof(size_t)) return XM_ERR_INVALID;
    size_t n = XM_MIN(size, src_size);
    /* a newer caller's fields past src_size are left alone (zero from its initializer):
     * zeroing them would trust `size` to say how large the caller's storage is */
    memcpy((char *)dst + sizeof(size_t), (const char *)src + sizeof(size_t), n - sizeof(size_t));
    return XM_OK;
}
