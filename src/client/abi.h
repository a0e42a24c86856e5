/* client: the rules of libxmem's ABI (sized option/statistics structs), shared by the calls that read them. */
#ifndef XM_CLIENT_ABI_H
#define XM_CLIENT_ABI_H

#include <stddef.h>

#include <xmem/xmem.h>

/*
 * Read a caller's sized options struct `src` into `dst` (the library's own
 * struct of `dst_size` bytes, already holding every default and its size).
 * Only the caller's `size` bytes are read; fields past them keep their
 * defaults. XM_ERR_INVALID when `size` < sizeof(size_t) or > 4096, or when the caller's
 * struct is larger and a byte the library does not know is non-zero.
 * `dst`'s size field is left as it was.
 */
xm_status_t xm__sized_in(void *dst, size_t dst_size, const void *src);

/*
 * Write the library's statistics struct `src` (`src_size` bytes) to the
 * caller's sized struct `dst`: at most `dst->size` bytes are written, the
 * size field is left as it was, and so are bytes the caller has beyond
 * `src_size`. XM_ERR_INVALID when `size` < sizeof(size_t).
 */
xm_status_t xm__sized_out(void *dst, const void *src, size_t src_size);

#endif
