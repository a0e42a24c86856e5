/* The allocation table on disk: SQLite in WAL mode (the embedded default).
 * synchronous=NORMAL: a committed change survives a crash of the manager
 * (kill -9); a power loss may take the last transactions back.
 * Checkpoints (copying the WAL into the database, with an fsync each) run on a
 * thread of their own with its own connection, never inside a request: with
 * SQLite's automatic checkpoint every ~170th allocate+free paid a 3-20 ms
 * fsync on this machine's disk (docs/performance.md). */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "../common/common.h"
#include "manager.h"

/*
 * lock: one writer at a time on db (and the statements); a batch (group
 * commit) holds it from batch_begin to batch_end, and the batch's owner
 * thread calls put/delete without taking it again. ckpt_lock guards
 * wal_pages and stop, and is taken under lock (by the WAL hook) or alone (by
 * the checkpoint thread), never the other way round.
 */
struct mgr_store {
    sqlite3 *db;
    pthread_mutex_t lock; /* one writer at a time on the connection */
    sqlite3_stmt *put_alloc, *put_part, *put_grant, *del_alloc, *del_parts, *del_grants,
        *put_appl;
    /* region keys are kept sealed: key XOR a keyed hash of (allocation, part) under a key
     * derived from the cluster secret, so the file alone gives no access (set by load) */
    uint8_t seal_key[32];
    bool legacy_clear;    /* a table from before sealing: its keys are re-sealed at load */
    /* background checkpoints */
    sqlite3 *ckpt_db;
    pthread_t ckpt_thread;
    bool ckpt_started;
    pthread_mutex_t ckpt_lock;
    pthread_cond_t ckpt_cond;
    int wal_pages;        /* WAL size after the last commit */
    int ckpt_base;        /* WAL size when the last checkpoint started */
    bool stop;
    struct { const char *sql; sqlite3_stmt *stmt; } tx[8]; /* BEGIN, COMMIT, SAVEPOINT, ... */
    /* group commit: set by batch_begin, read by the owner thread only */
    bool batch;           /* a batch is open (lock held by batch_owner) */
    bool batch_began;     /* its transaction was started (by the first write in it) */
    pthread_t batch_owner;
};

/* Checkpoint once the WAL holds this many pages (SQLite's own default). */
#define CKPT_PAGES 1000

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS appliances(addr TEXT PRIMARY KEY, domain TEXT NOT NULL,"
    "  provider TEXT NOT NULL, backing TEXT NOT NULL, fabric_addr BLOB NOT NULL,"
    "  capacity INTEGER NOT NULL, extent_size INTEGER NOT NULL, identity BLOB);"
    "CREATE TABLE IF NOT EXISTS allocs(id INTEGER PRIMARY KEY, request_id INTEGER NOT NULL,"
    "  owner TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, policy TEXT NOT NULL,"
    "  layout INTEGER NOT NULL, width INTEGER NOT NULL, chunk INTEGER NOT NULL,"
    "  generation INTEGER NOT NULL, redundancy INTEGER NOT NULL DEFAULT 0);"
    /* WITHOUT ROWID: the key is the table, so a write touches one b-tree, not two
     * (tables created by earlier versions keep their rowid and work the same) */
    "CREATE TABLE IF NOT EXISTS parts(alloc_id INTEGER NOT NULL, idx INTEGER NOT NULL,"
    "  appliance TEXT NOT NULL, region_id INTEGER NOT NULL, key INTEGER NOT NULL,"
    "  size INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(alloc_id, idx)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS grants(alloc_id INTEGER NOT NULL, tenant TEXT NOT NULL,"
    "  access INTEGER NOT NULL, PRIMARY KEY(alloc_id, tenant)) WITHOUT ROWID;"
    "PRAGMA wal_autocheckpoint=0;";

/* After each commit on db: wake the checkpoint thread when the WAL has grown by
 * CKPT_PAGES since the last checkpoint. (Not on its size alone: under a steady
 * stream of commits a passive checkpoint never gets to reset the WAL, and the
 * thread would be woken for every commit.) */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    mgr_store_t *st = arg;
    pthread_mutex_lock(&st->ckpt_lock);
    st->wal_pages = pages;
    if (pages < st->ckpt_base) st->ckpt_base = 0; /* the WAL was restarted */
    if (pages - st->ckpt_base >= CKPT_PAGES) pthread_cond_signal(&st->ckpt_cond);
    pthread_mutex_unlock(&st->ckpt_lock);
    return SQLITE_OK;
}

/* Checkpoint thread: copy the WAL into the database when it has grown (and
 * every second anyway), PASSIVE so that it never waits for or blocks a writer. */
static void *ckpt_main(void *arg)
{
    mgr_store_t *st = arg;
    pthread_mutex_lock(&st->ckpt_lock);
    while (!st->stop) {
        if (st->wal_pages - st->ckpt_base < CKPT_PAGES) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&st->ckpt_cond, &st->ckpt_lock, &ts);
            if (st->stop) break;
            if (st->wal_pages == st->ckpt_base) continue; /* nothing new */
        }
        st->ckpt_base = st->wal_pages;
        pthread_mutex_unlock(&st->ckpt_lock);
        int log = 0, done = 0;
        int rc = sqlite3_wal_checkpoint_v2(st->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            xm_log_warn("allocation table: checkpoint: %s", sqlite3_errmsg(st->ckpt_db));
        }
        pthread_mutex_lock(&st->ckpt_lock);
    }
    pthread_mutex_unlock(&st->ckpt_lock);
    return NULL;
}


static void sq_close(mgr_store_t *st)
{
    if (st == NULL) return;
    if (st->ckpt_started) {
        pthread_mutex_lock(&st->ckpt_lock);
        st->stop = true;
        pthread_cond_signal(&st->ckpt_cond);
        pthread_mutex_unlock(&st->ckpt_lock);
        pthread_join(st->ckpt_thread, NULL);
    }
    /* the last checkpoint: the database file holds everything at a clean exit */
    if (st->db != NULL) sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    sqlite3_close(st->ckpt_db);
    pthread_mutex_destroy(&st->ckpt_lock);
    pthread_cond_destroy(&st->ckpt_cond);
    sqlite3_stmt *all[] = {st->put_alloc, st->put_part, st->put_grant, st->del_alloc,
                           st->del_parts, st->del_grants, st->put_appl};
    for (size_t i = 0; i < XM_ARRAY_LEN(all); i++) sqlite3_finalize(all[i]);
    for (size_t i = 0; i < XM_ARRAY_LEN(st->tx); i++) sqlite3_finalize(st->tx[i].stmt);
    sqlite3_close(st->db);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static xm_status_t sq_open(const char *path, mgr_store_t **st_p, char *why, size_t whylen)
{
    mgr_store_t *st = calloc(1, sizeof(*st));
    if (st == NULL) return XM_ERR_NO_MEMORY;
    pthread_mutex_init(&st->lock, NULL);
    pthread_mutex_init(&st->ckpt_lock, NULL);
    pthread_cond_init(&st->ckpt_cond, NULL);
    /* the table holds every allocation's keys: it is the manager's alone (SQLite gives its
     * -wal and -shm files the table's mode) */
    int tfd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (tfd >= 0) {
        close(tfd);
    } else if (errno == ENOENT || errno == ENOTDIR) {
        /* name the directory that is missing, not only the file */
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir) slash[1] = '\0';
        else if (slash != NULL) *slash = '\0';
        else snprintf(dir, sizeof(dir), ".");
        snprintf(why, whylen, "cannot create the allocation table %s: directory %s does not exist "
                 "(create it, mode 0700, or give another --db)", path, dir);
        goto err;
    }
    if (rpc_file_private(path, "allocation table", why, whylen) != XM_OK) goto err;
    for (const char *suffix = "-wal"; suffix != NULL; suffix = strcmp(suffix, "-wal") == 0 ? "-shm" : NULL) {
        char side[PATH_MAX + 8];
        snprintf(side, sizeof(side), "%s%s", path, suffix);
        if (access(side, F_OK) == 0 && rpc_file_private(side, "allocation table", why, whylen) != XM_OK)
            goto err;
    }
    if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                        SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
        snprintf(why, whylen, "cannot open %s: %s", path, st->db ? sqlite3_errmsg(st->db) : "no memory");
        goto err;
    }
    sqlite3_busy_timeout(st->db, 5000);
    char *err = NULL;
    /* user_version 1: keys are sealed. A table written before that with parts in it holds
     * them in clear until load re-seals them. 2: allocs has the redundancy column. */
    sqlite3_stmt *uv;
    int version = 0, nparts = 0;
    if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &uv, NULL) == SQLITE_OK) {
        if (sqlite3_step(uv) == SQLITE_ROW) version = sqlite3_column_int(uv, 0);
        sqlite3_finalize(uv);
    }
    if (version == 0 && sqlite3_prepare_v2(st->db, "SELECT count(*) FROM parts", -1, &uv, NULL) == SQLITE_OK) {
        if (sqlite3_step(uv) == SQLITE_ROW) nparts = sqlite3_column_int(uv, 0);
        sqlite3_finalize(uv);
    }
    st->legacy_clear = version == 0 && nparts > 0;
    /* tables from before appliance identities get the column (an error: it is there) */
    sqlite3_exec(st->db, "ALTER TABLE appliances ADD COLUMN identity BLOB", NULL, NULL, NULL);
    /* user_version 2: allocations record their redundancy (replicate, ec); a table from
     * before holds only single and stripe allocations, which have none */
    if (version < 2)
        sqlite3_exec(st->db, "ALTER TABLE allocs ADD COLUMN redundancy INTEGER NOT NULL DEFAULT 0",
                     NULL, NULL, NULL);
    if (sqlite3_exec(st->db, schema, NULL, NULL, &err) != SQLITE_OK) {
        snprintf(why, whylen, "%s: %s", path, err != NULL ? err : "schema failed");
        sqlite3_free(err);
        goto err;
    }
    /* parts record their state (rebuild, src/manager/rebuild.c); tables from before get the
     * column (an error: it is there) */
    sqlite3_exec(st->db, "ALTER TABLE parts ADD COLUMN state INTEGER NOT NULL DEFAULT 0", NULL,
                 NULL, NULL);
    struct { sqlite3_stmt **s; const char *sql; } stmts[] = {
        {&st->put_alloc, "INSERT OR REPLACE INTO allocs(id,request_id,owner,name,size,policy,"
                         "layout,width,chunk,generation,redundancy) VALUES(?,?,?,?,?,?,?,?,?,?,?)"},
        {&st->put_part, "INSERT INTO parts(alloc_id,idx,appliance,region_id,key,size,state) "
                        "VALUES(?,?,?,?,?,?,?)"},
        {&st->put_grant, "INSERT INTO grants VALUES(?,?,?)"},
        {&st->del_alloc, "DELETE FROM allocs WHERE id=?"},
        {&st->del_parts, "DELETE FROM parts WHERE alloc_id=?"},
        {&st->del_grants, "DELETE FROM grants WHERE alloc_id=?"},
        {&st->put_appl, "INSERT OR REPLACE INTO appliances VALUES(?,?,?,?,?,?,?,?)"},
    };
    for (size_t i = 0; i < XM_ARRAY_LEN(stmts); i++) {
        if (sqlite3_prepare_v2(st->db, stmts[i].sql, -1, stmts[i].s, NULL) != SQLITE_OK) {
            snprintf(why, whylen, "%s: %s", path, sqlite3_errmsg(st->db));
            goto err;
        }
    }
    if (sqlite3_open_v2(path, &st->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(why, whylen, "cannot open %s: %s", path,
                 st->ckpt_db ? sqlite3_errmsg(st->ckpt_db) : "no memory");
        goto err;
    }
    sqlite3_busy_timeout(st->ckpt_db, 5000);
    sqlite3_wal_hook(st->db, wal_hook, st);
    int err_thread = pthread_create(&st->ckpt_thread, NULL, ckpt_main, st);
    if (err_thread != 0) {
        snprintf(why, whylen, "cannot start the checkpoint thread: %s", strerror(err_thread));
        goto err;
    }
    st->ckpt_started = true;
    *st_p = st;
    return XM_OK;
err:
    sq_close(st);
    return XM_ERR_IO;
}

static bool step_done(mgr_store_t *st, sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        xm_log_error("allocation table: %s", sqlite3_errmsg(st->db));
        return false;
    }
    return true;
}

/* Run one of the transaction statements, prepared once (sqlite3_exec would parse it
 * on every request). Lock held. */
static bool exec(mgr_store_t *st, const char *sql)
{
    sqlite3_stmt *s = NULL;
    size_t i = 0;
    for (; i < XM_ARRAY_LEN(st->tx) && st->tx[i].sql != NULL; i++) {
        if (strcmp(st->tx[i].sql, sql) == 0) {
            s = st->tx[i].stmt;
            break;
        }
    }
    if (s == NULL && i < XM_ARRAY_LEN(st->tx) &&
        sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) == SQLITE_OK) {
        st->tx[i].sql = sql;
        st->tx[i].stmt = s;
    }
    int rc = s != NULL ? sqlite3_step(s) : sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    if (s != NULL) sqlite3_reset(s);
    if (rc != SQLITE_OK && rc != SQLITE_DONE) {
        xm_log_error("allocation table: %s: %s", sql, sqlite3_errmsg(st->db));
        return false;
    }
    return true;
}

static bool in_own_batch(const mgr_store_t *st)
{
    return st->batch && pthread_equal(st->batch_owner, pthread_self());
}

/* Start one change: its own transaction, or a savepoint inside the caller's batch. */
static bool write_begin(mgr_store_t *st)
{
    if (!in_own_batch(st)) {
        pthread_mutex_lock(&st->lock);
        return exec(st, "BEGIN IMMEDIATE");
    }
    if (!st->batch_began) {
        if (!exec(st, "BEGIN IMMEDIATE")) return false;
        st->batch_began = true;
    }
    return exec(st, "SAVEPOINT change");
}

/* End one change begun by write_begin: commit it (or, in a batch, keep it for the batch's
 * commit); undone when !ok. Returns ok && committed. */
static bool write_end(mgr_store_t *st, bool ok)
{
    if (in_own_batch(st)) {
        if (!ok && st->batch_began) exec(st, "ROLLBACK TO change");
        return exec(st, "RELEASE change") && ok;
    }
    ok = ok && exec(st, "COMMIT");
    if (!ok) exec(st, "ROLLBACK");
    pthread_mutex_unlock(&st->lock);
    return ok;
}

/* What a part's key is XORed with in the table. */
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

static xm_status_t sq_appliance_put(mgr_store_t *st, const mgr_appliance_t *a)
{
    bool own = in_own_batch(st);
    if (!own) pthread_mutex_lock(&st->lock);
    sqlite3_stmt *s = st->put_appl;
    sqlite3_bind_text(s, 1, a->addr, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, a->domain, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, a->provider, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 4, a->backing, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(s, 5, a->fabric_addr, (int)a->fabric_addr_len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)a->capacity);
    sqlite3_bind_int64(s, 7, (sqlite3_int64)a->extent_size);
    if (a->pinned) {
        sqlite3_bind_blob(s, 8, a->identity, XM_IDENTITY_PK_LEN, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(s, 8);
    }
    bool ok = step_done(st, s);
    if (!own) pthread_mutex_unlock(&st->lock);
    return ok ? XM_OK : XM_ERR_IO;
}

static xm_status_t sq_appliance_rename(mgr_store_t *st, const char *old_addr, const char *new_addr)
{
    bool own = in_own_batch(st);
    if (!own) pthread_mutex_lock(&st->lock);
    bool ok = true;
    const char *sql[] = {"UPDATE parts SET appliance=?2 WHERE appliance=?1",
                         "DELETE FROM appliances WHERE addr=?1"};
    for (size_t i = 0; i < 2 && ok; i++) {
        sqlite3_stmt *s;
        ok = sqlite3_prepare_v2(st->db, sql[i], -1, &s, NULL) == SQLITE_OK;
        if (!ok) break;
        sqlite3_bind_text(s, 1, old_addr, -1, SQLITE_TRANSIENT);
        if (i == 0) sqlite3_bind_text(s, 2, new_addr, -1, SQLITE_TRANSIENT);
        ok = sqlite3_step(s) == SQLITE_DONE;
        sqlite3_finalize(s);
    }
    if (!own) pthread_mutex_unlock(&st->lock);
    if (!ok) xm_log_error("allocation table: cannot record the move of %s: %s", old_addr,
                          sqlite3_errmsg(st->db));
    return ok ? XM_OK : XM_ERR_IO;
}

static xm_status_t sq_appliance_delete(mgr_store_t *st, const char *addr)
{
    bool own = in_own_batch(st);
    if (!own) pthread_mutex_lock(&st->lock);
    sqlite3_stmt *s;
    bool ok = sqlite3_prepare_v2(st->db, "DELETE FROM appliances WHERE addr=?1", -1, &s, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(s, 1, addr, -1, SQLITE_TRANSIENT);
        ok = sqlite3_step(s) == SQLITE_DONE;
        sqlite3_finalize(s);
    }
    if (!own) pthread_mutex_unlock(&st->lock);
    if (!ok) xm_log_error("allocation table: cannot forget appliance %s: %s", addr, sqlite3_errmsg(st->db));
    return ok ? XM_OK : XM_ERR_IO;
}

static bool delete_rows(mgr_store_t *st, uint64_t id, bool alloc_too)
{
    sqlite3_stmt *dels[] = {st->del_parts, st->del_grants, st->del_alloc};
    for (size_t i = 0; i < (alloc_too ? 3u : 2u); i++) {
        sqlite3_bind_int64(dels[i], 1, (sqlite3_int64)id);
        if (!step_done(st, dels[i])) return false;
    }
    return true;
}

static xm_status_t sq_alloc_put(mgr_store_t *st, const mgr_alloc_t *a, const char *const *appl_addr)
{
    bool ok = write_begin(st);
    if (ok) {
        sqlite3_stmt *s = st->put_alloc;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)a->id);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)a->request_id);
        sqlite3_bind_text(s, 3, a->owner, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(s, 4, a->name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 5, (sqlite3_int64)a->size);
        sqlite3_bind_text(s, 6, a->policy_text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(s, 7, (int)a->policy.layout);
        sqlite3_bind_int(s, 8, (int)a->policy.width);
        sqlite3_bind_int64(s, 9, (sqlite3_int64)a->policy.chunk);
        sqlite3_bind_int64(s, 10, (sqlite3_int64)a->generation);
        sqlite3_bind_int(s, 11, (int)a->policy.redundancy);
        ok = step_done(st, s) && delete_rows(st, a->id, false);
    }
    for (uint32_t i = 0; ok && i < a->policy.width; i++) {
        sqlite3_stmt *s = st->put_part;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)a->id);
        sqlite3_bind_int(s, 2, (int)i);
        sqlite3_bind_text(s, 3, appl_addr[i], -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 4, (sqlite3_int64)a->parts[i].region_id);
        sqlite3_bind_int64(s, 5, (sqlite3_int64)(a->parts[i].key ^ key_mask(st, a->id, i)));
        sqlite3_bind_int64(s, 6, (sqlite3_int64)a->parts[i].size);
        sqlite3_bind_int(s, 7, (int)a->parts[i].state);
        ok = step_done(st, s);
    }
    for (uint32_t i = 0; ok && i < a->ngrants; i++) {
        sqlite3_stmt *s = st->put_grant;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)a->id);
        sqlite3_bind_text(s, 2, a->grants[i].tenant, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(s, 3, (int)a->grants[i].access);
        ok = step_done(st, s);
    }
    return write_end(st, ok) ? XM_OK : XM_ERR_IO;
}

static xm_status_t sq_alloc_delete(mgr_store_t *st, uint64_t id)
{
    bool ok = write_begin(st);
    ok = ok && delete_rows(st, id, true);
    return write_end(st, ok) ? XM_OK : XM_ERR_IO;
}

static xm_status_t sq_batch_begin(mgr_store_t *st)
{
    pthread_mutex_lock(&st->lock);
    st->batch = true;
    st->batch_began = false;
    st->batch_owner = pthread_self();
    return XM_OK;
}

static xm_status_t sq_batch_end(mgr_store_t *st, bool commit)
{
    bool ok = true;
    if (st->batch_began) {
        ok = commit && exec(st, "COMMIT");
        if (!ok) exec(st, "ROLLBACK");
    }
    st->batch = st->batch_began = false;
    pthread_mutex_unlock(&st->lock);
    return ok ? XM_OK : XM_ERR_IO;
}

static const char *col_text(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t != NULL ? (const char *)t : "";
}

static xm_status_t sq_load(mgr_store_t *st, mgr_t *m)
{
    xm_status_t status = XM_ERR_INVALID;
    sqlite3_stmt *s = NULL, *p = NULL, *g = NULL;
    static const char label[] = "xmem-table-keys-v1";
    crypto_generichash(st->seal_key, sizeof(st->seal_key), (const uint8_t *)label, sizeof(label),
                       m->opts.cred->key, RPC_KEY_LEN);
    pthread_mutex_lock(&st->lock);
    pthread_mutex_lock(&m->lock);
    if (sqlite3_prepare_v2(st->db, "SELECT addr,domain,provider,backing,fabric_addr,capacity,"
                           "extent_size,identity FROM appliances", -1, &s, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(st->db, "SELECT idx,appliance,region_id,key,size,state FROM parts "
                           "WHERE alloc_id=? ORDER BY idx", -1, &p, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(st->db, "SELECT tenant,access FROM grants WHERE alloc_id=?", -1, &g,
                           NULL) != SQLITE_OK) {
        xm_log_error("allocation table: %s", sqlite3_errmsg(st->db));
        status = XM_ERR_IO;
        goto out;
    }
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *addr = col_text(s, 0);
        int falen = sqlite3_column_bytes(s, 4);
        if (!xm__name_valid(addr) || falen <= 0 || falen > XM_FABRIC_ADDR_MAX) {
            xm_log_error("allocation table: bad appliance record '%s'", addr);
            goto out;
        }
        mgr_appliance_t *a = mgr_registry_get(m, addr, true);
        if (a == NULL) {
            status = XM_ERR_NO_MEMORY;
            goto out;
        }
        snprintf(a->domain, sizeof(a->domain), "%s", col_text(s, 1));
        snprintf(a->provider, sizeof(a->provider), "%s", col_text(s, 2));
        snprintf(a->backing, sizeof(a->backing), "%s", col_text(s, 3));
        memcpy(a->fabric_addr, sqlite3_column_blob(s, 4), (size_t)falen);
        a->fabric_addr_len = (size_t)falen;
        a->capacity = (uint64_t)sqlite3_column_int64(s, 5);
        a->extent_size = (uint64_t)sqlite3_column_int64(s, 6);
        if (sqlite3_column_bytes(s, 7) == XM_IDENTITY_PK_LEN) {
            memcpy(a->identity, sqlite3_column_blob(s, 7), XM_IDENTITY_PK_LEN);
            a->pinned = true;
        }
    }
    sqlite3_finalize(s);
    s = NULL;
    if (sqlite3_prepare_v2(st->db, "SELECT id,request_id,owner,name,size,policy,layout,width,chunk,"
                           "generation,redundancy FROM allocs ORDER BY id", -1, &s, NULL) != SQLITE_OK) {
        status = XM_ERR_IO;
        goto out;
    }
    uint64_t n = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        uint32_t width = (uint32_t)sqlite3_column_int(s, 7);
        int layout = sqlite3_column_int(s, 6);
        mgr_policy_t pol = {.layout = (mgr_layout_t)layout, .width = width,
                            .redundancy = (uint32_t)sqlite3_column_int(s, 10),
                            .chunk = (uint64_t)sqlite3_column_int64(s, 8)};
        xm__layout_t lay;
        const char *why = "bad width";
        /* a record this manager cannot route (a newer manager's layout, a damaged file) stops
         * the load: serving it as something else would hand out wrong descriptors */
        if (width == 0 || width > XM_ALLOC_PARTS_MAX ||
            mgr_policy_layout(&pol, (uint64_t)sqlite3_column_int64(s, 4), &lay, &why) != XM_OK) {
            xm_log_error("allocation table: bad allocation record %lld: %s",
                         sqlite3_column_int64(s, 0), why);
            goto out;
        }
        mgr_alloc_t *a = mgr_alloc_new(width);
        if (a == NULL) {
            status = XM_ERR_NO_MEMORY;
            goto out;
        }
        a->id = (uint64_t)sqlite3_column_int64(s, 0);
        a->request_id = (uint64_t)sqlite3_column_int64(s, 1);
        snprintf(a->owner, sizeof(a->owner), "%s", col_text(s, 2));
        snprintf(a->name, sizeof(a->name), "%s", col_text(s, 3));
        a->size = (uint64_t)sqlite3_column_int64(s, 4);
        snprintf(a->policy_text, sizeof(a->policy_text), "%s", col_text(s, 5));
        a->policy = pol;
        a->generation = (uint64_t)sqlite3_column_int64(s, 9);
        uint32_t got = 0;
        sqlite3_bind_int64(p, 1, (sqlite3_int64)a->id);
        while (sqlite3_step(p) == SQLITE_ROW) {
            uint32_t idx = (uint32_t)sqlite3_column_int(p, 0);
            mgr_appliance_t *ap = mgr_registry_get(m, col_text(p, 1), false);
            if (idx != got || ap == NULL) break;
            a->parts[idx].appl = ap->idx;
            a->parts[idx].region_id = (uint64_t)sqlite3_column_int64(p, 2);
            a->parts[idx].key = (uint64_t)sqlite3_column_int64(p, 3);
            if (!st->legacy_clear) a->parts[idx].key ^= key_mask(st, a->id, idx);
            a->parts[idx].size = (uint64_t)sqlite3_column_int64(p, 4);
            a->parts[idx].state = sqlite3_column_int(p, 5) == MGR_PART_REBUILDING ? MGR_PART_REBUILDING
                                                                                  : MGR_PART_OK;
            got++;
        }
        sqlite3_reset(p);
        sqlite3_bind_int64(g, 1, (sqlite3_int64)a->id);
        while (sqlite3_step(g) == SQLITE_ROW) {
            mgr_grant_t *ng = realloc(a->grants, (a->ngrants + 1) * sizeof(*ng));
            if (ng == NULL) break;
            a->grants = ng;
            snprintf(ng[a->ngrants].tenant, sizeof(ng->tenant), "%s", col_text(g, 0));
            ng[a->ngrants].access = sqlite3_column_int(g, 1) == XM_ACCESS_READ ? XM_ACCESS_READ
                                                                                : XM_ACCESS_READ_WRITE;
            a->ngrants++;
        }
        sqlite3_reset(g);
        if (got != width || a->id == 0 || a->size == 0 || !xm__name_valid(a->owner)) {
            xm_log_error("allocation table: allocation %llu is incomplete", (unsigned long long)a->id);
            mgr_alloc_free_mem(a);
            goto out;
        }
        mgr_alloc_restore(m, a);
        n++;
    }
    xm_log_info("allocation table: %u appliances, %llu allocations restored", m->napps,
                (unsigned long long)n);
    if (st->legacy_clear) {
        /* written before keys were sealed: seal them now, in one transaction */
        sqlite3_stmt *u = NULL;
        bool ok = exec(st, "BEGIN") &&
                  sqlite3_prepare_v2(st->db, "UPDATE parts SET key=? WHERE alloc_id=? AND idx=?", -1,
                                     &u, NULL) == SQLITE_OK;
        for (mgr_alloc_t *a = m->allocs; ok && a != NULL; a = a->tnext) {
            for (uint32_t i = 0; ok && i < a->policy.width; i++) {
                sqlite3_bind_int64(u, 1, (sqlite3_int64)(a->parts[i].key ^ key_mask(st, a->id, i)));
                sqlite3_bind_int64(u, 2, (sqlite3_int64)a->id);
                sqlite3_bind_int(u, 3, (int)i);
                ok = sqlite3_step(u) == SQLITE_DONE;
                sqlite3_reset(u);
            }
        }
        sqlite3_finalize(u);
        ok = ok && exec(st, "PRAGMA user_version=2") && exec(st, "COMMIT");
        if (!ok) {
            exec(st, "ROLLBACK");
            xm_log_error("allocation table: cannot seal the region keys: %s", sqlite3_errmsg(st->db));
            goto out;
        }
        xm_log_info("allocation table: region keys sealed");
        st->legacy_clear = false;
    } else if (!exec(st, "PRAGMA user_version=2")) {
        goto out;
    }
    status = XM_OK;
out:
    sqlite3_finalize(s);
    sqlite3_finalize(p);
    sqlite3_finalize(g);
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_unlock(&st->lock);
    return status;
}

const mgr_store_ops_t mgr_store_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .load = sq_load,
    .appliance_put = sq_appliance_put,
    .appliance_rename = sq_appliance_rename,
    .alloc_put = sq_alloc_put,
    .alloc_delete = sq_alloc_delete,
    .appliance_delete = sq_appliance_delete,
    .batch_begin = sq_batch_begin,
    .batch_end = sq_batch_end,
};
