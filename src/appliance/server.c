/* Appliance control server: the rpc event-loop server (src/rpc/server.c) with the
 * region calls plugged in. Every request is served on the loop thread: the region
 * table's calls are short (its lock is held across fi_mr_reg, which never waits on a
 * peer) and nothing here waits on another machine, so the appliance needs no worker
 * threads, and an idle session costs a descriptor and a few hundred bytes, not a
 * thread. With no connections the loop sleeps until a peer connects. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "appliance.h"

struct appl_server {
    appl_server_opts_t opts;
    Xmem__Welcome welcome;
    rpc_server_t *srv;
    appl_copies_t *copies;   /* region copies (copy.c) */
};

/* Reply bodies live on the heap until the reply is sealed (reply_cleanup frees them);
 * the protobuf message is each one's first field. */
typedef struct desc_rep {
    Xmem__RegionDesc rd;
    appl_desc_t d;
} desc_rep_t;

typedef struct info_rep {
    Xmem__RegionInfo ri;
    xm_region_info_t info;
    appl_grant_entry_t *grants; /* the owner's stat: who else may open it */
    Xmem__PoolGrant *pg;
    Xmem__PoolGrant **pgp;
} info_rep_t;

typedef struct appl_rep {
    Xmem__ApplianceInfo ai;
    xm_appliance_info_t info;
} appl_rep_t;

typedef struct copy_rep {
    Xmem__CopyState cs;
    appl_copy_state_t st;
} copy_rep_t;

/* A copy's state as a reply body (region copy, copy.c). */
static xm_status_t copy_reply(const appl_copy_state_t *st, xm_msg_t *rep)
{
    copy_rep_t *r = malloc(sizeof(*r));
    if (r == NULL) return XM_ERR_NO_MEMORY;
    r->st = *st;
    xmem__copy_state__init(&r->cs);
    r->cs.id = r->st.id;
    r->cs.done = r->st.done;
    r->cs.total = r->st.total;
    r->cs.copied = r->st.copied;
    r->cs.state = (uint32_t)r->st.state;
    r->cs.error = r->st.error;
    r->cs.why = r->st.why;
    rep->body_case = XMEM__MSG__BODY_COPY_STATE;
    rep->copy_state = &r->cs;
    return XM_OK;
}

typedef struct list_rep {
    Xmem__RegionList list;
    xm_region_info_t *infos;
    Xmem__RegionInfo *ri;
} list_rep_t;

static void info_to_msg(const xm_region_info_t *in, Xmem__RegionInfo *out)
{
    xmem__region_info__init(out);
    out->id = in->id;
    out->size = in->size;
    out->name = (char *)in->name;
    out->owner = (char *)in->owner;
    out->extents = in->extents;
    out->grants = in->grants;
    out->resident = in->resident;
    out->copy_of = in->copy_of;
    out->copy_kind = in->copy_kind;
}

/* A region's registration as a reply body; NULL when out of memory. */
static Xmem__RegionDesc *desc_reply(const appl_desc_t *d)
{
    desc_rep_t *r = malloc(sizeof(*r));
    if (r == NULL) return NULL;
    xmem__region_desc__init(&r->rd);
    r->d = *d;
    r->rd.id = r->d.id;
    r->rd.size = r->d.size;
    r->rd.key = r->d.key;
    r->rd.access = (Xmem__Access)r->d.access;
    r->rd.name = r->d.name;
    return &r->rd;
}

/* Regions the tenant may see as a reply body. */
static xm_status_t list_reply(appl_regions_t *t, const char *tenant, xm_msg_t *rep)
{
    list_rep_t *r = calloc(1, sizeof(*r));
    if (r == NULL) return XM_ERR_NO_MEMORY;
    size_t n;
    xm_status_t status = appl_region_list(t, tenant, &r->infos, &n);
    if (status != XM_OK) {
        free(r);
        return status;
    }
    xmem__region_list__init(&r->list);
    r->ri = calloc(n + 1, sizeof(*r->ri));
    r->list.regions = calloc(n + 1, sizeof(*r->list.regions));
    if (r->ri == NULL || r->list.regions == NULL) {
        free(r->ri);
        free(r->list.regions);
        free(r->infos);
        free(r);
        return XM_ERR_NO_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        info_to_msg(&r->infos[i], &r->ri[i]);
        r->list.regions[i] = &r->ri[i];
    }
    r->list.n_regions = n;
    rep->body_case = XMEM__MSG__BODY_REGIONS;
    rep->regions = &r->list;
    return XM_OK;
}

/* Serve one request into *rep (the server's serve callback; always on the loop). */
static xm_status_t serve(void *arg, rpc_srv_conn_t *c, xm_msg_t *m, bool loop, size_t slot,
                         xm_msg_t *rep, char *whybuf, size_t whylen, bool *close_p)
{
    appl_server_t *s = arg;
    appl_regions_t *t = s->opts.regions;
    const char *why = NULL;
    xm_status_t status;
    appl_desc_t d;
    static Xmem__Empty empty = XMEM__EMPTY__INIT;
    /* only the manager's connection may act for another tenant: its role is proven by the
     * cluster credential */
    const char *me = c->rc.principal;
    bool manager = strcmp(me, RPC_ROLE_MANAGER) == 0;
    char name[XM_NAME_MAX + 1];
    *close_p = false;
    switch (m->body_case) {
    case XMEM__MSG__BODY_REGION_CREATE: {
        const char *owner = manager && m->region_create->owner != NULL && m->region_create->owner[0]
                                ? m->region_create->owner : me;
        if (owner[0] == '@') {
            why = "regions need a tenant as owner";
            status = XM_ERR_PERM;
            break;
        }
        status = rpc_scoped_name(me, m->region_create->name, true, name, sizeof(name), &why);
        if (status != XM_OK) break;
        if (m->region_create->file != NULL && m->region_create->file[0] != '\0') {
            /* a file on this host exposed as a region (file_region.c) */
            status = appl_region_create_file(t, owner, m->region_create->file,
                                             m->region_create->read_only, name, &d, &why);
            goto desc;
        }
        status = appl_region_create(t, owner, m->region_create->size, name, &d, &why);
        if (status == XM_OK) xm_log_info("tenant %s created region %llu (%llu bytes)", owner,
                                         (unsigned long long)d.id, (unsigned long long)d.size);
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_OPEN: {
        const Xmem__RegionRef *r = m->region_open;
        xm_access_t a = r->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ
                                                               : XM_ACCESS_READ_WRITE;
        const char *who = manager && r->tenant != NULL && r->tenant[0] ? r->tenant : me;
        status = rpc_scoped_name(who, r->name, false, name, sizeof(name), &why);
        if (status != XM_OK) break;
        status = appl_region_open(t, who, r->id, name, a, &d, &why);
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_FD: {
        /* local transport: the region's memfd, sent with the reply (SCM_RIGHTS) */
        const Xmem__RegionRef *r = m->region_fd;
        xm_access_t a = r->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ
                                                               : XM_ACCESS_READ_WRITE;
        int fd = -1;
        if (!c->local) {
            why = "region descriptors are handed out on the local socket only";
            status = XM_ERR_INVALID;
            break;
        }
        status = rpc_scoped_name(me, r->name, false, name, sizeof(name), &why);
        if (status != XM_OK) break;
        status = appl_region_fd(t, me, r->id, name, r->key, a, &d, &fd, &why);
        if (status == XM_OK) {
            c->pass_fd = fd; /* the server sends and closes it */
            xm_log_debug("tenant %s (%s) mapped region %llu %s", me, c->peer,
                         (unsigned long long)d.id, a == XM_ACCESS_READ ? "read-only" : "read-write");
        }
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_VCOPY: {
        /* virtual copy (cow.c): named in the caller's namespace, owned by the caller */
        const Xmem__RegionVcopy *v = m->region_vcopy;
        char copy[XM_NAME_MAX + 1];
        if (v->source == NULL) {
            why = "no source region";
            status = XM_ERR_INVALID;
            break;
        }
        status = rpc_scoped_name(me, v->source->name, false, name, sizeof(name), &why);
        if (status == XM_OK) status = rpc_scoped_name(me, v->name, true, copy, sizeof(copy), &why);
        if (status != XM_OK) break;
        status = appl_cow_copy(t, me, v->source->id, name, copy, v->writable, &d, &why);
        if (status == XM_OK) xm_log_info("tenant %s made %s %llu of region %s", me,
                                         v->writable ? "clone" : "snapshot",
                                         (unsigned long long)d.id,
                                         name[0] != '\0' ? name : "(by id)");
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_DESTROY:
        status = rpc_scoped_name(me, m->region_destroy->name, false, name, sizeof(name), &why);
        if (status == XM_OK) status = appl_region_destroy(t, me, m->region_destroy->id, name, &why);
        rep->body_case = XMEM__MSG__BODY_OK;
        rep->ok = &empty;
        break;
    case XMEM__MSG__BODY_REGION_REVOKE: {
        const Xmem__RegionGrant *g = m->region_revoke;
        status = rpc_scoped_name(me, g->region->name, false, name, sizeof(name), &why);
        if (status == XM_OK)
            status = appl_region_revoke_grant(t, me, g->region->id, name, g->tenant, &why);
        rep->body_case = XMEM__MSG__BODY_OK;
        rep->ok = &empty;
        break;
    }
    case XMEM__MSG__BODY_REGION_GRANT: {
        const Xmem__RegionGrant *g = m->region_grant;
        status = rpc_scoped_name(me, g->region->name, false, name, sizeof(name), &why);
        if (status == XM_OK)
            status = appl_region_grant(t, me, g->region->id, name, g->tenant,
                                       (xm_access_t)g->access, &why);
        rep->body_case = XMEM__MSG__BODY_OK;
        rep->ok = &empty;
        break;
    }
    case XMEM__MSG__BODY_REGION_STAT: {
        info_rep_t *r = calloc(1, sizeof(*r));
        if (r == NULL) {
            status = XM_ERR_NO_MEMORY;
            break;
        }
        status = rpc_scoped_name(me, m->region_stat->name, false, name, sizeof(name), &why);
        if (status == XM_OK)
            status = appl_region_stat(t, me, m->region_stat->id, name, &r->info, &why);
        info_to_msg(&r->info, &r->ri);
        size_t ng = 0;
        if (status == XM_OK &&
            appl_region_grants(t, me, m->region_stat->id, name, &r->grants, &ng) == XM_OK && ng > 0) {
            r->pg = calloc(ng, sizeof(*r->pg));
            r->pgp = calloc(ng, sizeof(*r->pgp));
            for (size_t i = 0; r->pg != NULL && r->pgp != NULL && i < ng; i++) {
                xmem__pool_grant__init(&r->pg[i]);
                r->pg[i].tenant = r->grants[i].tenant;
                r->pg[i].access = (Xmem__Access)r->grants[i].access;
                r->pgp[i] = &r->pg[i];
            }
            if (r->pg != NULL && r->pgp != NULL) {
                r->ri.grant_list = r->pgp;
                r->ri.n_grant_list = ng;
            }
        }
        rep->body_case = XMEM__MSG__BODY_REGION_INFO;
        rep->region_info = &r->ri;
        break;
    }
    case XMEM__MSG__BODY_REGION_LIST:
        status = list_reply(t, me, rep);
        break;
    case XMEM__MSG__BODY_REGION_SYNC: { /* file regions: make a range durable */
        const Xmem__RegionSync *y = m->region_sync;
        status = rpc_scoped_name(me, y->region->name, false, name, sizeof(name), &why);
        if (status == XM_OK)
            status = appl_region_sync(t, me, y->region->id, name, y->offset, y->length, &why);
        rep->body_case = XMEM__MSG__BODY_OK;
        rep->ok = &empty;
        break;
    }
    case XMEM__MSG__BODY_APPLIANCE_STAT: {
        appl_rep_t *r = malloc(sizeof(*r));
        if (r == NULL) {
            status = XM_ERR_NO_MEMORY;
            break;
        }
        appl_pool_info(t, &r->info);
        xmem__appliance_info__init(&r->ai);
        r->ai.pool_size = r->info.pool_size;
        r->ai.pool_used = r->info.pool_used;
        r->ai.extent_size = r->info.extent_size;
        r->ai.regions = r->info.regions;
        r->ai.backing = r->info.backing;
        r->ai.provider = r->info.provider;
        rep->body_case = XMEM__MSG__BODY_APPLIANCE_INFO;
        rep->appliance_info = &r->ai;
        status = XM_OK;
        break;
    }
    case XMEM__MSG__BODY_REGION_COPY: {
        /* region copy (copy.c): started here, run by a worker thread */
        const Xmem__RegionCopy *q = m->region_copy;
        const char *who = manager && q->source->tenant != NULL && q->source->tenant[0]
                              ? q->source->tenant : me;
        status = rpc_scoped_name(who, q->source->name, false, name, sizeof(name), &why);
        if (status != XM_OK) break;
        appl_copy_req_t cr = {.id = q->source->id, .name = name, .addr = q->target_fabric_addr.data,
                              .addr_len = q->target_fabric_addr.len,
                              .target_control = q->target_control, .target_region = q->target_region,
                              .key = q->target_key, .offset = q->offset, .chunk = q->chunk};
        appl_copy_state_t st;
        status = appl_copy_start(s->copies, who, &cr, &st, &why);
        if (status == XM_OK) status = copy_reply(&st, rep);
        break;
    }
    case XMEM__MSG__BODY_COPY_STATUS: {
        appl_copy_state_t st;
        status = appl_copy_status(s->copies, me, m->copy_status->id, m->copy_status->cancel, &st, &why);
        if (status == XM_OK) status = copy_reply(&st, rep);
        break;
    }
    default:
        xm_log_warn("connection from %s: unexpected request %d", c->peer, (int)m->body_case);
        why = "unexpected request";
        status = XM_ERR_PROTOCOL;
        *close_p = true;
        break;
    }
    goto out;
desc:
    if (status == XM_OK) {
        rep->region_desc = desc_reply(&d);
        if (rep->region_desc == NULL) {
            status = XM_ERR_NO_MEMORY;
        } else {
            rep->body_case = XMEM__MSG__BODY_REGION_DESC;
        }
    }
out:
    if (status != XM_OK && why != NULL) snprintf(whybuf, whylen, "%s", why);
    return status;
}

/* Free a reply body serve made. */
static void reply_cleanup(void *arg, xm_msg_t *rep)
{
    switch (rep->body_case) {
    case XMEM__MSG__BODY_REGION_DESC:
        free(rep->region_desc); /* the desc_rep_t it begins */
        break;
    case XMEM__MSG__BODY_REGION_INFO: {
        info_rep_t *r = (info_rep_t *)rep->region_info; /* the info_rep_t it begins */
        free(r->pgp);
        free(r->pg);
        free(r->grants);
        free(r);
        break;
    }
    case XMEM__MSG__BODY_REGIONS: {
        list_rep_t *r = (list_rep_t *)rep->regions;
        free(r->list.regions);
        free(r->ri);
        free(r->infos);
        free(r);
        break;
    }
    case XMEM__MSG__BODY_APPLIANCE_INFO:
        free(rep->appliance_info); /* the appl_rep_t it begins */
        break;
    case XMEM__MSG__BODY_COPY_STATE:
        free(rep->copy_state); /* the copy_rep_t it begins */
        break;
    default:
        break;
    }
}

static const rpc_srv_ops_t appl_ops = {.serve = serve, .reply_cleanup = reply_cleanup};

xm_status_t appl_server_create(const appl_server_opts_t *opts, appl_server_t **server_p)
{
    appl_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    s->opts = *opts;
    xmem__welcome__init(&s->welcome);
    s->welcome.provider = opts->fab->provider;
    s->welcome.fabric_addr = (ProtobufCBinaryData){opts->fab->addr_len, opts->fab->addr};
    s->welcome.extent_size = opts->regions->pool->extent_size;
    /* local transport: clients on this host (same boot id) may map their regions */
    if (opts->local_fd > 0 && opts->local_path != NULL && opts->boot_id != NULL) {
        s->welcome.local_path = (char *)opts->local_path;
        s->welcome.boot_id = (char *)opts->boot_id;
    }
    rpc_server_opts_t o = {.listen_fd = opts->listen_fd, .local_fd = opts->local_fd, .keyring = opts->keyring,
                           .identity = opts->identity, .welcome = &s->welcome, .ops = &appl_ops,
                           .arg = s, .max_conns = opts->max_conns,
                           .max_conns_per_tenant = opts->max_conns_per_tenant,
                           .timeout_ms = opts->timeout_ms, .idle_ms = opts->idle_ms,
                           .log_sessions = true};
    xm_status_t status = appl_copies_create(opts->regions, opts->fab->provider, &s->copies);
    if (status != XM_OK) {
        free(s);
        return status;
    }
    status = rpc_server_create(&o, &s->srv);
    if (status != XM_OK) {
        appl_copies_destroy(s->copies);
        free(s);
        return status;
    }
    *server_p = s;
    return XM_OK;
}

void appl_server_run(appl_server_t *s, int stop_fd, int hup_fd)
{
    rpc_server_run(s->srv, stop_fd, hup_fd);
}

void appl_server_destroy(appl_server_t *s)
{
    if (s == NULL) return;
    rpc_server_destroy(s->srv);
    appl_copies_destroy(s->copies); /* copies stop before the region table goes */
    free(s);
}
