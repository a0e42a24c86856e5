/* Write seed corpora for the fuzz targets: make_seeds OUTDIR -> OUTDIR/<target>/seed-N. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto.h"

static const char *outdir;
static int failures;

static void put(const char *target, int n, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", outdir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_seeds: mkdir %s: %m\n", path);
        failures++;
        return;
    }
    snprintf(path, sizeof(path), "%s/%s/seed-%02d", outdir, target, n);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "make_seeds: write %s: %m\n", path);
        failures++;
    }
}

/* The body of a frame: what proto_decode sees. */
static void put_msg(int n, const xm_msg_t *m)
{
    const char *why = NULL;
    if (proto_validate(m, &why) != XM_OK) {
        fprintf(stderr, "make_seeds: seed %d invalid: %s\n", n, why);
        failures++;
        return;
    }
    uint8_t *buf;
    size_t len;
    if (proto_encode(m, &buf, &len) != XM_OK) {
        failures++;
        return;
    }
    put("fuzz_msg", n, buf + XM_FRAME_HEADER, len - XM_FRAME_HEADER);
    free(buf);
}

static void msg_seeds(void)
{
    uint8_t nonce[XM_NONCE_LEN], mac[XM_MAC_LEN], addr[64];
    memset(nonce, 0xa5, sizeof(nonce));
    memset(mac, 0x5a, sizeof(mac));
    memset(addr, 0x11, sizeof(addr));
    int n = 0;

    Xmem__Hello hello = XMEM__HELLO__INIT;
    hello.version = XM_PROTO_VERSION;
    hello.tenant = "alice";
    hello.client_nonce = (ProtobufCBinaryData){sizeof(nonce), nonce};
    hello.cred_id = 7;
    hello.client_kx = (ProtobufCBinaryData){sizeof(nonce), nonce};
    hello.ciphers = 3;
    xm_msg_t m = XMEM__MSG__INIT;
    m.seq = 1;
    m.body_case = XMEM__MSG__BODY_HELLO;
    m.hello = &hello;
    put_msg(n++, &m);

    Xmem__Challenge ch = XMEM__CHALLENGE__INIT;
    ch.server_nonce = (ProtobufCBinaryData){sizeof(nonce), nonce};
    ch.server_mac = (ProtobufCBinaryData){sizeof(mac), mac};
    ch.server_kx = (ProtobufCBinaryData){32, nonce};
    ch.server_header = (ProtobufCBinaryData){24, nonce};
    ch.cipher = 1;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 1;
    m.body_case = XMEM__MSG__BODY_CHALLENGE;
    m.challenge = &ch;
    put_msg(n++, &m);

    Xmem__Auth auth = XMEM__AUTH__INIT;
    auth.client_mac = (ProtobufCBinaryData){sizeof(mac), mac};
    auth.client_header = (ProtobufCBinaryData){24, nonce};
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 2;
    m.body_case = XMEM__MSG__BODY_AUTH;
    m.auth = &auth;
    put_msg(n++, &m);

    Xmem__Welcome w = XMEM__WELCOME__INIT;
    w.provider = "tcp";
    w.fabric_addr = (ProtobufCBinaryData){sizeof(addr), addr};
    w.extent_size = 2u << 20;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 2;
    m.body_case = XMEM__MSG__BODY_WELCOME;
    m.welcome = &w;
    put_msg(n++, &m);

    Xmem__RegionCreate rc = XMEM__REGION_CREATE__INIT;
    rc.size = 1u << 30;
    rc.name = "data";
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 3;
    m.body_case = XMEM__MSG__BODY_REGION_CREATE;
    m.region_create = &rc;
    put_msg(n++, &m);

    Xmem__RegionRef ref = XMEM__REGION_REF__INIT;
    ref.id = 7;
    ref.name = "data";
    ref.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 4;
    m.body_case = XMEM__MSG__BODY_REGION_OPEN;
    m.region_open = &ref;
    put_msg(n++, &m);

    Xmem__RegionGrant grant = XMEM__REGION_GRANT__INIT;
    grant.region = &ref;
    grant.tenant = "bob";
    grant.access = XMEM__ACCESS__ACCESS_READ;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 5;
    m.body_case = XMEM__MSG__BODY_REGION_GRANT;
    m.region_grant = &grant;
    put_msg(n++, &m);

    Xmem__RegionDesc desc = XMEM__REGION_DESC__INIT;
    desc.id = 7;
    desc.size = 1u << 30;
    desc.key = 0x1234567890abcdefull;
    desc.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    desc.name = "data";
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 4;
    m.body_case = XMEM__MSG__BODY_REGION_DESC;
    m.region_desc = &desc;
    put_msg(n++, &m);

    Xmem__RegionInfo i1 = XMEM__REGION_INFO__INIT, i2 = XMEM__REGION_INFO__INIT;
    i1.id = 7;
    i1.size = 1u << 30;
    i1.name = "data";
    i1.owner = "alice";
    i1.extents = 512;
    i1.grants = 1;
    i1.resident = 4096;
    i2.id = 8;
    i2.size = 4096;
    i2.owner = "bob";
    i2.extents = 1;
    Xmem__RegionInfo *list[] = {&i1, &i2};
    Xmem__RegionList rl = XMEM__REGION_LIST__INIT;
    rl.n_regions = 2;
    rl.regions = list;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 6;
    m.body_case = XMEM__MSG__BODY_REGIONS;
    m.regions = &rl;
    put_msg(n++, &m);

    Xmem__ApplianceInfo ai = XMEM__APPLIANCE_INFO__INIT;
    ai.pool_size = 64ull << 30;
    ai.pool_used = 1u << 30;
    ai.extent_size = 2u << 20;
    ai.regions = 2;
    ai.backing = "memfd";
    ai.provider = "tcp";
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 7;
    m.body_case = XMEM__MSG__BODY_APPLIANCE_INFO;
    m.appliance_info = &ai;
    put_msg(n++, &m);

    Xmem__Empty empty = XMEM__EMPTY__INIT;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 8;
    m.body_case = XMEM__MSG__BODY_OK;
    m.ok = &empty;
    put_msg(n++, &m);

    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 9;
    m.status = XM_ERR_NOT_FOUND;
    m.error = "no region named 'x'";
    put_msg(n++, &m);
}

/* The allocation manager's messages (numbered from 50). */
static void manager_seeds(void)
{
    uint8_t addr[64];
    memset(addr, 0x22, sizeof(addr));
    int n = 50;
    xm_msg_t m;

    Xmem__ApplianceRegister reg = XMEM__APPLIANCE_REGISTER__INIT;
    reg.control_addr = "10.0.0.5:7400";
    reg.domain = "rack1";
    reg.provider = "tcp";
    reg.fabric_addr = (ProtobufCBinaryData){sizeof(addr), addr};
    reg.pool_size = 64ull << 30;
    reg.pool_used = 4u << 20;
    reg.extent_size = 2u << 20;
    reg.regions = 2;
    reg.backing = "memfd";
    reg.boot_id = 77;
    static uint8_t pk[32], sig[64];
    reg.identity_pk = (ProtobufCBinaryData){sizeof(pk), pk};
    reg.identity_sig = (ProtobufCBinaryData){sizeof(sig), sig};
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 1;
    m.body_case = XMEM__MSG__BODY_APPLIANCE_REGISTER;
    m.appliance_register = &reg;
    put_msg(n++, &m);

    Xmem__AllocRequest ar = XMEM__ALLOC_REQUEST__INIT;
    ar.request_id = 0x1234567890abcdefull;
    ar.size = 1u << 30;
    ar.policy = "stripe:4:1M";
    ar.name = "data";
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 2;
    m.body_case = XMEM__MSG__BODY_ALLOC_CREATE;
    m.alloc_create = &ar;
    put_msg(n++, &m);

    Xmem__AllocRef ref = XMEM__ALLOC_REF__INIT;
    ref.name = "data";
    ref.access = XMEM__ACCESS__ACCESS_READ;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 3;
    m.body_case = XMEM__MSG__BODY_ALLOC_ATTACH;
    m.alloc_attach = &ref;
    put_msg(n++, &m);
    Xmem__AllocRef ref_id = XMEM__ALLOC_REF__INIT;
    ref_id.id = 42;
    m.body_case = XMEM__MSG__BODY_ALLOC_FREE;
    m.alloc_free = &ref_id;
    put_msg(n++, &m);

    Xmem__AllocGrant gr = XMEM__ALLOC_GRANT__INIT;
    gr.alloc = &ref;
    gr.tenant = "bob";
    gr.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 4;
    m.body_case = XMEM__MSG__BODY_ALLOC_GRANT;
    m.alloc_grant = &gr;
    put_msg(n++, &m);

    Xmem__Empty empty = XMEM__EMPTY__INIT;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 5;
    m.body_case = XMEM__MSG__BODY_ALLOC_LIST;
    m.alloc_list = &empty;
    put_msg(n++, &m);
    m.body_case = XMEM__MSG__BODY_APPLIANCE_LIST;
    m.appliance_list = &empty;
    put_msg(n++, &m);

    /* descriptors: a single part, and a 3-way stripe with a partial last chunk */
    Xmem__AllocPart parts[3], *pp[3];
    for (int i = 0; i < 3; i++) {
        xmem__alloc_part__init(&parts[i]);
        parts[i].appliance = "10.0.0.5:7400";
        parts[i].provider = "tcp";
        parts[i].fabric_addr = (ProtobufCBinaryData){sizeof(addr) - (size_t)i, addr};
        parts[i].region_id = 10 + (uint64_t)i;
        parts[i].key = 0xdeadbeef00ull + (uint64_t)i;
        pp[i] = &parts[i];
    }
    Xmem__AllocDesc d = XMEM__ALLOC_DESC__INIT;
    d.id = 9;
    d.size = 5000;
    d.name = "data";
    d.owner = "alice";
    d.policy = "single";
    d.layout = XMEM__LAYOUT__LAYOUT_SINGLE;
    d.width = 1;
    d.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    d.generation = 1;
    d.n_parts = 1;
    d.parts = pp;
    parts[0].size = 2u << 20;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 6;
    m.body_case = XMEM__MSG__BODY_ALLOC_DESC;
    m.alloc_desc = &d;
    put_msg(n++, &m);
    d.size = 5 * 65536 + 123;
    d.policy = "stripe:3:64K";
    d.layout = XMEM__LAYOUT__LAYOUT_STRIPE;
    d.width = 3;
    d.chunk = 65536;
    d.n_parts = 3;
    for (uint32_t i = 0; i < 3; i++) parts[i].size = proto_stripe_part_size(d.size, 3, 65536, i);
    put_msg(n++, &m);

    char *apps[] = {"10.0.0.5:7400", "10.0.0.6:7400"};
    Xmem__AllocInfo ai = XMEM__ALLOC_INFO__INIT;
    ai.id = 9;
    ai.size = 4096;
    ai.name = "data";
    ai.owner = "alice";
    ai.policy = "stripe:2";
    ai.state = "degraded";
    ai.n_appliances = 2;
    ai.appliances = apps;
    Xmem__AllocInfo *aip[] = {&ai};
    Xmem__AllocList al = XMEM__ALLOC_LIST__INIT;
    al.n_allocs = 1;
    al.allocs = aip;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 7;
    m.body_case = XMEM__MSG__BODY_ALLOCS;
    m.allocs = &al;
    put_msg(n++, &m);

    Xmem__ApplianceEntry ae = XMEM__APPLIANCE_ENTRY__INIT;
    ae.addr = "10.0.0.5:7400";
    ae.domain = "rack1";
    ae.state = "up";
    ae.capacity = 64ull << 30;
    ae.used = 1u << 30;
    ae.regions = 3;
    ae.provider = "tcp";
    Xmem__ApplianceEntry *aep[] = {&ae};
    Xmem__ApplianceTable at = XMEM__APPLIANCE_TABLE__INIT;
    at.n_appliances = 1;
    at.appliances = aep;
    m = (xm_msg_t)XMEM__MSG__INIT;
    m.seq = 8;
    m.body_case = XMEM__MSG__BODY_APPLIANCES;
    m.appliances = &at;
    put_msg(n++, &m);
}

static void pool_seeds(void)
{
    uint32_t ext[] = {0, 1, 2, 9};
    Xmem__PoolGrant g = XMEM__POOL_GRANT__INIT;
    g.tenant = "bob";
    g.access = XMEM__ACCESS__ACCESS_READ;
    Xmem__PoolGrant *grants[] = {&g};
    Xmem__PoolRegion r1 = XMEM__POOL_REGION__INIT, r2 = XMEM__POOL_REGION__INIT;
    r1.id = 1;
    r1.size = 7u << 20;
    r1.name = "data";
    r1.owner = "alice";
    r1.n_extents = 4;
    r1.extents = ext;
    r1.n_grants = 1;
    r1.grants = grants;
    r2.id = 3;
    r2.size = 1;
    r2.owner = "bob";
    r2.n_extents = 1;
    r2.extents = &ext[3];
    Xmem__PoolRegion *regions[] = {&r1, &r2};
    Xmem__PoolMeta meta = XMEM__POOL_META__INIT;
    meta.version = 1;
    meta.pool_size = 64u << 20;
    meta.extent_size = 2u << 20;
    meta.next_id = 4;
    meta.n_regions = 2;
    meta.regions = regions;
    for (int n = 0; n < 3; n++) {
        meta.n_regions = (size_t)(2 - n); /* two regions, one, none */
        size_t len = xmem__pool_meta__get_packed_size(&meta);
        uint8_t *buf = malloc(len);
        xmem__pool_meta__pack(&meta, buf);
        const char *why = NULL;
        Xmem__PoolMeta *check = NULL;
        if (proto_pool_decode(buf, len, &check, &why) != XM_OK) {
            fprintf(stderr, "make_seeds: pool seed %d invalid: %s\n", n, why);
            failures++;
        }
        proto_pool_free(check);
        put("fuzz_pool_meta", n, buf, len);
        free(buf);
    }
}

static void files_seeds(void)
{
    Xmem__PoolGrant g = XMEM__POOL_GRANT__INIT;
    g.tenant = "bob";
    g.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    Xmem__PoolGrant *grants[] = {&g};
    Xmem__FileRegionRecord r1 = XMEM__FILE_REGION_RECORD__INIT, r2 = XMEM__FILE_REGION_RECORD__INIT;
    r1.id = 7;
    r1.name = "dataset";
    r1.owner = "alice";
    r1.path = "/srv/data/set.bin";
    r1.read_only = 1;
    r1.n_grants = 1;
    r1.grants = grants;
    r2.id = 9;
    r2.owner = "bob";
    r2.path = "/var/lib/xmem/files/b";
    Xmem__FileRegionRecord *regions[] = {&r1, &r2};
    Xmem__FileRegionTable tab = XMEM__FILE_REGION_TABLE__INIT;
    tab.version = 1;
    tab.regions = regions;
    for (int n = 0; n < 3; n++) {
        tab.n_regions = (size_t)(2 - n); /* two records, one, none */
        size_t len = xmem__file_region_table__get_packed_size(&tab);
        uint8_t *buf = malloc(len ? len : 1);
        xmem__file_region_table__pack(&tab, buf);
        const char *why = NULL;
        Xmem__FileRegionTable *check = NULL;
        if (proto_files_decode(buf, len, &check, &why) != XM_OK) {
            fprintf(stderr, "make_seeds: file table seed %d invalid: %s\n", n, why);
            failures++;
        } else {
            for (size_t i = 0; i < check->n_regions; i++) {
                if (!proto_file_record_ok(check->regions[i], &why)) {
                    fprintf(stderr, "make_seeds: file table seed %d record %zu invalid: %s\n", n, i, why);
                    failures++;
                }
            }
            xmem__file_region_table__free_unpacked(check, NULL);
        }
        put("fuzz_files", n, buf, len);
        free(buf);
    }
}

static void size_seeds(void)
{
    static const char *const seeds[] = {
        "4096", "64K", "1.5G", "2MiB", "8GB", "16777215T", "127.0.0.1:7000", "[::1]:7000",
        "host:65535", "alice",
    };
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        put("fuzz_size", (int)i, seeds[i], strlen(seeds[i]));
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_seeds: mkdir %s: %m\n", outdir);
        return 1;
    }
    msg_seeds();
    manager_seeds();
    pool_seeds();
    files_seeds();
    size_seeds();
    return failures == 0 ? 0 : 1;
}
