/* Control messages of the allocation manager: each kind round-trips; each
 * field a peer could get wrong is refused, and a descriptor that does not
 * cover every byte of its allocation is refused. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <xmem/xmem.h>

#include "proto.h"

static uint8_t addr[XM_FABRIC_ADDR_MAX + 1];

static void setup(void)
{
    for (size_t i = 0; i < sizeof(addr); i++) addr[i] = (uint8_t)(i * 29 + 1);
}

TestSuite(proto_manager, .init = setup);

static xm_msg_t *round_trip(const xm_msg_t *in)
{
    const char *why = NULL;
    cr_assert_eq(proto_validate(in, &why), XM_OK, "test message itself invalid: %s", why);
    uint8_t *buf;
    size_t len;
    cr_assert_eq(proto_encode(in, &buf, &len), XM_OK);
    xm_msg_t *out = NULL;
    xm_status_t st = proto_decode(buf + XM_FRAME_HEADER, len - XM_FRAME_HEADER, XM_FRAME_MAX_REPLY,
                                  &out, &why);
    free(buf);
    cr_assert_eq(st, XM_OK, "decode refused: %s", why ? why : "(no reason)");
    cr_assert_eq(out->body_case, in->body_case);
    cr_assert_eq(out->seq, in->seq);
    return out;
}

/* Encodes, but the receiver refuses it naming `reason`, and so does the sender's check. */
static void expect_refused(const xm_msg_t *in, const char *reason)
{
    uint8_t *buf;
    size_t len;
    cr_assert_eq(proto_encode(in, &buf, &len), XM_OK);
    xm_msg_t *sentinel = (xm_msg_t *)(uintptr_t)0x1, *out = sentinel;
    const char *why = NULL;
    xm_status_t st = proto_decode(buf + XM_FRAME_HEADER, len - XM_FRAME_HEADER, XM_FRAME_MAX_REPLY,
                                  &out, &why);
    free(buf);
    cr_assert_eq(st, XM_ERR_PROTOCOL, "accepted a message that should fail with \"%s\"", reason);
    cr_assert_eq(out, sentinel, "output written on failure");
    cr_assert_not_null(why);
    cr_expect_not_null(strstr(why, reason), "reason \"%s\", expected \"%s\"", why, reason);
    const char *why2 = NULL;
    cr_expect_eq(proto_validate(in, &why2), XM_ERR_PROTOCOL);
}

/* ---- ApplianceRegister --------------------------------------------------- */

static void reg_init(Xmem__ApplianceRegister *r, xm_msg_t *m)
{
    xmem__appliance_register__init(r);
    r->control_addr = "10.0.0.5:7400";
    r->domain = "rack1";
    r->provider = "tcp";
    r->fabric_addr = (ProtobufCBinaryData){16, addr};
    r->pool_size = 64ull << 30;
    r->pool_used = 2u << 20;
    r->extent_size = 2u << 20;
    r->regions = 1;
    r->backing = "memfd";
    r->boot_id = 0x1234;
    static uint8_t pk[XM_IDENTITY_PK_LEN], sig[XM_IDENTITY_SIG_LEN];
    r->identity_pk = (ProtobufCBinaryData){sizeof(pk), pk};
    r->identity_sig = (ProtobufCBinaryData){sizeof(sig), sig};
    *m = (xm_msg_t)XMEM__MSG__INIT;
    m->seq = 3;
    m->body_case = XMEM__MSG__BODY_APPLIANCE_REGISTER;
    m->appliance_register = r;
}

Test(proto_manager, appliance_register)
{
    Xmem__ApplianceRegister r;
    xm_msg_t m;
    reg_init(&r, &m);
    xm_msg_t *out = round_trip(&m);
    cr_assert_str_eq(out->appliance_register->control_addr, "10.0.0.5:7400");
    cr_assert_eq(out->appliance_register->pool_size, 64ull << 30);
    cr_assert_eq(out->appliance_register->boot_id, 0x1234);
    proto_msg_free(out);

    reg_init(&r, &m); r.control_addr = "";           expect_refused(&m, "appliance address");
    reg_init(&r, &m); r.control_addr = "a b:1";      expect_refused(&m, "appliance address");
    reg_init(&r, &m); r.domain = "";                 expect_refused(&m, "failure domain");
    reg_init(&r, &m); r.provider = "";               expect_refused(&m, "provider");
    reg_init(&r, &m); r.fabric_addr.len = 0;         expect_refused(&m, "fabric address");
    reg_init(&r, &m); r.fabric_addr.len = XM_FABRIC_ADDR_MAX + 1; expect_refused(&m, "fabric address");
    reg_init(&r, &m); r.extent_size = 0;             expect_refused(&m, "pool or extent size");
    reg_init(&r, &m); r.pool_size = 0; r.pool_used = 0; expect_refused(&m, "pool or extent size");
    reg_init(&r, &m); r.pool_used = r.pool_size + 1; expect_refused(&m, "exceeds");
    reg_init(&r, &m); r.backing = "two words";       expect_refused(&m, "backing");
}

/* ---- AllocRequest, AllocRef, AllocGrant ---------------------------------- */

static void req_init(Xmem__AllocRequest *r, xm_msg_t *m)
{
    xmem__alloc_request__init(r);
    r->request_id = 0xfeedf00dull;
    r->size = 1u << 30;
    r->policy = "stripe:4:1M";
    r->name = "data";
    *m = (xm_msg_t)XMEM__MSG__INIT;
    m->seq = 4;
    m->body_case = XMEM__MSG__BODY_ALLOC_CREATE;
    m->alloc_create = r;
}

Test(proto_manager, alloc_request)
{
    Xmem__AllocRequest r;
    xm_msg_t m;
    req_init(&r, &m);
    xm_msg_t *out = round_trip(&m);
    cr_assert_eq(out->alloc_create->request_id, 0xfeedf00dull);
    cr_assert_str_eq(out->alloc_create->policy, "stripe:4:1M");
    proto_msg_free(out);
    req_init(&r, &m); r.name = "";  /* unnamed is fine */
    proto_msg_free(round_trip(&m));

    req_init(&r, &m); r.request_id = 0; expect_refused(&m, "without id");
    req_init(&r, &m); r.size = 0;       expect_refused(&m, "size 0");
    req_init(&r, &m); r.policy = "";    expect_refused(&m, "policy");
    req_init(&r, &m); r.policy = "stripe: 4"; expect_refused(&m, "policy");
    req_init(&r, &m); r.name = "a\tb";  expect_refused(&m, "allocation name");
    char longname[XM_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    req_init(&r, &m); r.name = longname; expect_refused(&m, "allocation name");
}

Test(proto_manager, alloc_refs_and_grants)
{
    static const Xmem__Msg__BodyCase kinds[] = {XMEM__MSG__BODY_ALLOC_FREE,
                                                XMEM__MSG__BODY_ALLOC_ATTACH};
    for (size_t k = 0; k < 2; k++) {
        Xmem__AllocRef ref = XMEM__ALLOC_REF__INIT;
        ref.id = 7;
        ref.access = XMEM__ACCESS__ACCESS_READ;
        xm_msg_t m = XMEM__MSG__INIT;
        m.seq = 5;
        m.body_case = kinds[k];
        m.alloc_free = &ref; /* one union member */
        proto_msg_free(round_trip(&m));
        ref.id = 0;
        ref.name = "by-name";
        proto_msg_free(round_trip(&m));
        ref.name = "";
        expect_refused(&m, "neither id nor name");
        ref.name = "bad name";
        expect_refused(&m, "allocation name");
        ref.name = "ok";
        ref.access = (Xmem__Access)2;
        expect_refused(&m, "access");
    }
    Xmem__AllocRef ref = XMEM__ALLOC_REF__INIT;
    ref.name = "shared";
    Xmem__AllocGrant g = XMEM__ALLOC_GRANT__INIT;
    g.alloc = &ref;
    g.tenant = "bob";
    g.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    xm_msg_t m = XMEM__MSG__INIT;
    m.body_case = XMEM__MSG__BODY_ALLOC_GRANT;
    m.alloc_grant = &g;
    xm_msg_t *out = round_trip(&m);
    cr_assert_str_eq(out->alloc_grant->tenant, "bob");
    proto_msg_free(out);
    g.access = XMEM__ACCESS__ACCESS_NONE;
    expect_refused(&m, "access");
    g.access = XMEM__ACCESS__ACCESS_READ;
    g.tenant = "";
    expect_refused(&m, "grantee");
    g.tenant = "bob";
    g.alloc = NULL;
    expect_refused(&m, "missing allocation reference");
    g.alloc = &ref;
    ref.name = "";
    expect_refused(&m, "neither id nor name");

    /* list requests carry nothing */
    Xmem__Empty e = XMEM__EMPTY__INIT;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.body_case = XMEM__MSG__BODY_ALLOC_LIST;
    m.alloc_list = &e;
    proto_msg_free(round_trip(&m));
    m.body_case = XMEM__MSG__BODY_APPLIANCE_LIST;
    proto_msg_free(round_trip(&m));
}

/* ---- AllocDesc: the descriptor must cover every byte --------------------- */

typedef struct desc_fixture {
    Xmem__AllocPart parts[4];
    Xmem__AllocPart *pp[4];
    Xmem__AllocDesc d;
    xm_msg_t m;
} desc_fixture_t;

/* A stripe of `size` bytes over `width` parts in `chunk` chunks, each part exactly its share. */
static void desc_init(desc_fixture_t *f, uint64_t size, uint32_t width, uint64_t chunk)
{
    memset(f, 0, sizeof(*f));
    xmem__alloc_desc__init(&f->d);
    for (uint32_t i = 0; i < width; i++) {
        xmem__alloc_part__init(&f->parts[i]);
        f->parts[i].appliance = "127.0.0.1:7400";
        f->parts[i].provider = "tcp";
        f->parts[i].fabric_addr = (ProtobufCBinaryData){16, addr + i};
        f->parts[i].region_id = 10 + i;
        f->parts[i].key = 0xabcdef00ull + i;
        f->parts[i].size = chunk == 0 ? size : proto_stripe_part_size(size, width, chunk, i);
        f->pp[i] = &f->parts[i];
    }
    f->d.id = 99;
    f->d.size = size;
    f->d.name = "x";
    f->d.owner = "alice";
    f->d.policy = "stripe";
    f->d.layout = chunk == 0 ? XMEM__LAYOUT__LAYOUT_SINGLE : XMEM__LAYOUT__LAYOUT_STRIPE;
    f->d.width = width;
    f->d.chunk = chunk;
    f->d.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    f->d.generation = 1;
    f->d.n_parts = width;
    f->d.parts = f->pp;
    f->m = (xm_msg_t)XMEM__MSG__INIT;
    f->m.seq = 6;
    f->m.body_case = XMEM__MSG__BODY_ALLOC_DESC;
    f->m.alloc_desc = &f->d;
}

Test(proto_manager, alloc_desc_round_trips)
{
    desc_fixture_t f;
    desc_init(&f, 12345, 1, 0);
    xm_msg_t *out = round_trip(&f.m);
    cr_assert_eq(out->alloc_desc->parts[0]->key, 0xabcdef00ull);
    proto_msg_free(out);
    /* stripes with a partial last chunk, exact multiples (the manager refuses fewer
     * chunks than parts, and a part of 0 bytes is refused below) */
    static const uint64_t sizes[] = {3 * 65536 + 1, 4 * 65536, 5 * 65536 + 7, 8 * 65536 - 8};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        desc_init(&f, sizes[i], 4, 65536);
        proto_msg_free(round_trip(&f.m));
        uint64_t sum = 0;
        for (uint32_t p = 0; p < 4; p++) sum += f.parts[p].size;
        cr_assert_eq(sum, sizes[i], "parts' shares of %llu add up to %llu",
                     (unsigned long long)sizes[i], (unsigned long long)sum);
    }
}

Test(proto_manager, alloc_desc_not_covering_every_byte_refused)
{
    desc_fixture_t f;
    /* single: the part is one byte short */
    desc_init(&f, 12345, 1, 0);
    f.parts[0].size = 12344;
    expect_refused(&f.m, "does not cover");
    /* single with two parts */
    desc_init(&f, 4 * 65536, 2, 65536);
    f.d.layout = XMEM__LAYOUT__LAYOUT_SINGLE;
    expect_refused(&f.m, "does not cover");
    /* stripe: every part, in turn, one byte short of its share */
    for (uint32_t p = 0; p < 4; p++) {
        desc_init(&f, 3 * 65536 + 100, 4, 65536);
        f.parts[p].size -= 1;
        expect_refused(&f.m, "smaller than its share");
    }
    /* stripe: a part missing (width says 4, only 3 parts) */
    desc_init(&f, 4 * 65536, 4, 65536);
    f.d.n_parts = 3;
    expect_refused(&f.m, "width");
    /* width 3 over 4 parts' worth: the shares change, the last part is too small */
    desc_init(&f, 4 * 65536, 4, 65536);
    f.d.width = 3;
    f.d.n_parts = 3;
    expect_refused(&f.m, "smaller than its share");
}

Test(proto_manager, alloc_desc_bad_fields_refused)
{
    desc_fixture_t f;
    desc_init(&f, 1u << 20, 2, 65536); f.d.id = 0;           expect_refused(&f.m, "without id or size");
    desc_init(&f, 1u << 20, 2, 65536); f.d.size = 0;         expect_refused(&f.m, "without id or size");
    desc_init(&f, 1u << 20, 2, 65536); f.d.access = XMEM__ACCESS__ACCESS_NONE; expect_refused(&f.m, "access");
    desc_init(&f, 1u << 20, 2, 65536); f.d.n_parts = 0; f.d.width = 0; expect_refused(&f.m, "number of parts");
    desc_init(&f, 1u << 20, 2, 65536); f.d.chunk = 0;        expect_refused(&f.m, "chunk");
    desc_init(&f, 1u << 20, 2, 65536); f.d.chunk = 65532;    expect_refused(&f.m, "chunk");
    desc_init(&f, 1u << 20, 2, 65536); f.d.chunk = XM_STRIPE_CHUNK_MAX * 2; expect_refused(&f.m, "chunk");
    desc_init(&f, 1u << 20, 2, 65536); f.d.layout = XMEM__LAYOUT__LAYOUT_NONE; expect_refused(&f.m, "layout");
    desc_init(&f, 1u << 20, 2, 65536); f.d.layout = (Xmem__Layout)9; expect_refused(&f.m, "layout");
    /* a stripe claiming parity */
    desc_init(&f, 1u << 20, 2, 65536); f.d.redundancy = 1;   expect_refused(&f.m, "no parity");
    desc_init(&f, 1u << 20, 2, 65536); f.parts[1].region_id = 0; expect_refused(&f.m, "part without");
    desc_init(&f, 65536, 2, 65536);    f.parts[1].size = 0;      expect_refused(&f.m, "part without");
    desc_init(&f, 1u << 20, 2, 65536); f.parts[0].provider = ""; expect_refused(&f.m, "name in part");
    desc_init(&f, 1u << 20, 2, 65536); f.parts[0].fabric_addr.len = 0; expect_refused(&f.m, "fabric address");
    desc_init(&f, 1u << 20, 2, 65536);
    f.parts[1].fabric_addr = (ProtobufCBinaryData){XM_FABRIC_ADDR_MAX + 1, addr};
    expect_refused(&f.m, "fabric address");
    desc_init(&f, 1u << 20, 2, 65536); f.d.owner = "no way"; expect_refused(&f.m, "name in allocation");
    /* more parts than any allocation may have */
    desc_init(&f, 1u << 20, 1, 0);
    Xmem__AllocPart **many = calloc(XM_ALLOC_PARTS_MAX + 1, sizeof(*many));
    for (size_t i = 0; i <= XM_ALLOC_PARTS_MAX; i++) many[i] = &f.parts[0];
    f.d.parts = many;
    f.d.n_parts = f.d.width = XM_ALLOC_PARTS_MAX + 1;
    f.d.layout = XMEM__LAYOUT__LAYOUT_STRIPE;
    f.d.chunk = 4096;
    expect_refused(&f.m, "number of parts");
    free(many);
}

/* ---- AllocList and ApplianceTable replies -------------------------------- */

Test(proto_manager, alloc_list_and_appliance_table)
{
    char *apps[] = {"10.0.0.1:7400", "10.0.0.2:7400"};
    Xmem__AllocInfo a = XMEM__ALLOC_INFO__INIT;
    a.id = 1;
    a.size = 4096;
    a.name = "n";
    a.owner = "alice";
    a.policy = "single";
    a.state = "degraded";
    a.n_appliances = 2;
    a.appliances = apps;
    Xmem__AllocInfo *ap[] = {&a};
    Xmem__AllocList l = XMEM__ALLOC_LIST__INIT;
    l.n_allocs = 1;
    l.allocs = ap;
    xm_msg_t m = XMEM__MSG__INIT;
    m.body_case = XMEM__MSG__BODY_ALLOCS;
    m.allocs = &l;
    xm_msg_t *out = round_trip(&m);
    cr_assert_str_eq(out->allocs->allocs[0]->state, "degraded");
    proto_msg_free(out);
    a.id = 0;
    expect_refused(&m, "without id or size");
    a.id = 1;
    apps[1] = "";
    expect_refused(&m, "appliance address");
    apps[1] = "10.0.0.2:7400";
    a.state = "very bad";
    expect_refused(&m, "name in allocation info");
    a.state = "ok";

    Xmem__ApplianceEntry e = XMEM__APPLIANCE_ENTRY__INIT;
    e.addr = "10.0.0.1:7400";
    e.domain = "d0";
    e.state = "up";
    e.capacity = 1u << 30;
    e.provider = "tcp";
    Xmem__ApplianceEntry *ep[] = {&e};
    Xmem__ApplianceTable t = XMEM__APPLIANCE_TABLE__INIT;
    t.n_appliances = 1;
    t.appliances = ep;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.body_case = XMEM__MSG__BODY_APPLIANCES;
    m.appliances = &t;
    proto_msg_free(round_trip(&m));
    e.addr = "";
    expect_refused(&m, "appliance address");
    e.addr = "10.0.0.1:7400";
    e.domain = "d 0";
    expect_refused(&m, "name in appliance entry");
}

/* ---- resilient descriptors (replicate, ec) -------------------------------- */

typedef struct rdesc_fixture {
    Xmem__AllocPart parts[8];
    Xmem__AllocPart *pp[8];
    Xmem__AllocDesc d;
    xm_msg_t m;
} rdesc_fixture_t;

/* nparts parts, redundancy of them parity/copies, each exactly as big as the layout says. */
static void rdesc_init(rdesc_fixture_t *f, Xmem__Layout layout, uint64_t size, uint32_t nparts,
                       uint32_t redundancy, uint64_t chunk)
{
    memset(f, 0, sizeof(*f));
    xmem__alloc_desc__init(&f->d);
    xm__layout_t l;
    cr_assert_eq(xm__layout_init_full(&l, (xm__layout_kind_t)layout, size, nparts - redundancy,
                                      redundancy, chunk, NULL), XM_OK);
    for (uint32_t i = 0; i < nparts; i++) {
        xmem__alloc_part__init(&f->parts[i]);
        f->parts[i].appliance = "127.0.0.1:7400";
        f->parts[i].provider = "tcp";
        f->parts[i].fabric_addr = (ProtobufCBinaryData){16, addr + i};
        f->parts[i].region_id = 10 + i;
        f->parts[i].key = 0xabcdef00ull + i;
        f->parts[i].size = xm__layout_part_size(&l, i);
        f->pp[i] = &f->parts[i];
    }
    f->d.id = 99;
    f->d.size = size;
    f->d.owner = "alice";
    f->d.policy = layout == XMEM__LAYOUT__LAYOUT_EC ? "ec:4+2:64K" : "replicate:3";
    f->d.layout = layout;
    f->d.width = nparts;
    f->d.redundancy = redundancy;
    f->d.chunk = chunk;
    f->d.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    f->d.generation = 1;
    f->d.n_parts = nparts;
    f->d.parts = f->pp;
    f->d.domains = nparts;
    f->d.domain_max = 1;
    f->m = (xm_msg_t)XMEM__MSG__INIT;
    f->m.seq = 7;
    f->m.body_case = XMEM__MSG__BODY_ALLOC_DESC;
    f->m.alloc_desc = &f->d;
}

Test(proto_manager, resilient_descs_round_trip_and_name_their_layout)
{
    rdesc_fixture_t f;
    /* ec:4+2:64K of 1 MiB + 1: 5 stripes, every part 5 x 64 KiB */
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, (1u << 20) + 1, 6, 2, 65536);
    cr_assert_eq(f.parts[5].size, 5u * (65536 + XM_LAYOUT_META_REC), "padded, and a lock record per stripe");
    xm_msg_t *out = round_trip(&f.m);
    xm__layout_t l;
    const char *why = NULL;
    cr_assert_eq(proto_desc_layout(out->alloc_desc, &l, &why), XM_OK, "%s", why);
    cr_assert(l.kind == XM_LAYOUT_EC && l.width == 4 && l.redundancy == 2 && l.chunk == 65536);
    cr_assert(out->alloc_desc->domains == 6 && out->alloc_desc->domain_max == 1);
    proto_msg_free(out);
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_REPLICATE, 12345, 3, 2, 0);
    out = round_trip(&f.m);
    cr_assert_eq(proto_desc_layout(out->alloc_desc, &l, &why), XM_OK, "%s", why);
    cr_assert(l.kind == XM_LAYOUT_REPLICATE && l.width == 1 && l.redundancy == 2);
    proto_msg_free(out);
}

Test(proto_manager, resilient_descs_with_wrong_shapes_refused)
{
    rdesc_fixture_t f;
    /* an ec part one byte short of its padded piece column */
    for (uint32_t p = 0; p < 6; p++) {
        rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, 1u << 20, 6, 2, 65536);
        f.parts[p].size -= 1;
        expect_refused(&f.m, "smaller than its share");
    }
    /* a copy shorter than the allocation */
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_REPLICATE, 12345, 3, 2, 0);
    f.parts[2].size = 12344;
    expect_refused(&f.m, "smaller than its share");
    /* redundancy that leaves no data, or beyond the code's bounds */
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, 1u << 20, 6, 2, 65536);
    f.d.redundancy = 6;
    expect_refused(&f.m, "no data part");
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, 1u << 20, 6, 2, 65536);
    f.d.redundancy = 5;
    expect_refused(&f.m, "parity");
    /* ec without its redundancy, a stripe with one, a bad ec chunk */
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, 1u << 20, 6, 2, 65536);
    f.d.redundancy = 0;
    expect_refused(&f.m, "parity");
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, 1u << 20, 6, 2, 65536);
    f.d.layout = XMEM__LAYOUT__LAYOUT_STRIPE;
    expect_refused(&f.m, "stripe layout has no parity");
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, 1u << 20, 6, 2, 65536);
    f.d.chunk = 65536 + 8;
    expect_refused(&f.m, "ec chunk");
    /* failure domain counts beyond the parts */
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_EC, 1u << 20, 6, 2, 65536);
    f.d.domains = 7;
    expect_refused(&f.m, "failure domain");
    rdesc_init(&f, XMEM__LAYOUT__LAYOUT_REPLICATE, 12345, 3, 2, 0);
    f.d.domain_max = 4;
    expect_refused(&f.m, "failure domain");
}

Test(proto_manager, alloc_info_counts_checked)
{
    char *apps[] = {"10.0.0.1:7400", "10.0.0.2:7400"};
    Xmem__AllocInfo a = XMEM__ALLOC_INFO__INIT;
    a.id = 1;
    a.size = 4096;
    a.owner = "alice";
    a.policy = "replicate:2";
    a.state = "degraded";
    a.n_appliances = 2;
    a.appliances = apps;
    a.redundancy = 1;
    a.domains = 2;
    a.domain_max = 1;
    a.unavailable = 1;
    Xmem__AllocInfo *ap[] = {&a};
    Xmem__AllocList l = XMEM__ALLOC_LIST__INIT;
    l.n_allocs = 1;
    l.allocs = ap;
    xm_msg_t m = XMEM__MSG__INIT;
    m.body_case = XMEM__MSG__BODY_ALLOCS;
    m.allocs = &l;
    xm_msg_t *out = round_trip(&m);
    cr_assert(out->allocs->allocs[0]->redundancy == 1 && out->allocs->allocs[0]->unavailable == 1);
    proto_msg_free(out);
    a.unavailable = 3;
    expect_refused(&m, "bad counts");
    a.unavailable = 1;
    a.domains = 3;
    expect_refused(&m, "bad counts");
}
