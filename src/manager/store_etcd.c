/* The allocation table in etcd (docs/ha.md): one key per appliance
 * (PREFIX/appl/ADDR) and per allocation (PREFIX/alloc/ID in hex, its parts and grants
 * inside), values in JSON. Every write is a txn guarded by the leadership (the leader
 * key's create revision, leader.c): a manager that is no longer the leader can never
 * change the table. A batch (group commit) is one txn. Region keys are sealed as in the
 * SQLite store (XOR a keyed hash under a key derived from the cluster secret). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "etcd.h"
#include "ha.h"

/*
 * lock: one writer at a time on the client; a batch holds it from batch_begin to
 * batch_end, and the batch's owner thread queues its puts and deletes in ops without
 * taking it again.
 */
struct mgr_store {
    mgr_etcd_t *e;
    pthread_mutex_t lock;
    char prefix[200];
    char fence_key[220];
    int64_t fence_rev;               /* the leadership this table was loaded under */
    uint8_t seal_key[32];
    bool batch;
    pthread_t batch_owner;
    json_t *ops;                     /* the open batch's requests */
};

static bool in_own_batch(const mgr_store_t *st)
{
    return st->batch && pthread_equal(st->batch_owner, pthread_self());
}

static void et_close(mgr_store_t *st)
{
    if (st == NULL) return;
    mgr_etcd_destroy(st->e);
    json_decref(st->ops);
    pthread_mutex_destroy(&st->lock);
    sodium_memzero(st->seal_key, sizeof(st->seal_key));
    free(st);
}

/* path: the etcd endpoints; the group (prefix, leadership) is this process's (leader.c). */
static xm_status_t et_open(const char *path, mgr_store_t **st_p, char *why, size_t whylen)
{
    mgr_store_t *st = calloc(1, sizeof(*st));
    if (st == NULL) return XM_ERR_NO_MEMORY;
    pthread_mutex_init(&st->lock, NULL);
    snprintf(st->prefix, sizeof(st->prefix), "%s", mgr_ha_prefix());
    if (!mgr_ha_fence(st->fence_key, sizeof(st->fence_key), &st->fence_rev)) {
        snprintf(why, whylen, "not the leader of manager group %s", st->prefix);
        et_close(st);
        return XM_ERR_PERM;
    }
    xm_status_t s = mgr_etcd_create(path, 5000, &st->e, why, whylen);
    if (s != XM_OK) {
        et_close(st);
        return s;
    }
    *st_p = st;
    return XM_OK;
}

static uint64_t key_mask(const mgr_store_t *st, uint64_t alloc_id, uint32_t idx)
{
    uint8_t in[12], out[8];
    for (int i = 0; i < 8; i++) in[i] = (uint8_t)(alloc_id >> (8 * i));
    for (int i = 0; i < 4; i++) in[8 + i] = (uint8_t)(idx >> (8 * i));
    crypto_generichash(out, sizeof(out), in, sizeof(in), st->seal_key, sizeof(st->seal_key));
    uint64_t m = 0;
    for (int i = 0; i < 8; i++) m |= (uint64_t)out[i] << (8 * i);
    return m;
}

/* uint64 values travel as decimal strings (JSON numbers stop at 2^53 in most readers) */
static json_t *u64(uint64_t v)
{
    char b[24];
    snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
    return json_string(b);
}

static bool get_u64(const json_t *o, const char *f, uint64_t *v)
{
    const char *s = json_string_value(json_object_get(o, f));
    if (s == NULL || s[0] < '0' || s[0] > '9') return false;
    char *end;
    *v = strtoull(s, &end, 10);
    return *end == '\0';
}

static const char *get_str(const json_t *o, const char *f)
{
    const char *s = json_string_value(json_object_get(o, f));
    return s != NULL ? s : "";
}

static void alloc_key(const mgr_store_t *st, uint64_t id, char *k, size_t klen)
{
    snprintf(k, klen, "%s/alloc/%016llx", st->prefix, (unsigned long long)id);
}

static json_t *op_put(const char *key, json_t *value)
{
    char *text = value != NULL ? json_dumps(value, JSON_COMPACT) : NULL;
    json_decref(value);
    if (text == NULL) return NULL;
    json_t *op = json_pack("{s:{s:o,s:o}}", "request_put", "key", mgr_etcd_b64s(key), "value",
                           mgr_etcd_b64s(text));
    free(text);
    return op;
}

static json_t *op_delete(const char *key)
{
    return json_pack("{s:{s:o}}", "request_delete_range", "key", mgr_etcd_b64s(key));
}

/* One txn of ops (consumed), guarded by the leadership. Lock held. */
static xm_status_t commit_ops(mgr_store_t *st, json_t *ops)
{
    char rev[32], why[512];
    snprintf(rev, sizeof(rev), "%lld", (long long)st->fence_rev);
    json_t *body = json_pack("{s:[{s:o,s:s,s:s,s:s}],s:o}", "compare", "key",
                             mgr_etcd_b64s(st->fence_key), "result", "EQUAL", "target", "CREATE",
                             "create_revision", rev, "success", ops);
    if (body == NULL) return XM_ERR_NO_MEMORY;
    json_t *rep;
    xm_status_t s = mgr_etcd_call(st->e, "/v3/kv/txn", body, &rep, why, sizeof(why));
    if (s != XM_OK) {
        xm_log_error("allocation table: %s", why);
        return XM_ERR_IO;
    }
    bool ok = json_is_true(json_object_get(rep, "succeeded"));
    json_decref(rep);
    if (!ok) {
        xm_log_error("allocation table: write refused: another manager leads the group");
        mgr_ha_deposed("a guarded write of the allocation table was refused");
        return XM_ERR_IO;
    }
    return XM_OK;
}

/* Apply one op: queued in the caller's batch, or its own txn. */
static xm_status_t apply(mgr_store_t *st, json_t *op)
{
    if (op == NULL) return XM_ERR_NO_MEMORY;
    if (in_own_batch(st)) {
        /* etcd refuses a txn naming a key twice: the later change of a key replaces the
         * earlier (the same outcome) */
        const char *k = json_string_value(json_object_get(json_object_iter_value(json_object_iter(op)), "key"));
        for (size_t i = 0; k != NULL && i < json_array_size(st->ops); i++) {
            json_t *o = json_array_get(st->ops, i);
            const char *ok = json_string_value(json_object_get(json_object_iter_value(json_object_iter(o)), "key"));
            if (ok != NULL && strcmp(ok, k) == 0) return json_array_set_new(st->ops, i, op) == 0 ? XM_OK : XM_ERR_NO_MEMORY;
        }
        return json_array_append_new(st->ops, op) == 0 ? XM_OK : XM_ERR_NO_MEMORY;
    }
    pthread_mutex_lock(&st->lock);
    json_t *ops = json_array();
    json_array_append_new(ops, op);
    xm_status_t s = commit_ops(st, ops);
    pthread_mutex_unlock(&st->lock);
    return s;
}

static xm_status_t et_appliance_put(mgr_store_t *st, const mgr_appliance_t *a)
{
    json_t *v = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:o}", "addr", a->addr, "domain", a->domain,
                          "provider", a->provider, "backing", a->backing, "fabric_addr",
                          mgr_etcd_b64(a->fabric_addr, a->fabric_addr_len), "capacity",
                          u64(a->capacity), "extent_size", u64(a->extent_size));
    if (v != NULL && a->pinned) json_object_set_new(v, "identity", mgr_etcd_b64(a->identity, XM_IDENTITY_PK_LEN));
    char k[XM_NAME_MAX + 256];
    snprintf(k, sizeof(k), "%s/appl/%s", st->prefix, a->addr);
    return apply(st, op_put(k, v));
}

/* xmem appliance rm: the appliance holds no parts any more */
static xm_status_t et_appliance_delete(mgr_store_t *st, const char *addr)
{
    char k[XM_NAME_MAX + 256];
    snprintf(k, sizeof(k), "%s/appl/%s", st->prefix, addr);
    xm_status_t s = apply(st, op_delete(k));
    if (s != XM_OK) xm_log_error("allocation table: cannot forget appliance %s", addr);
    return s;
}

static json_t *alloc_json(const mgr_store_t *st, const mgr_alloc_t *a, const char *const *appl_addr)
{
    json_t *parts = json_array(), *grants = json_array();
    for (uint32_t i = 0; i < a->policy.width; i++) {
        /* state: rebuilding parts (src/manager/rebuild.c) must stay so across a failover */
        json_array_append_new(parts, json_pack("{s:s,s:o,s:o,s:o,s:i}", "appliance", appl_addr[i],
                                               "region_id", u64(a->parts[i].region_id), "key",
                                               u64(a->parts[i].key ^ key_mask(st, a->id, i)),
                                               "size", u64(a->parts[i].size), "state",
                                               (int)a->parts[i].state));
    }
    for (uint32_t i = 0; i < a->ngrants; i++) {
        json_array_append_new(grants, json_pack("{s:s,s:i}", "tenant", a->grants[i].tenant,
                                                "access", (int)a->grants[i].access));
    }
    return json_pack("{s:o,s:o,s:s,s:s,s:o,s:s,s:i,s:i,s:o,s:o,s:i,s:o,s:o}", "id", u64(a->id),
                     "request_id", u64(a->request_id), "owner", a->owner, "name", a->name, "size",
                     u64(a->size), "policy", a->policy_text, "layout", (int)a->policy.layout,
                     "width", (int)a->policy.width, "chunk", u64(a->policy.chunk), "generation",
                     u64(a->generation), "redundancy", (int)a->policy.redundancy, "parts", parts,
                     "grants", grants);
}

static xm_status_t et_alloc_put(mgr_store_t *st, const mgr_alloc_t *a, const char *const *appl_addr)
{
    char k[300];
    alloc_key(st, a->id, k, sizeof(k));
    return apply(st, op_put(k, alloc_json(st, a, appl_addr)));
}

static xm_status_t et_alloc_delete(mgr_store_t *st, uint64_t id)
{
    char k[300];
    alloc_key(st, id, k, sizeof(k));
    return apply(st, op_delete(k));
}

/* Every value under PREFIX/what/ (a range by prefix); *kvs_p an array the caller releases. */
static xm_status_t range_all(mgr_store_t *st, const char *what, json_t **rep_p, json_t **kvs_p)
{
    char k[300], why[512];
    snprintf(k, sizeof(k), "%s/%s/", st->prefix, what);
    json_t *rep;
    xm_status_t s = mgr_etcd_call(st->e, "/v3/kv/range",
                                  json_pack("{s:o,s:o}", "key", mgr_etcd_b64s(k), "range_end",
                                            mgr_etcd_prefix_end(k)), &rep, why, sizeof(why));
    if (s != XM_OK) {
        xm_log_error("allocation table: %s", why);
        return s;
    }
    *rep_p = rep;
    *kvs_p = json_object_get(rep, "kvs");
    return XM_OK;
}

static json_t *kv_value(const json_t *kv)
{
    char *text = mgr_etcd_unb64(json_object_get(kv, "value"), NULL);
    if (text == NULL) return NULL;
    json_t *v = json_loads(text, 0, NULL);
    free(text);
    if (!json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

static xm_status_t et_appliance_rename(mgr_store_t *st, const char *old_addr, const char *new_addr)
{
    bool own = in_own_batch(st);
    if (!own) pthread_mutex_lock(&st->lock);
    json_t *rep = NULL, *kvs;
    xm_status_t s = range_all(st, "alloc", &rep, &kvs);
    json_t *ops = json_array();
    for (size_t i = 0; s == XM_OK && i < json_array_size(kvs); i++) {
        json_t *kv = json_array_get(kvs, i), *v = kv_value(kv);
        json_t *parts = json_object_get(v, "parts");
        bool moved = false;
        for (size_t j = 0; j < json_array_size(parts); j++) {
            json_t *p = json_array_get(parts, j);
            if (strcmp(get_str(p, "appliance"), old_addr) == 0) {
                json_object_set_new(p, "appliance", json_string(new_addr));
                moved = true;
            }
        }
        char *key = moved ? mgr_etcd_unb64(json_object_get(kv, "key"), NULL) : NULL;
        if (key != NULL) {
            json_array_append_new(ops, op_put(key, v));
            v = NULL;
        }
        free(key);
        json_decref(v);
    }
    json_decref(rep);
    char k[XM_NAME_MAX + 256];
    snprintf(k, sizeof(k), "%s/appl/%s", st->prefix, old_addr);
    json_array_append_new(ops, op_delete(k));
    if (s == XM_OK && own) {
        json_array_extend(st->ops, ops);
        json_decref(ops);
    } else if (s == XM_OK) {
        s = commit_ops(st, ops);
    } else {
        json_decref(ops);
    }
    if (!own) pthread_mutex_unlock(&st->lock);
    if (s != XM_OK) xm_log_error("allocation table: cannot record the move of %s", old_addr);
    return s;
}

static xm_status_t et_batch_begin(mgr_store_t *st)
{
    pthread_mutex_lock(&st->lock);
    st->batch = true;
    st->batch_owner = pthread_self();
    if (st->ops == NULL) st->ops = json_array();
    json_array_clear(st->ops);
    return XM_OK;
}

static xm_status_t et_batch_end(mgr_store_t *st, bool commit)
{
    xm_status_t s = XM_OK;
    if (json_array_size(st->ops) > 0) {
        if (commit) {
            s = commit_ops(st, st->ops);
            st->ops = json_array();
        } else {
            json_array_clear(st->ops);
            s = XM_ERR_IO;
        }
    }
    st->batch = false;
    pthread_mutex_unlock(&st->lock);
    return s;
}

/* One allocation record into a new mgr_alloc_t (NULL: unusable, logged). m locked. */
static mgr_alloc_t *alloc_from_json(mgr_store_t *st, mgr_t *m, const json_t *v)
{
    uint64_t id = 0, size = 0, chunk = 0;
    json_t *parts = json_object_get(v, "parts"), *grants = json_object_get(v, "grants");
    uint32_t width = (uint32_t)json_integer_value(json_object_get(v, "width"));
    mgr_policy_t pol = {.layout = (mgr_layout_t)json_integer_value(json_object_get(v, "layout")),
                        .width = width,
                        .redundancy = (uint32_t)json_integer_value(json_object_get(v, "redundancy"))};
    xm__layout_t lay;
    const char *why = "bad width";
    if (!get_u64(v, "id", &id) || !get_u64(v, "size", &size) || !get_u64(v, "chunk", &chunk) ||
        width == 0 || width > XM_ALLOC_PARTS_MAX || json_array_size(parts) != width ||
        (pol.chunk = chunk, mgr_policy_layout(&pol, size, &lay, &why)) != XM_OK) {
        xm_log_error("allocation table: bad allocation record %llu: %s", (unsigned long long)id, why);
        return NULL;
    }
    mgr_alloc_t *a = mgr_alloc_new(width);
    if (a == NULL) return NULL;
    a->id = id;
    a->size = size;
    a->policy = pol;
    get_u64(v, "request_id", &a->request_id);
    get_u64(v, "generation", &a->generation);
    snprintf(a->owner, sizeof(a->owner), "%s", get_str(v, "owner"));
    snprintf(a->name, sizeof(a->name), "%s", get_str(v, "name"));
    snprintf(a->policy_text, sizeof(a->policy_text), "%s", get_str(v, "policy"));
    bool ok = id != 0 && xm__name_valid(a->owner);
    for (uint32_t i = 0; ok && i < width; i++) {
        json_t *p = json_array_get(parts, i);
        mgr_appliance_t *ap = mgr_registry_get(m, get_str(p, "appliance"), false);
        uint64_t key = 0;
        ok = ap != NULL && get_u64(p, "region_id", &a->parts[i].region_id) &&
             get_u64(p, "key", &key) && get_u64(p, "size", &a->parts[i].size);
        if (!ok) break;
        a->parts[i].appl = ap->idx;
        a->parts[i].key = key ^ key_mask(st, id, i);
        a->parts[i].state = json_integer_value(json_object_get(p, "state")) == MGR_PART_REBUILDING
                                ? MGR_PART_REBUILDING : MGR_PART_OK;
    }
    for (size_t i = 0; ok && i < json_array_size(grants); i++) {
        json_t *g = json_array_get(grants, i);
        mgr_grant_t *ng = realloc(a->grants, (a->ngrants + 1) * sizeof(*ng));
        if (ng == NULL) break;
        a->grants = ng;
        snprintf(ng[a->ngrants].tenant, sizeof(ng->tenant), "%s", get_str(g, "tenant"));
        ng[a->ngrants].access = json_integer_value(json_object_get(g, "access")) == XM_ACCESS_READ
                                    ? XM_ACCESS_READ : XM_ACCESS_READ_WRITE;
        a->ngrants++;
    }
    if (!ok) {
        xm_log_error("allocation table: allocation %llu is incomplete", (unsigned long long)id);
        mgr_alloc_free_mem(a);
        return NULL;
    }
    return a;
}

static xm_status_t et_load(mgr_store_t *st, mgr_t *m)
{
    static const char label[] = "xmem-table-keys-v1";
    crypto_generichash(st->seal_key, sizeof(st->seal_key), (const uint8_t *)label, sizeof(label),
                       m->opts.cred->key, RPC_KEY_LEN);
    json_t *arep = NULL, *rep = NULL, *kvs;
    xm_status_t s = XM_ERR_INVALID;
    pthread_mutex_lock(&st->lock);
    pthread_mutex_lock(&m->lock);
    if (range_all(st, "appl", &arep, &kvs) != XM_OK) {
        s = XM_ERR_IO;
        goto out;
    }
    for (size_t i = 0; i < json_array_size(kvs); i++) {
        json_t *v = kv_value(json_array_get(kvs, i));
        const char *addr = get_str(v, "addr");
        size_t falen = 0, idlen = 0;
        char *fa = mgr_etcd_unb64(json_object_get(v, "fabric_addr"), &falen);
        char *ident = mgr_etcd_unb64(json_object_get(v, "identity"), &idlen);
        mgr_appliance_t *a = NULL;
        bool ok = v != NULL && xm__name_valid(addr) && fa != NULL && falen > 0 &&
                  falen <= XM_FABRIC_ADDR_MAX && (a = mgr_registry_get(m, addr, true)) != NULL;
        if (ok) {
            snprintf(a->domain, sizeof(a->domain), "%s", get_str(v, "domain"));
            snprintf(a->provider, sizeof(a->provider), "%s", get_str(v, "provider"));
            snprintf(a->backing, sizeof(a->backing), "%s", get_str(v, "backing"));
            memcpy(a->fabric_addr, fa, falen);
            a->fabric_addr_len = falen;
            ok = get_u64(v, "capacity", &a->capacity) && get_u64(v, "extent_size", &a->extent_size);
            if (ident != NULL && idlen == XM_IDENTITY_PK_LEN) {
                memcpy(a->identity, ident, XM_IDENTITY_PK_LEN);
                a->pinned = true;
            }
        }
        if (!ok) xm_log_error("allocation table: bad appliance record '%s'", addr);
        free(fa);
        free(ident);
        json_decref(v);
        if (!ok) goto out;
    }
    if (range_all(st, "alloc", &rep, &kvs) != XM_OK) {
        s = XM_ERR_IO;
        goto out;
    }
    uint64_t n = 0;
    for (size_t i = 0; i < json_array_size(kvs); i++) {
        json_t *v = kv_value(json_array_get(kvs, i));
        mgr_alloc_t *a = v != NULL ? alloc_from_json(st, m, v) : NULL;
        json_decref(v);
        if (a == NULL) goto out; /* serving a damaged record as something else would hand out wrong descriptors */
        mgr_alloc_restore(m, a);
        n++;
    }
    xm_log_info("allocation table (etcd %s): %u appliances, %llu allocations restored", st->prefix,
                m->napps, (unsigned long long)n);
    s = XM_OK;
out:
    json_decref(arep);
    json_decref(rep);
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_unlock(&st->lock);
    return s;
}

const mgr_store_ops_t mgr_store_etcd = {
    .name = "etcd",
    .open = et_open,
    .close = et_close,
    .load = et_load,
    .appliance_put = et_appliance_put,
    .appliance_rename = et_appliance_rename,
    .alloc_put = et_alloc_put,
    .alloc_delete = et_alloc_delete,
    .appliance_delete = et_appliance_delete,
    .batch_begin = et_batch_begin,
    .batch_end = et_batch_end,
};
