/* Framing and strict validation of control messages. */
#include <stdlib.h>
#include <string.h>

#include <xmem/xmem.h>

#include "../common/common.h"
#include "proto.h"

#define FAIL(reason)                                                                         \
    do {                                                                                     \
        *why_p = (reason);                                                                   \
        return XM_ERR_PROTOCOL;                                                              \
    } while (0)

static bool opt_name_ok(const char *s)
{
    return s == NULL || s[0] == '\0' || xm__name_valid(s);
}

static bool access_ok(Xmem__Access a, bool none_ok)
{
    return a == XMEM__ACCESS__ACCESS_READ || a == XMEM__ACCESS__ACCESS_READ_WRITE ||
           (none_ok && a == XMEM__ACCESS__ACCESS_NONE);
}

static xm_status_t ref_ok(const Xmem__RegionRef *ref, const char **why_p)
{
    if (ref == NULL) FAIL("missing region reference");
    if (!opt_name_ok(ref->name)) FAIL("bad region name");
    if (!opt_name_ok(ref->tenant)) FAIL("bad tenant name");
    if (ref->id == 0 && (ref->name == NULL || ref->name[0] == '\0'))
        FAIL("region reference has neither id nor name");
    if (!access_ok(ref->access, true)) FAIL("bad access value");
    return XM_OK;
}

static xm_status_t info_ok(const Xmem__RegionInfo *info, const char **why_p)
{
    if (info == NULL) FAIL("missing region info");
    if (info->id == 0 || info->size == 0) FAIL("region info without id or size");
    if (!opt_name_ok(info->name) || !opt_name_ok(info->owner)) FAIL("bad name in region info");
    for (size_t i = 0; i < info->n_grant_list; i++) {
        if (info->grant_list[i] == NULL || !xm__name_valid(info->grant_list[i]->tenant) ||
            !access_ok(info->grant_list[i]->access, false))
            FAIL("bad grant in region info");
    }
    return XM_OK;
}

static xm_status_t alloc_ref_ok(const Xmem__AllocRef *ref, const char **why_p)
{
    if (ref == NULL) FAIL("missing allocation reference");
    if (!opt_name_ok(ref->name)) FAIL("bad allocation name");
    if (ref->id == 0 && (ref->name == NULL || ref->name[0] == '\0'))
        FAIL("allocation reference has neither id nor name");
    if (!access_ok(ref->access, true)) FAIL("bad access value");
    return XM_OK;
}

/* A descriptor must describe every byte: the client routes by it without asking anyone. */
static xm_status_t alloc_desc_ok(const Xmem__AllocDesc *d, const char **why_p)
{
    if (d->id == 0 || d->size == 0) FAIL("allocation descriptor without id or size");
    if (!opt_name_ok(d->name) || !opt_name_ok(d->owner) || !opt_name_ok(d->policy))
        FAIL("bad name in allocation descriptor");
    if (!access_ok(d->access, false)) FAIL("bad access value");
    if (d->n_parts == 0 || d->n_parts > XM_ALLOC_PARTS_MAX) FAIL("bad number of parts");
    if (d->width != d->n_parts) FAIL("layout width does not match the parts");
    for (size_t i = 0; i < d->n_parts; i++) {
        const Xmem__AllocPart *p = d->parts[i];
        if (!opt_name_ok(p->appliance) || !xm__name_valid(p->provider)) FAIL("bad name in part");
        if (p->fabric_addr.len == 0 || p->fabric_addr.len > XM_FABRIC_ADDR_MAX)
            FAIL("bad fabric address length");
        if (p->region_id == 0 || p->size == 0) FAIL("part without region id or size");
    }
    xm__layout_t l;
    if (proto_desc_layout(d, &l, why_p) != XM_OK) return XM_ERR_PROTOCOL;
    bool single = l.kind == XM_LAYOUT_SINGLE;
    if (xm__layout_nparts(&l) != d->n_parts)
        FAIL(single ? "single layout does not cover the size" : "layout width does not match the parts");
    for (uint32_t i = 0; i < d->n_parts; i++) {
        if (d->parts[i]->size < xm__layout_part_size(&l, i))
            FAIL(single ? "single layout does not cover the size" : "part smaller than its share");
    }
    if (d->domains > d->n_parts || d->domain_max > d->n_parts) FAIL("bad failure domain counts");
    return XM_OK;
}

xm_status_t proto_desc_layout(const Xmem__AllocDesc *d, xm__layout_t *layout_p, const char **why_p)
{
    xm__layout_kind_t kind;
    switch (d->layout) {
    case XMEM__LAYOUT__LAYOUT_SINGLE:
        kind = XM_LAYOUT_SINGLE;
        break;
    case XMEM__LAYOUT__LAYOUT_STRIPE:
        kind = XM_LAYOUT_STRIPE;
        break;
    case XMEM__LAYOUT__LAYOUT_REPLICATE:
        kind = XM_LAYOUT_REPLICATE;
        break;
    case XMEM__LAYOUT__LAYOUT_EC:
        kind = XM_LAYOUT_EC;
        break;
    default:
        FAIL("unknown layout");
    }
    /* on the wire width counts every part; the layout's width only the data pieces */
    if (d->redundancy >= d->width) FAIL("layout redundancy leaves no data part");
    if (xm__layout_init_full(layout_p, kind, d->size, d->width - d->redundancy, d->redundancy,
                             d->chunk, why_p) != XM_OK)
        return XM_ERR_PROTOCOL;
    return XM_OK;
}

/*
 * True when m or a message inside it carries field number 0. protobuf-c refuses
 * tag 0 written in one byte but keeps it as an unknown field when the tag is an
 * overlong varint (0x80 0x00); re-encoded, that becomes the one-byte form it
 * refuses, so a frame we accepted could not be sent on. Field 0 is not valid
 * protobuf: refuse it wherever it appears.
 */
static bool has_field_zero(const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        if (m->unknown_fields[i].tag == 0) return true;
    }
    const char *base = (const char *)m;
    for (unsigned i = 0; i < m->descriptor->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &m->descriptor->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        /* a oneof member is only there when the case names it */
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *subs = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t j = 0; j < n; j++) {
                if (subs[j] != NULL && has_field_zero(subs[j])) return true;
            }
        } else {
            const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)(base + f->offset);
            if (sub != NULL && has_field_zero(sub)) return true;
        }
    }
    return false;
}

xm_status_t proto_validate(const xm_msg_t *m, const char **why_p)
{
    if (m->status > 1 || m->status < -1000) FAIL("status out of range");
    if (m->error != NULL && strlen(m->error) > XM_ERROR_TEXT_MAX) FAIL("error text too long");
    switch (m->body_case) {
    case XMEM__MSG__BODY__NOT_SET:
        /* an error reply may carry no body */
        if (m->status == 0) FAIL("message without body");
        return XM_OK;
    case XMEM__MSG__BODY_HELLO:
        if (m->hello->version == 0) FAIL("hello without version");
        if (!xm__name_valid(m->hello->tenant)) FAIL("bad tenant name");
        if (m->hello->client_nonce.len != XM_NONCE_LEN) FAIL("bad client nonce length");
        if (m->hello->client_kx.len != XM_KX_LEN) FAIL("bad client key exchange length");
        if ((m->hello->tenant[0] == '@') != (m->hello->cred_id == 0))
            FAIL("credential id does not match the principal");
        if (m->hello->ciphers == 0) FAIL("hello offers no cipher");
        return XM_OK;
    case XMEM__MSG__BODY_CHALLENGE:
        if (m->challenge->server_nonce.len != XM_NONCE_LEN) FAIL("bad server nonce length");
        if (m->challenge->server_mac.len != XM_MAC_LEN) FAIL("bad server mac length");
        if (m->challenge->server_kx.len != XM_KX_LEN) FAIL("bad server key exchange length");
        if (m->challenge->server_header.len != XM_STREAM_HEADER_LEN) FAIL("bad stream header length");
        if (m->challenge->cipher != 1 && m->challenge->cipher != 2) FAIL("unknown cipher");
        if (m->challenge->identity_pk.len != 0 &&
            (m->challenge->identity_pk.len != XM_IDENTITY_PK_LEN ||
             m->challenge->identity_sig.len != XM_IDENTITY_SIG_LEN))
            FAIL("bad identity length");
        return XM_OK;
    case XMEM__MSG__BODY_AUTH:
        if (m->auth->client_mac.len != XM_MAC_LEN) FAIL("bad client mac length");
        if (m->auth->client_header.len != XM_STREAM_HEADER_LEN) FAIL("bad stream header length");
        return XM_OK;
    case XMEM__MSG__BODY_WELCOME:
        if (!opt_name_ok(m->welcome->principal)) FAIL("bad principal in welcome");
        if (m->welcome->manager) {
            /* a manager serves no data: it has no endpoint to name */
            if (!opt_name_ok(m->welcome->provider) || m->welcome->fabric_addr.len > 0)
                FAIL("manager welcome with a data endpoint");
            return XM_OK;
        }
        if (!xm__name_valid(m->welcome->provider)) FAIL("bad provider name");
        if (m->welcome->fabric_addr.len == 0 || m->welcome->fabric_addr.len > XM_FABRIC_ADDR_MAX)
            FAIL("bad fabric address length");
        if (m->welcome->extent_size == 0) FAIL("welcome without extent size");
        /* local transport: a boot id and a socket path fit their limits */
        if (m->welcome->boot_id != NULL && strlen(m->welcome->boot_id) > 64) FAIL("bad boot id");
        if (m->welcome->local_path != NULL && strlen(m->welcome->local_path) >= 108)
            FAIL("local socket path too long");
        return XM_OK;
    case XMEM__MSG__BODY_REGION_CREATE:
        /* a file region's size is its file's */
        if (m->region_create->file != NULL && m->region_create->file[0] != '\0') {
            if (strlen(m->region_create->file) >= 4096) FAIL("file path too long");
        } else if (m->region_create->size == 0) {
            FAIL("region size 0");
        }
        if (!opt_name_ok(m->region_create->name)) FAIL("bad region name");
        if (!opt_name_ok(m->region_create->owner)) FAIL("bad owner name");
        return XM_OK;
    case XMEM__MSG__BODY_REGION_OPEN:
        if (ref_ok(m->region_open, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (m->region_open->access == XMEM__ACCESS__ACCESS_NONE)
            FAIL("region open without access rights");
        return XM_OK;
    case XMEM__MSG__BODY_REGION_FD: /* local transport */
        if (ref_ok(m->region_fd, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (m->region_fd->access == XMEM__ACCESS__ACCESS_NONE)
            FAIL("region fd request without access rights");
        return XM_OK;
    case XMEM__MSG__BODY_REGION_DESTROY:
        return ref_ok(m->region_destroy, why_p);
    case XMEM__MSG__BODY_REGION_STAT:
        return ref_ok(m->region_stat, why_p);
    case XMEM__MSG__BODY_REGION_REVOKE:
        if (ref_ok(m->region_revoke->region, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (!xm__name_valid(m->region_revoke->tenant)) FAIL("bad grantee tenant");
        return XM_OK;
    case XMEM__MSG__BODY_REGION_GRANT:
        if (ref_ok(m->region_grant->region, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (!xm__name_valid(m->region_grant->tenant)) FAIL("bad grantee tenant");
        if (!access_ok(m->region_grant->access, false)) FAIL("bad access value");
        return XM_OK;
    case XMEM__MSG__BODY_REGION_LIST:
    case XMEM__MSG__BODY_APPLIANCE_STAT:
    case XMEM__MSG__BODY_OK:
        return XM_OK;
    case XMEM__MSG__BODY_REGION_DESC: {
        const Xmem__RegionDesc *d = m->region_desc;
        if (d->id == 0 || d->size == 0) FAIL("region descriptor without id or size");
        if (!access_ok(d->access, false)) FAIL("bad access value");
        if (!opt_name_ok(d->name)) FAIL("bad region name");
        return XM_OK;
    }
    case XMEM__MSG__BODY_REGION_INFO:
        return info_ok(m->region_info, why_p);
    case XMEM__MSG__BODY_REGIONS:
        for (size_t i = 0; i < m->regions->n_regions; i++) {
            if (info_ok(m->regions->regions[i], why_p) != XM_OK) return XM_ERR_PROTOCOL;
        }
        return XM_OK;
    case XMEM__MSG__BODY_APPLIANCE_INFO:
        if (m->appliance_info->extent_size == 0) FAIL("appliance info without extent size");
        if (m->appliance_info->pool_used > m->appliance_info->pool_size)
            FAIL("pool used exceeds pool size");
        if (!opt_name_ok(m->appliance_info->backing) || !opt_name_ok(m->appliance_info->provider))
            FAIL("bad name in appliance info");
        return XM_OK;
    case XMEM__MSG__BODY_APPLIANCE_REGISTER: {
        const Xmem__ApplianceRegister *a = m->appliance_register;
        if (!xm__name_valid(a->control_addr)) FAIL("bad appliance address");
        if (!xm__name_valid(a->domain)) FAIL("bad failure domain name");
        if (!xm__name_valid(a->provider)) FAIL("bad provider name");
        if (a->fabric_addr.len == 0 || a->fabric_addr.len > XM_FABRIC_ADDR_MAX)
            FAIL("bad fabric address length");
        if (a->identity_pk.len != XM_IDENTITY_PK_LEN || a->identity_sig.len != XM_IDENTITY_SIG_LEN)
            FAIL("registration without a valid identity");
        if (a->extent_size == 0 || a->pool_size == 0) FAIL("appliance without pool or extent size");
        if (a->pool_used > a->pool_size) FAIL("pool used exceeds pool size");
        if (!opt_name_ok(a->backing)) FAIL("bad backing name");
        return XM_OK;
    }
    case XMEM__MSG__BODY_ALLOC_CREATE: {
        const Xmem__AllocRequest *a = m->alloc_create;
        if (a->request_id == 0) FAIL("allocation request without id");
        if (a->size == 0) FAIL("allocation size 0");
        if (!xm__name_valid(a->policy)) FAIL("bad policy text");
        if (!opt_name_ok(a->name)) FAIL("bad allocation name");
        return XM_OK;
    }
    case XMEM__MSG__BODY_ALLOC_FREE:
        return alloc_ref_ok(m->alloc_free, why_p);
    case XMEM__MSG__BODY_ALLOC_ATTACH:
        return alloc_ref_ok(m->alloc_attach, why_p);
    case XMEM__MSG__BODY_ALLOC_REVOKE:
        if (alloc_ref_ok(m->alloc_revoke->alloc, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (!xm__name_valid(m->alloc_revoke->tenant)) FAIL("bad grantee tenant");
        return XM_OK;
    case XMEM__MSG__BODY_ALLOC_GRANT:
        if (alloc_ref_ok(m->alloc_grant->alloc, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (!xm__name_valid(m->alloc_grant->tenant)) FAIL("bad grantee tenant");
        if (!access_ok(m->alloc_grant->access, false)) FAIL("bad access value");
        return XM_OK;
    case XMEM__MSG__BODY_ALLOC_LIST:
    case XMEM__MSG__BODY_APPLIANCE_LIST:
        return XM_OK;
    case XMEM__MSG__BODY_ALLOC_DESC:
        return alloc_desc_ok(m->alloc_desc, why_p);
    case XMEM__MSG__BODY_ALLOCS:
        for (size_t i = 0; i < m->allocs->n_allocs; i++) {
            const Xmem__AllocInfo *a = m->allocs->allocs[i];
            if (a->id == 0 || a->size == 0) FAIL("allocation info without id or size");
            if (!opt_name_ok(a->name) || !opt_name_ok(a->owner) || !opt_name_ok(a->policy) ||
                !opt_name_ok(a->state))
                FAIL("bad name in allocation info");
            if (a->domains > a->n_appliances || a->domain_max > a->n_appliances ||
                a->unavailable > a->n_appliances || a->redundancy >= XM_ALLOC_PARTS_MAX)
                FAIL("bad counts in allocation info");
            for (size_t j = 0; j < a->n_appliances; j++) {
                if (!xm__name_valid(a->appliances[j])) FAIL("bad appliance address");
            }
        }
        return XM_OK;
    case XMEM__MSG__BODY_APPLIANCES:
        for (size_t i = 0; i < m->appliances->n_appliances; i++) {
            const Xmem__ApplianceEntry *a = m->appliances->appliances[i];
            if (!xm__name_valid(a->addr)) FAIL("bad appliance address");
            if (!opt_name_ok(a->domain) || !opt_name_ok(a->state) || !opt_name_ok(a->provider))
                FAIL("bad name in appliance entry");
        }
        return XM_OK;
    /* region copy (src/appliance/copy.c) */
    case XMEM__MSG__BODY_REGION_COPY: {
        const Xmem__RegionCopy *c = m->region_copy;
        if (ref_ok(c->source, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (c->target_fabric_addr.len == 0 || c->target_fabric_addr.len > XM_FABRIC_ADDR_MAX)
            FAIL("bad target data address length");
        if (!opt_name_ok(c->target_control)) FAIL("bad target control address");
        return XM_OK;
    }
    case XMEM__MSG__BODY_COPY_STATUS:
        if (m->copy_status->id == 0) FAIL("copy reference without id");
        return XM_OK;
    case XMEM__MSG__BODY_COPY_STATE:
        if (m->copy_state->state < 1 || m->copy_state->state > 3) FAIL("bad copy state");
        if (m->copy_state->done > m->copy_state->total) FAIL("copy done past its total");
        if (m->copy_state->why != NULL && strlen(m->copy_state->why) > XM_ERROR_TEXT_MAX)
            FAIL("copy error text too long");
        return XM_OK;
    case XMEM__MSG__BODY_APPLIANCE_DRAIN: /* rebuild and drain (src/manager/rebuild.c) */
        if (!xm__name_valid(m->appliance_drain->addr)) FAIL("bad appliance address");
        return XM_OK;
    case XMEM__MSG__BODY_APPLIANCE_REMOVE:
        if (!xm__name_valid(m->appliance_remove->addr)) FAIL("bad appliance address");
        return XM_OK;
    case XMEM__MSG__BODY_DRAIN_STATE:
        return XM_OK;
    case XMEM__MSG__BODY_REGION_SYNC: /* file regions */
        if (m->region_sync->region == NULL) FAIL("sync without a region");
        if (ref_ok(m->region_sync->region, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        return XM_OK;
    case XMEM__MSG__BODY_REGION_VCOPY: /* virtual copy (src/appliance/cow.c) */
        if (m->region_vcopy->source == NULL) FAIL("virtual copy without a source");
        if (ref_ok(m->region_vcopy->source, why_p) != XM_OK) return XM_ERR_PROTOCOL;
        if (!opt_name_ok(m->region_vcopy->name)) FAIL("bad copy name");
        return XM_OK;
    default:
        FAIL("unknown message body");
    }
}

uint64_t proto_stripe_part_size(uint64_t size, uint32_t width, uint64_t chunk, uint32_t part)
{
    xm__layout_t l;
    if (xm__layout_init(&l, XM_LAYOUT_STRIPE, size, width, chunk, NULL) != XM_OK) return 0;
    return xm__layout_part_size(&l, part);
}

xm_status_t proto_decode(const uint8_t *buf, size_t len, size_t max, xm_msg_t **msg_p,
                         const char **why_p)
{
    if (len == 0) FAIL("empty message");
    if (len > max) FAIL("message too large");
    xm_msg_t *m = xmem__msg__unpack(NULL, len, buf);
    if (m == NULL) FAIL("undecodable message");
    if (has_field_zero(&m->base)) {
        xmem__msg__free_unpacked(m, NULL);
        FAIL("undecodable message: field number 0");
    }
    if (proto_validate(m, why_p) != XM_OK) {
        xmem__msg__free_unpacked(m, NULL);
        return XM_ERR_PROTOCOL;
    }
    *msg_p = m;
    return XM_OK;
}

void proto_msg_free(xm_msg_t *msg)
{
    if (msg != NULL) {
        xmem__msg__free_unpacked(msg, NULL);
    }
}

xm_status_t proto_encode(const xm_msg_t *msg, uint8_t **buf_p, size_t *len_p)
{
    size_t body = xmem__msg__get_packed_size(msg);
    if (body > XM_FRAME_MAX_REPLY) {
        return XM_ERR_PROTOCOL;
    }
    uint8_t *buf = malloc(XM_FRAME_HEADER + body);
    if (buf == NULL) {
        return XM_ERR_NO_MEMORY;
    }
    buf[0] = (uint8_t)(body >> 24);
    buf[1] = (uint8_t)(body >> 16);
    buf[2] = (uint8_t)(body >> 8);
    buf[3] = (uint8_t)body;
    xmem__msg__pack(msg, buf + XM_FRAME_HEADER);
    *buf_p = buf;
    *len_p = XM_FRAME_HEADER + body;
    return XM_OK;
}

xm_status_t proto_frame_len(const uint8_t hdr[XM_FRAME_HEADER], size_t max, size_t *len_p)
{
    size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    if (len == 0 || len > max) {
        return XM_ERR_PROTOCOL;
    }
    *len_p = len;
    return XM_OK;
}

xm_status_t proto_pool_decode(const uint8_t *buf, size_t len, Xmem__PoolMeta **meta_p,
                              const char **why_p)
{
    Xmem__PoolMeta *meta = xmem__pool_meta__unpack(NULL, len, buf);
    if (meta == NULL) FAIL("undecodable pool metadata");
    const char *why = NULL;
    if (has_field_zero(&meta->base)) why = "undecodable pool metadata: field number 0";
    else if (meta->version != 1) why = "unknown pool metadata version";
    else if (meta->extent_size == 0 || meta->pool_size == 0) why = "pool metadata without sizes";
    for (size_t i = 0; why == NULL && i < meta->n_regions; i++) {
        const Xmem__PoolRegion *r = meta->regions[i];
        if (r->id == 0 || r->id >= meta->next_id || r->size == 0 || r->n_extents == 0)
            why = "bad region record";
        else if (!opt_name_ok(r->name) || !opt_name_ok(r->owner))
            why = "bad name in region record";
        else if ((unsigned __int128)r->n_extents * meta->extent_size < r->size)
            why = "region record with too few extents";
        for (size_t g = 0; why == NULL && g < r->n_grants; g++) {
            if (!xm__name_valid(r->grants[g]->tenant) || !access_ok(r->grants[g]->access, false))
                why = "bad grant record";
        }
    }
    if (why != NULL) {
        xmem__pool_meta__free_unpacked(meta, NULL);
        FAIL(why);
    }
    *meta_p = meta;
    return XM_OK;
}

void proto_pool_free(Xmem__PoolMeta *meta)
{
    if (meta != NULL) {
        xmem__pool_meta__free_unpacked(meta, NULL);
    }
}

xm_status_t proto_files_decode(const uint8_t *buf, size_t len, Xmem__FileRegionTable **tab_p, const char **why_p)
{
    Xmem__FileRegionTable *tab = xmem__file_region_table__unpack(NULL, len, buf);
    if (tab == NULL) FAIL("undecodable file region table");
    const char *why = NULL;
    if (has_field_zero(&tab->base)) why = "undecodable file region table: field number 0";
    else if (tab->version != 1) why = "unknown file region table version";
    if (why != NULL) {
        xmem__file_region_table__free_unpacked(tab, NULL);
        FAIL(why);
    }
    *tab_p = tab;
    return XM_OK;
}

bool proto_file_record_ok(const Xmem__FileRegionRecord *rec, const char **why_p)
{
    const char *why = NULL;
    if (rec->id == 0) why = "record without an id";
    else if (!xm__name_valid(rec->owner)) why = "bad owner";
    else if (!opt_name_ok(rec->name)) why = "bad name";
    else if (rec->path == NULL || rec->path[0] != '/' || strlen(rec->path) >= 4096) why = "bad path";
    for (size_t g = 0; why == NULL && g < rec->n_grants; g++) {
        if (!xm__name_valid(rec->grants[g]->tenant) || !access_ok(rec->grants[g]->access, false))
            why = "bad grant";
    }
    if (why != NULL) *why_p = why;
    return why == NULL;
}
