/* Credentials: the cluster secret, tenant credentials and their registry, daemon
 * identities; the checks that keep each of them private. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "rpc.h"

#define CRED_MAGIC "xmem-credential 1\n"
#define TENANTS_MAGIC "# xmem tenant registry: NAME ID (hex); edit with xmem tenant add|rm\n"
#define CLUSTER_MIN_BYTES 32
#define CLUSTER_MIN_BITS_PER_BYTE 4.5

void rpc_random(void *buf, size_t len)
{
    if (sodium_init() < 0) abort(); /* no randomness source: nothing safe can be done */
    randombytes_buf(buf, len);
}

/* The ownership and mode rule for a file's status. */
static xm_status_t stat_private(const struct stat *stp, const char *path, const char *what,
                                char *why, size_t whylen)
{
    const struct stat st = *stp;
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s %s is not a regular file", what, path);
        return XM_ERR_INVALID;
    }
    if (st.st_uid != geteuid()) {
        snprintf(why, whylen, "%s %s belongs to uid %u, not to this user (uid %u): refused",
                 what, path, (unsigned)st.st_uid, (unsigned)geteuid());
        return XM_ERR_PERM;
    }
    if ((st.st_mode & 077) != 0) {
        snprintf(why, whylen, "%s %s is accessible by other users (mode %03o): refused; "
                 "run chmod 600 %s", what, path, (unsigned)(st.st_mode & 0777), path);
        return XM_ERR_PERM;
    }
    return XM_OK;
}

xm_status_t rpc_file_private(const char *path, const char *what, char *why, size_t whylen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(why, whylen, "cannot read %s %s: %s", what, path, strerror(errno));
        return errno == ENOENT ? XM_ERR_NOT_FOUND : XM_ERR_IO;
    }
    return stat_private(&st, path, what, why, whylen);
}

/* Read a small private file whole; NUL-terminated. */
static xm_status_t read_private(const char *path, const char *what, char *buf, size_t cap,
                                size_t *len_p, char *why, size_t whylen)
{
    /* the file we check is the file we read: open first (no symlink, no FIFO that could
     * block), then check what was opened */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open %s %s: %s%s", what, path, strerror(errno),
                 errno == ELOOP ? " (a symbolic link: give the file itself)" : "");
        return errno == ENOENT ? XM_ERR_NOT_FOUND : XM_ERR_AUTH;
    }
    struct stat st;
    xm_status_t status = fstat(fd, &st) == 0 ? stat_private(&st, path, what, why, whylen) : XM_ERR_IO;
    size_t len = 0;
    while (status == XM_OK && len < cap - 1) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            snprintf(why, whylen, "cannot read %s %s: %s", what, path, strerror(errno));
            status = XM_ERR_AUTH;
        }
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(fd);
    if (status != XM_OK) return status;
    buf[len] = '\0';
    *len_p = len;
    return XM_OK;
}

bool rpc_tenant_name_ok(const char *name)
{
    /* a valid name that cannot be mistaken for a role ('@'), a scoped name ('/') or a
     * comment of the registry ('#') */
    return xm__name_valid(name) && name[0] != '@' && name[0] != '#' && strchr(name, '/') == NULL;
}

/* Bits of entropy the byte histogram of buf suggests (an estimate that catches repeats). */
static double entropy_bits(const uint8_t *buf, size_t len)
{
    size_t count[256] = {0};
    for (size_t i = 0; i < len; i++) count[buf[i]]++;
    double h = 0;
    for (int i = 0; i < 256; i++) {
        if (count[i] == 0) continue;
        double p = (double)count[i] / (double)len;
        h -= p * log2(p);
    }
    return h * (double)len;
}

/*
 * A cluster secret must be machine-made randomness: anyone may ask a server for a MAC
 * under it (the handshake's first reply), so a guessable one would fall to an offline
 * search. Hex (what xmem secret new writes): at least 64 digits whose bytes look random;
 * raw bytes: at least 32, not all printable text, and looking random.
 */
static bool secret_random_enough(const uint8_t *raw, size_t n)
{
    bool hex = n > 0, printable = true;
    for (size_t i = 0; i < n; i++) {
        hex = hex && ((raw[i] >= '0' && raw[i] <= '9') || (raw[i] >= 'a' && raw[i] <= 'f') ||
                      (raw[i] >= 'A' && raw[i] <= 'F'));
        printable = printable && raw[i] >= 0x20 && raw[i] < 0x7f;
    }
    if (hex) {
        if (n < 2 * CLUSTER_MIN_BYTES) return false;
        size_t m = n / 2;
        uint8_t *bytes = malloc(m);
        if (bytes == NULL) return false;
        for (size_t i = 0; i < m; i++) {
            unsigned v;
            sscanf((const char *)raw + 2 * i, "%2x", &v);
            bytes[i] = (uint8_t)v;
        }
        bool ok = entropy_bits(bytes, m) >= CLUSTER_MIN_BITS_PER_BYTE * (double)XM_MIN(m, 32);
        sodium_memzero(bytes, m);
        free(bytes);
        return ok;
    }
    return n >= CLUSTER_MIN_BYTES && !printable &&
           entropy_bits(raw, n) >= CLUSTER_MIN_BITS_PER_BYTE * (double)XM_MIN(n, 32);
}

static bool hex_decode(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return false;
        out[i] = (uint8_t)v;
    }
    return s[2 * n] == '\0' || s[2 * n] == '\n';
}

static xm_status_t parse_tenant_cred(char *text, rpc_cred_t *cred, const char *path, char *why,
                                     size_t whylen)
{
    char *save = NULL;
    bool have_tenant = false, have_id = false, have_key = false;
    for (char *line = strtok_r(text + strlen(CRED_MAGIC), "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "tenant ", 7) == 0 && rpc_tenant_name_ok(line + 7)) {
            snprintf(cred->tenant, sizeof(cred->tenant), "%s", line + 7);
            have_tenant = true;
        } else if (strncmp(line, "id ", 3) == 0) {
            char *end;
            cred->id = strtoull(line + 3, &end, 16);
            have_id = *end == '\0' && cred->id != 0;
        } else if (strncmp(line, "key ", 4) == 0 && strlen(line + 4) == 2 * RPC_KEY_LEN) {
            have_key = hex_decode(line + 4, RPC_KEY_LEN, cred->key);
        }
    }
    if (!have_tenant || !have_id || !have_key) {
        snprintf(why, whylen, "credential file %s is damaged (tenant, id or key missing)", path);
        return XM_ERR_AUTH;
    }
    return XM_OK;
}

xm_status_t rpc_cred_load(const char *path, rpc_cred_t *cred, char *why, size_t whylen)
{
    if (path == NULL || *path == '\0') {
        snprintf(why, whylen, "no credential: pass --secret-file or set XMEM_SECRET_FILE "
                 "(a tenant credential from xmem tenant add, or the cluster secret)");
        return XM_ERR_AUTH;
    }
    if (sodium_init() < 0) return XM_ERR_IO;
    char raw[4096];
    size_t n;
    memset(cred, 0, sizeof(*cred));
    xm_status_t status = read_private(path, "credential file", raw, sizeof(raw), &n, why, whylen);
    if (status != XM_OK) return XM_ERR_AUTH; /* why says what to fix */
    snprintf(cred->path, sizeof(cred->path), "%s", path);
    if (strncmp(raw, CRED_MAGIC, strlen(CRED_MAGIC)) == 0) {
        status = parse_tenant_cred(raw, cred, path, why, whylen);
        sodium_memzero(raw, sizeof(raw));
        return status;
    }
    /* a cluster secret: its bytes, a trailing newline not included */
    while (n > 0 && (raw[n - 1] == '\n' || raw[n - 1] == '\r')) n--;
    if (!secret_random_enough((const uint8_t *)raw, n)) {
        snprintf(why, whylen, "secret file %s does not hold a random secret (%zu bytes; at least "
                 "%d random bytes, raw or as hex, are needed; a passphrase is not one): make one "
                 "with xmem secret new PATH", path, n, CLUSTER_MIN_BYTES);
        sodium_memzero(raw, sizeof(raw));
        return XM_ERR_AUTH;
    }
    crypto_generichash(cred->key, sizeof(cred->key), (const uint8_t *)raw, n, NULL, 0);
    sodium_memzero(raw, sizeof(raw));
    cred->cluster = true;
    return XM_OK;
}

void rpc_tenant_key(const uint8_t k[RPC_KEY_LEN], const char *tenant, uint64_t id,
                    uint8_t out[RPC_KEY_LEN])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, k, RPC_KEY_LEN, RPC_KEY_LEN);
    static const char label[] = "xmem-tenant-key-v1";
    crypto_generichash_update(&st, (const uint8_t *)label, sizeof(label));
    crypto_generichash_update(&st, (const uint8_t *)tenant, strlen(tenant) + 1);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(id >> (8 * i));
    crypto_generichash_update(&st, le, sizeof(le));
    crypto_generichash_final(&st, out, RPC_KEY_LEN);
}

void rpc_tenants_path(const char *secret_path, char *out, size_t len)
{
    snprintf(out, len, "%s.tenants", secret_path);
}

/* Parse the registry text into entries (malloc'd). Bad lines are skipped with a warning. */
static xm_status_t tenants_parse(char *text, const char *path, rpc_tenant_entry_t **out,
                                 size_t *n_p)
{
    size_t cap = 16, n = 0;
    rpc_tenant_entry_t *e = malloc(cap * sizeof(*e));
    if (e == NULL) return XM_ERR_NO_MEMORY;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == '\0') continue;
        char name[XM_NAME_MAX + 3];
        uint64_t id;
        if (sscanf(line, "%64s %" SCNx64, name, &id) != 2 || !rpc_tenant_name_ok(name) || id == 0) {
            xm_log_warn("tenant registry %s: line '%.80s' ignored", path, line);
            continue;
        }
        if (n == cap) {
            rpc_tenant_entry_t *g = realloc(e, 2 * cap * sizeof(*e));
            if (g == NULL) {
                free(e);
                return XM_ERR_NO_MEMORY;
            }
            e = g;
            cap *= 2;
        }
        snprintf(e[n].name, sizeof(e[n].name), "%s", name);
        e[n].id = id;
        n++;
    }
    *out = e;
    *n_p = n;
    return XM_OK;
}

/* Load the registry; a missing file is an empty registry. */
static xm_status_t tenants_load(const char *path, rpc_tenant_entry_t **out, size_t *n_p, char *why,
                                size_t whylen)
{
    /* read whole (up to the limit) from one open: a file replaced meanwhile is read as one */
    size_t cap = 64u << 20, n;
    char *text = malloc(cap);
    if (text == NULL) return XM_ERR_NO_MEMORY;
    xm_status_t status = read_private(path, "tenant registry", text, cap, &n, why, whylen);
    if (status == XM_ERR_NOT_FOUND) {
        free(text);
        *out = NULL;
        *n_p = 0;
        return XM_ERR_NOT_FOUND; /* the caller says what a missing registry means */
    }
    if (status == XM_OK && n == cap - 1) {
        snprintf(why, whylen, "tenant registry %s is too large", path);
        status = XM_ERR_INVALID;
    }
    if (status == XM_OK) status = tenants_parse(text, path, out, n_p);
    free(text);
    return status;
}

/* tenants_load, where a missing registry is an empty one (nothing issued yet). */
static xm_status_t tenants_load_or_empty(const char *path, rpc_tenant_entry_t **out, size_t *n_p,
                                         char *why, size_t whylen)
{
    xm_status_t status = tenants_load(path, out, n_p, why, whylen);
    return status == XM_ERR_NOT_FOUND ? XM_OK : status;
}

/* Replace the registry with entries, atomically (temporary file, fsync, rename). */
static xm_status_t tenants_store(const char *path, const rpc_tenant_entry_t *e, size_t n, char *why,
                                 size_t whylen)
{
    char tmp[PATH_MAX + 40];
    uint64_t r;
    rpc_random(&r, sizeof(r));
    snprintf(tmp, sizeof(tmp), "%s.tmp%u.%016" PRIx64, path, (unsigned)getpid(), r);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(why, whylen, "cannot write the tenant registry beside %s: %s", path, strerror(errno));
        return XM_ERR_IO;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        unlink(tmp);
        return XM_ERR_NO_MEMORY;
    }
    fputs(TENANTS_MAGIC, f);
    for (size_t i = 0; i < n; i++) fprintf(f, "%s %016" PRIx64 "\n", e[i].name, e[i].id);
    bool ok = fflush(f) == 0 && fsync(fd) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(why, whylen, "cannot write the tenant registry %s: %s", path, strerror(errno));
        unlink(tmp);
        return XM_ERR_IO;
    }
    return XM_OK;
}

/* Hold the registry's lock file: one change at a time, across processes and threads. */
static int tenants_lock(const char *path, char *why, size_t whylen)
{
    char lock[PATH_MAX + 8];
    snprintf(lock, sizeof(lock), "%s.lock", path);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) {
        snprintf(why, whylen, "cannot lock the tenant registry %s: %s", lock, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static xm_status_t tenant_add_locked(const rpc_cred_t *cluster, const char *tenants_path,
                                     const char *tenant, const char *out_path, char *why,
                                     size_t whylen);

xm_status_t rpc_tenant_add(const rpc_cred_t *cluster, const char *tenants_path, const char *tenant,
                           const char *out_path, char *why, size_t whylen)
{
    int lock = tenants_lock(tenants_path, why, whylen);
    if (lock < 0) return XM_ERR_IO;
    xm_status_t status = tenant_add_locked(cluster, tenants_path, tenant, out_path, why, whylen);
    close(lock);
    return status;
}

static xm_status_t tenant_add_locked(const rpc_cred_t *cluster, const char *tenants_path,
                                     const char *tenant, const char *out_path, char *why,
                                     size_t whylen)
{
    if (!cluster->cluster) {
        snprintf(why, whylen, "issuing a tenant credential needs the cluster secret, not a tenant's");
        return XM_ERR_PERM;
    }
    if (!rpc_tenant_name_ok(tenant)) {
        snprintf(why, whylen, "tenant name '%s' must be 1..%d printable characters, without '/' "
                 "and not starting with '@' or '#'", tenant, XM_NAME_MAX);
        return XM_ERR_INVALID;
    }
    rpc_tenant_entry_t *e;
    size_t n;
    xm_status_t status = tenants_load_or_empty(tenants_path, &e, &n, why, whylen);
    if (status != XM_OK) return status;
    uint64_t id = 0;
    while (id == 0) rpc_random(&id, sizeof(id));
    uint8_t key[RPC_KEY_LEN];
    rpc_tenant_key(cluster->key, tenant, id, key);
    int fd = open(out_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(why, whylen, "cannot create credential file %s: %s%s", out_path, strerror(errno),
                 errno == EEXIST ? " (remove it first, or choose another --out)" : "");
        free(e);
        return XM_ERR_IO;
    }
    char text[256], hex[2 * RPC_KEY_LEN + 1];
    sodium_bin2hex(hex, sizeof(hex), key, sizeof(key));
    int len = snprintf(text, sizeof(text), CRED_MAGIC "tenant %s\nid %016" PRIx64 "\nkey %s\n",
                       tenant, id, hex);
    bool ok = write(fd, text, (size_t)len) == len && fsync(fd) == 0;
    close(fd);
    sodium_memzero(text, sizeof(text));
    sodium_memzero(key, sizeof(key));
    if (!ok) {
        snprintf(why, whylen, "cannot write credential file %s: %s", out_path, strerror(errno));
        unlink(out_path);
        free(e);
        return XM_ERR_IO;
    }
    rpc_tenant_entry_t *g = realloc(e, (n + 1) * sizeof(*e));
    if (g == NULL) {
        free(e);
        unlink(out_path);
        return XM_ERR_NO_MEMORY;
    }
    e = g;
    snprintf(e[n].name, sizeof(e[n].name), "%s", tenant);
    e[n].id = id;
    status = tenants_store(tenants_path, e, n + 1, why, whylen);
    if (status != XM_OK) unlink(out_path);
    free(e);
    return status;
}

xm_status_t rpc_tenant_rm(const char *tenants_path, const char *tenant, char *why, size_t whylen)
{
    rpc_tenant_entry_t *e;
    size_t n, kept = 0;
    int lock = tenants_lock(tenants_path, why, whylen);
    if (lock < 0) return XM_ERR_IO;
    xm_status_t status = tenants_load_or_empty(tenants_path, &e, &n, why, whylen);
    if (status != XM_OK) {
        close(lock);
        return status;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(e[i].name, tenant) != 0) e[kept++] = e[i];
    }
    if (kept == n) {
        snprintf(why, whylen, "no tenant %s in %s", tenant, tenants_path);
        free(e);
        close(lock);
        return XM_ERR_NOT_FOUND;
    }
    status = tenants_store(tenants_path, e, kept, why, whylen);
    free(e);
    close(lock);
    return status;
}

xm_status_t rpc_tenant_list(const char *tenants_path, char **out, char *why, size_t whylen)
{
    rpc_tenant_entry_t *e;
    size_t n;
    xm_status_t status = tenants_load_or_empty(tenants_path, &e, &n, why, whylen);
    if (status != XM_OK) return status;
    char *text = malloc(n * (XM_NAME_MAX + 20) + 1);
    if (text == NULL) {
        free(e);
        return XM_ERR_NO_MEMORY;
    }
    size_t off = 0;
    text[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        off += (size_t)sprintf(text + off, "%s %016" PRIx64 "\n", e[i].name, e[i].id);
    }
    free(e);
    *out = text;
    return XM_OK;
}

/* The registry file's identity and version, to tell whether it changed since it was read. */
static void registry_sig(const char *path, uint64_t sig[4])
{
    struct stat st;
    memset(sig, 0, 4 * sizeof(uint64_t));
    if (stat(path, &st) != 0) return;
    sig[0] = (uint64_t)st.st_ino;
    sig[1] = (uint64_t)st.st_size;
    sig[2] = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
    sig[3] = (uint64_t)st.st_ctim.tv_sec * 1000000000ull + (uint64_t)st.st_ctim.tv_nsec;
}

/* ---- the keyring of a server --------------------------------------------------- */

static void keyring_watch(rpc_keyring_t *kr)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", kr->tenants_path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL) snprintf(dir, sizeof(dir), ".");
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    kr->watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (kr->watch_fd < 0) return;
    if (inotify_add_watch(kr->watch_fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE |
                                                 IN_CREATE | IN_ATTRIB) < 0) {
        xm_log_warn("cannot watch %s for tenant changes (%m): revocations apply at restart or SIGHUP",
                    dir);
        close(kr->watch_fd);
        kr->watch_fd = -1;
    }
}

xm_status_t rpc_keyring_init(rpc_keyring_t *kr, const rpc_cred_t *cluster, const char *tenants_path,
                             char *why, size_t whylen)
{
    memset(kr, 0, sizeof(*kr));
    kr->watch_fd = -1;
    if (!cluster->cluster) {
        snprintf(why, whylen, "%s is a tenant credential; daemons need the cluster secret",
                 cluster->path);
        return XM_ERR_AUTH;
    }
    memcpy(kr->cluster_key, cluster->key, RPC_KEY_LEN);
    if (tenants_path != NULL && tenants_path[0] != '\0') {
        snprintf(kr->tenants_path, sizeof(kr->tenants_path), "%s", tenants_path);
    } else {
        rpc_tenants_path(cluster->path, kr->tenants_path, sizeof(kr->tenants_path));
    }
    registry_sig(kr->tenants_path, kr->loaded_sig);
    xm_status_t status = tenants_load_or_empty(kr->tenants_path, &kr->tenants, &kr->ntenants, why, whylen);
    if (status != XM_OK) return status;
    pthread_mutex_init(&kr->lock, NULL);
    pthread_mutex_init(&kr->sync_lock, NULL);
    keyring_watch(kr);
    return XM_OK;
}

void rpc_keyring_cleanup(rpc_keyring_t *kr)
{
    if (kr->watch_fd >= 0) close(kr->watch_fd);
    free(kr->tenants);
    sodium_memzero(kr->cluster_key, sizeof(kr->cluster_key));
    pthread_mutex_destroy(&kr->lock);
    pthread_mutex_destroy(&kr->sync_lock);
}

/*
 * Re-read the registry when forced or when the file changed since it was read; swap it in
 * and bump the generation when its contents changed. Never calls on_change: that is
 * rpc_keyring_refresh's, on the server's loop, so that callbacks never run under a lookup's
 * locks. Any thread may call it (a lookup that misses does, so a credential issued a moment
 * ago is known before the watch fires).
 */
static bool keyring_sync_locked(rpc_keyring_t *kr, bool force);

static bool keyring_sync(rpc_keyring_t *kr, bool force)
{
    /* one reload at a time: two that overlap could swap an older read in over a newer one */
    pthread_mutex_lock(&kr->sync_lock);
    bool changed = keyring_sync_locked(kr, force);
    pthread_mutex_unlock(&kr->sync_lock);
    return changed;
}

static bool keyring_sync_locked(rpc_keyring_t *kr, bool force)
{
    uint64_t sig[4];
    registry_sig(kr->tenants_path, sig);
    pthread_mutex_lock(&kr->lock);
    bool same = memcmp(sig, kr->loaded_sig, sizeof(sig)) == 0;
    pthread_mutex_unlock(&kr->lock);
    if (same && !force) return false;
    rpc_tenant_entry_t *e;
    size_t n;
    char why[512];
    xm_status_t st = tenants_load(kr->tenants_path, &e, &n, why, sizeof(why));
    if (st == XM_ERR_NOT_FOUND) {
        /* none yet (nothing issued) is quiet; one that disappears is an editor that deletes
         * and rewrites, or a mistake: revoking everyone on that is worse than keeping what
         * was loaded (xmem tenant rm revokes one tenant) */
        if (kr->ntenants > 0)
            xm_log_error("tenant registry %s is gone: keeping the %zu tenants loaded before",
                         kr->tenants_path, kr->ntenants);
        return false;
    }
    if (st != XM_OK) {
        xm_log_error("tenant registry not reloaded: %s", why);
        return false;
    }
    pthread_mutex_lock(&kr->lock);
    memcpy(kr->loaded_sig, sig, sizeof(sig));
    bool changed = n != kr->ntenants || (n > 0 && memcmp(e, kr->tenants, n * sizeof(*e)) != 0);
    if (changed) {
        free(kr->tenants);
        kr->tenants = e;
        kr->ntenants = n;
        kr->generation++;
    } else {
        free(e);
    }
    pthread_mutex_unlock(&kr->lock);
    if (changed) xm_log_info("tenant registry %s reloaded: %zu tenants", kr->tenants_path, n);
    return changed;
}

bool rpc_keyring_refresh(rpc_keyring_t *kr)
{
    if (kr->watch_fd >= 0) {
        char buf[4096];
        while (read(kr->watch_fd, buf, sizeof(buf)) > 0) {
        }
    }
    keyring_sync(kr, true);
    /* a change a lookup already took in counts too: its revocations are still to be done */
    pthread_mutex_lock(&kr->lock);
    bool changed = kr->generation != kr->notified_generation;
    kr->notified_generation = kr->generation;
    pthread_mutex_unlock(&kr->lock);
    if (changed && kr->on_change != NULL) kr->on_change(kr->on_change_arg);
    return changed;
}

static bool is_role(const char *principal)
{
    return strcmp(principal, RPC_ROLE_MANAGER) == 0 || strcmp(principal, RPC_ROLE_APPLIANCE) == 0 ||
           strcmp(principal, RPC_ROLE_ADMIN) == 0;
}

/* Is tenant in the registry (with credential id, unless any_id)? A miss re-reads a registry
 * file that changed, or waits for another thread's reading of it, and looks again. */
static bool keyring_holds(rpc_keyring_t *kr, const char *tenant, uint64_t id, bool any_id)
{
    bool found = false;
    for (int pass = 0; pass < 2 && !found; pass++) {
        if (pass == 1) keyring_sync(kr, false);
        pthread_mutex_lock(&kr->lock);
        for (size_t i = 0; i < kr->ntenants && !found; i++) {
            found = (any_id || kr->tenants[i].id == id) && strcmp(kr->tenants[i].name, tenant) == 0;
        }
        pthread_mutex_unlock(&kr->lock);
    }
    return found;
}

bool rpc_keyring_valid(rpc_keyring_t *kr, const char *principal, uint64_t id)
{
    if (principal[0] == '@') return is_role(principal) && id == 0;
    return keyring_holds(kr, principal, id, false);
}

bool rpc_keyring_has_tenant(rpc_keyring_t *kr, const char *tenant)
{
    return tenant[0] == '@' || keyring_holds(kr, tenant, 0, true);
}

xm_status_t rpc_keyring_key(rpc_keyring_t *kr, const char *principal, uint64_t id,
                            uint8_t key[RPC_KEY_LEN], const char **why_p)
{
    if (principal[0] == '@') {
        if (!is_role(principal) || id != 0) {
            *why_p = "unknown role";
            return XM_ERR_AUTH;
        }
        memcpy(key, kr->cluster_key, RPC_KEY_LEN);
        return XM_OK;
    }
    if (!rpc_keyring_valid(kr, principal, id)) {
        *why_p = "unknown or revoked tenant credential";
        return XM_ERR_AUTH;
    }
    rpc_tenant_key(kr->cluster_key, principal, id, key);
    return XM_OK;
}

/* ---- identities --------------------------------------------------------------- */

void rpc_identity_id(const uint8_t pk[RPC_ID_PK_LEN], char out[17])
{
    uint8_t h[8];
    crypto_generichash(h, sizeof(h), pk, RPC_ID_PK_LEN, NULL, 0);
    sodium_bin2hex(out, 17, h, sizeof(h));
}

xm_status_t rpc_identity_load(const char *path, rpc_identity_t *idn, char *why, size_t whylen)
{
    if (sodium_init() < 0) return XM_ERR_IO;
    char text[512];
    size_t n;
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) {
        crypto_sign_keypair(idn->pk, idn->sk);
        char hex[2 * crypto_sign_SECRETKEYBYTES + 1];
        sodium_bin2hex(hex, sizeof(hex), idn->sk, sizeof(idn->sk));
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            snprintf(why, whylen, "cannot create identity file %s: %s", path, strerror(errno));
            return XM_ERR_IO;
        }
        int len = snprintf(text, sizeof(text), "xmem-identity 1\n%s\n", hex);
        bool ok = write(fd, text, (size_t)len) == len && fsync(fd) == 0;
        close(fd);
        sodium_memzero(text, sizeof(text));
        sodium_memzero(hex, sizeof(hex));
        if (!ok) {
            snprintf(why, whylen, "cannot write identity file %s: %s", path, strerror(errno));
            unlink(path);
            return XM_ERR_IO;
        }
        rpc_identity_id(idn->pk, idn->id);
        xm_log_info("new identity %s in %s", idn->id, path);
        return XM_OK;
    }
    xm_status_t status = read_private(path, "identity file", text, sizeof(text), &n, why, whylen);
    if (status != XM_OK) return status;
    const char *magic = "xmem-identity 1\n";
    if (strncmp(text, magic, strlen(magic)) != 0 ||
        !hex_decode(text + strlen(magic), crypto_sign_SECRETKEYBYTES, idn->sk)) {
        sodium_memzero(text, sizeof(text));
        snprintf(why, whylen, "identity file %s is damaged", path);
        return XM_ERR_INVALID;
    }
    sodium_memzero(text, sizeof(text));
    crypto_sign_ed25519_sk_to_pk(idn->pk, idn->sk);
    rpc_identity_id(idn->pk, idn->id);
    return XM_OK;
}
