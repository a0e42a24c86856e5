/* proto: control-message framing, encode, decode and validation. No I/O. */
#ifndef XM_PROTO_H
#define XM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <xmem/status.h>

#include "../common/layout.h"
#include "xmem.pb-c.h"

#define XM_PROTO_VERSION 2
#define XM_NONCE_LEN 32
#define XM_MAC_LEN 32
#define XM_KX_LEN 32               /* X25519 public key */
#define XM_STREAM_HEADER_LEN 24    /* secretstream header */
#define XM_IDENTITY_PK_LEN 32      /* Ed25519 public key */
#define XM_IDENTITY_SIG_LEN 64     /* Ed25519 signature */
#define XM_FABRIC_ADDR_MAX 512
#define XM_ERROR_TEXT_MAX 512
/* A request is small; a reply may list many regions. */
#define XM_FRAME_MAX_REQUEST (64u * 1024u)
#define XM_FRAME_MAX_REPLY (16u * 1024u * 1024u)
#define XM_FRAME_HEADER 4
/* Allocations: at most this many regions, stripe chunks at most this big. */
#define XM_ALLOC_PARTS_MAX XM_LAYOUT_PARTS_MAX
#define XM_STRIPE_CHUNK_MAX XM_LAYOUT_CHUNK_MAX
/* The tenant name the manager uses towards appliances (docs/security.md). */
#define XM_MANAGER_TENANT "@manager"

typedef Xmem__Msg xm_msg_t;

/*
 * Decode one message body (the bytes after the length header) of at most
 * max bytes and check every field. On failure returns XM_ERR_PROTOCOL and a
 * static reason in *why_p; nothing is allocated.
 */
xm_status_t proto_decode(const uint8_t *buf, size_t len, size_t max, xm_msg_t **msg_p,
                         const char **why_p);
/* Check the fields of a decoded or about-to-be-sent message. */
xm_status_t proto_validate(const xm_msg_t *msg, const char **why_p);
void proto_msg_free(xm_msg_t *msg);
/* Encode with the 4-byte big-endian length header; *buf_p is malloc'd. */
xm_status_t proto_encode(const xm_msg_t *msg, uint8_t **buf_p, size_t *len_p);
/* Length from a frame header; XM_ERR_PROTOCOL when 0 or above max. */
xm_status_t proto_frame_len(const uint8_t hdr[XM_FRAME_HEADER], size_t max, size_t *len_p);

/* The layout a descriptor names (src/common/layout.h), checked; XM_ERR_PROTOCOL and a
 * static reason in *why_p (not NULL) when unknown or invalid. */
xm_status_t proto_desc_layout(const Xmem__AllocDesc *d, xm__layout_t *layout_p, const char **why_p);
/* Bytes part holds of a stripe (xm__layout_part_size); 0 for an invalid stripe. */
uint64_t proto_stripe_part_size(uint64_t size, uint32_t width, uint64_t chunk, uint32_t part);

/* Decode/encode the pool metadata of a file-backed pool. */
xm_status_t proto_pool_decode(const uint8_t *buf, size_t len, Xmem__PoolMeta **meta_p,
                              const char **why_p);
/* The file-region table (IDENTITY-STEM.files, docs/file-regions.md): the table's
 * shape (version 1); each record is then checked by proto_file_record_ok, and a
 * bad one is dropped alone. */
xm_status_t proto_files_decode(const uint8_t *buf, size_t len, Xmem__FileRegionTable **tab_p, const char **why_p);
bool proto_file_record_ok(const Xmem__FileRegionRecord *rec, const char **why_p);
void proto_pool_free(Xmem__PoolMeta *meta);

#endif
