/* rpc: the control plane. Sockets and framing (frame.c); credentials, the tenant
 * registry and appliance identities (cred.c); the one handshake and encrypted,
 * authenticated sessions (session.c); calls with deadlines (call.c).
 *
 * A session starts with three clear frames (Hello, Challenge, Auth) that prove
 * both ends hold the same credential key and agree ephemeral X25519 keys; from
 * the server's Welcome on, every frame in each direction is sealed with an AEAD
 * (AES-256-GCM where both ends have AES instructions, else ChaCha20-Poly1305)
 * under a per-direction key and a nonce that counts frames: a replayed,
 * reordered, injected, dropped or altered frame fails to open and ends the session. The event-loop server
 * both daemons run is server.c. */
#ifndef XM_RPC_H
#define XM_RPC_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <sodium.h>
#include <xmem/xmem.h>

#include "../proto/proto.h"

#define RPC_KEY_LEN 32
#define RPC_ID_PK_LEN crypto_sign_PUBLICKEYBYTES
#define RPC_ID_SIG_LEN crypto_sign_BYTES

/* Roles only the cluster credential may take. */
#define RPC_ROLE_MANAGER XM_MANAGER_TENANT
#define RPC_ROLE_APPLIANCE "@appliance"
#define RPC_ROLE_ADMIN "@admin"

/* ---- sockets and framing (frame.c) ----------------------------------------- */

/* Listen on HOST:PORT (PORT may be 0); the bound port in *port_p. */
xm_status_t rpc_listen(const char *host, const char *port, int *fd_p, uint16_t *port_p);
/* Accept one connection (non-blocking, close-on-exec, no Nagle); -1 with errno when none. */
int rpc_accept(int listen_fd, struct sockaddr_storage *ss);
/* "HOST:PORT" of a socket address, for log lines. */
void rpc_peer_name(const struct sockaddr_storage *ss, char *buf, size_t len);
/* Connect with a timeout; XM_ERR_CONNECT / XM_ERR_TIMEOUT. */
xm_status_t rpc_connect(const char *host, const char *port, uint32_t timeout_ms, int *fd_p);
/* Move len bytes in (out=false) or out within the deadline (monotonic ns). */
xm_status_t rpc_sock_xfer(int fd, void *buf, size_t len, bool out, uint64_t deadline_ns);
/* Poll fd without sleeping for up to ns until it is readable (a reply within ns costs no
 * wake-up; a sleeping thread woken from another CPU costs ~20 us here). */
void rpc_spin_readable(int fd, uint64_t ns);
uint64_t rpc_deadline_after(uint32_t ms);

/* ---- credentials (cred.c) --------------------------------------------------- */

/*
 * What a process proves itself with. The cluster credential (a secret file of at
 * least 32 random bytes) is held by daemons and administrators and may take the
 * @ roles; a tenant credential (made by `xmem tenant add`) names one tenant, its
 * id in the tenant registry and its key, derived from the cluster key, so any
 * daemon of the cluster can check it without storing it.
 */
typedef struct rpc_cred {
    bool cluster;
    char tenant[XM_NAME_MAX + 1];    /* tenant credential: its tenant */
    uint64_t id;                     /* tenant credential: its registry id */
    uint8_t key[RPC_KEY_LEN];        /* the MAC key of the handshake */
    char path[PATH_MAX];
} rpc_cred_t;

/*
 * Load a credential file: a cluster secret or a tenant credential. The file must be
 * a regular file of this user, not accessible by group or others; a cluster secret
 * shorter than 32 bytes or of low entropy is refused. why says what to do.
 */
xm_status_t rpc_cred_load(const char *path, rpc_cred_t *cred, char *why, size_t whylen);
/* Refuse a file (secret, credential, table, pool) that group or others may access or
 * that another user owns; why names it and says how to fix it. */
xm_status_t rpc_file_private(const char *path, const char *what, char *why, size_t whylen);
/* A name a tenant may have: valid, no '/', not starting with '@' or '#'. */
bool rpc_tenant_name_ok(const char *name);
/* The key of tenant's credential id under cluster key k. */
void rpc_tenant_key(const uint8_t k[RPC_KEY_LEN], const char *tenant, uint64_t id,
                    uint8_t out[RPC_KEY_LEN]);
/* The tenant registry beside a cluster secret: PATH.tenants. */
void rpc_tenants_path(const char *secret_path, char *out, size_t len);
/*
 * Issue a credential for tenant (cluster credential required): a fresh id goes into
 * the registry at tenants_path and the credential into out_path (0600, created new).
 */
xm_status_t rpc_tenant_add(const rpc_cred_t *cluster, const char *tenants_path, const char *tenant,
                           const char *out_path, char *why, size_t whylen);
/* Remove tenant from the registry: its credentials stop working (daemons watch the file). */
xm_status_t rpc_tenant_rm(const char *tenants_path, const char *tenant, char *why, size_t whylen);
/* The tenants in the registry, one "NAME ID" per line into out (malloc'd). */
xm_status_t rpc_tenant_list(const char *tenants_path, char **out, char *why, size_t whylen);

/*
 * What a server checks credentials against: the cluster key and the tenant registry,
 * reloaded when the file changes (watch_fd becomes readable: call rpc_keyring_refresh).
 */
typedef struct rpc_tenant_entry {
    char name[XM_NAME_MAX + 1];
    uint64_t id;
} rpc_tenant_entry_t;

typedef struct rpc_keyring {
    uint8_t cluster_key[RPC_KEY_LEN];
    char tenants_path[PATH_MAX];
    int watch_fd;                    /* inotify on the registry's directory, -1: none */
    pthread_mutex_t lock;            /* guards tenants, ntenants, generation, loaded_sig */
    pthread_mutex_t sync_lock;       /* one reload at a time; taken before lock */
    rpc_tenant_entry_t *tenants;
    size_t ntenants;
    uint64_t generation;             /* bumped by every reload that changed something */
    uint64_t notified_generation;    /* the generation on_change was last called for */
    uint64_t loaded_sig[4];          /* the registry file's inode, size and times when read */
    void (*on_change)(void *arg);    /* called (without lock) after a reload changed it; may be NULL */
    void *on_change_arg;
} rpc_keyring_t;

xm_status_t rpc_keyring_init(rpc_keyring_t *kr, const rpc_cred_t *cluster, const char *tenants_path,
                             char *why, size_t whylen);
void rpc_keyring_cleanup(rpc_keyring_t *kr);
/* Re-read the registry (the watch fired, or SIGHUP) and call on_change when it changed since
 * the last call, also when a lookup took the change in first; true then. A lookup that
 * misses re-reads a registry file that changed, so a credential issued a moment ago works
 * before the watch fires. */
bool rpc_keyring_refresh(rpc_keyring_t *kr);
/* The handshake key of principal (an @ role: the cluster key; a tenant: its credential id's
 * key, when the registry lists it). XM_ERR_AUTH with why otherwise. */
xm_status_t rpc_keyring_key(rpc_keyring_t *kr, const char *principal, uint64_t id,
                            uint8_t key[RPC_KEY_LEN], const char **why_p);
/* Still valid (not revoked)? */
bool rpc_keyring_valid(rpc_keyring_t *kr, const char *principal, uint64_t id);
/* Does the registry hold any credential of tenant? (@ roles: always) */
bool rpc_keyring_has_tenant(rpc_keyring_t *kr, const char *tenant);

/* A daemon's persistent identity: an Ed25519 key pair in a private file. */
typedef struct rpc_identity {
    uint8_t pk[RPC_ID_PK_LEN];
    uint8_t sk[crypto_sign_SECRETKEYBYTES];
    char id[17];                     /* hex of the first 8 bytes of the public key's hash */
} rpc_identity_t;

/* Load the identity at path, or make it (0600) when the file does not exist. */
xm_status_t rpc_identity_load(const char *path, rpc_identity_t *idn, char *why, size_t whylen);
/* The printable id of a public key. */
void rpc_identity_id(const uint8_t pk[RPC_ID_PK_LEN], char out[17]);

/* ---- sessions (session.c) ------------------------------------------------- */

/*
 * One end of a control connection. Not thread-safe: the thread that owns the
 * connection sends and receives; frames are sealed and opened in order.
 */
/* The AEADs a session may seal with (Hello offers a set, Challenge picks one). */
typedef enum rpc_cipher {
    RPC_CIPHER_CHACHA20 = 1,         /* ChaCha20-Poly1305 (IETF): everywhere */
    RPC_CIPHER_AES256GCM = 2,        /* AES-256-GCM: where the CPU has AES-NI and PCLMUL */
} rpc_cipher_t;

/* One direction of a session: its key (and AES key schedule) and the frames it counted. */
typedef struct rpc_dir {
    crypto_aead_aes256gcm_state aes; /* AES-256-GCM: the expanded key */
    uint8_t key[32];                 /* ChaCha20-Poly1305: the key */
    uint64_t counter;                /* the nonce of the next frame */
} rpc_dir_t;

typedef struct rpc_conn {
    int fd;
    bool secure;                     /* the handshake finished: frames are sealed */
    rpc_cipher_t cipher;
    rpc_dir_t tx, rx;
    uint8_t transcript[32];          /* hash of the handshake, for channel binding */
    char principal[XM_NAME_MAX + 1]; /* server side: who the peer proved to be */
    uint64_t cred_id;
    bool peer_identified;            /* the server signed the transcript with its identity */
    uint8_t peer_pk[RPC_ID_PK_LEN];
    uint64_t seq;                    /* client side: last request's sequence number */
} rpc_conn_t;

void rpc_conn_init(rpc_conn_t *c, int fd);
/* Key a session directly (tests and fuzzing; the handshake does this itself). */
void rpc_conn_keys(rpc_conn_t *c, rpc_cipher_t cipher, const uint8_t tx[32], const uint8_t rx[32]);
/* Close the socket and forget the keys. */
void rpc_conn_close(rpc_conn_t *c);

/* Client side of the handshake as principal (a tenant credential's tenant, or an @ role with
 * the cluster credential). The server's Welcome in *welcome_p. */
xm_status_t rpc_handshake_client(rpc_conn_t *c, const rpc_cred_t *cred, const char *principal,
                                 uint32_t timeout_ms, xm_msg_t **welcome_p, char *why,
                                 size_t whylen);
/* Decides, once the peer proved c->principal, whether it may have a session (connection
 * limits); a refusal's status and reason reach the peer. */
typedef xm_status_t (*rpc_admit_cb)(void *arg, const rpc_conn_t *c, const char **why_p);
/* Server side: check the peer against kr, sign with idn (may be NULL), ask admit (may be
 * NULL), send welcome. On success c->principal is what the peer proved. */
xm_status_t rpc_handshake_server(rpc_conn_t *c, rpc_keyring_t *kr, const rpc_identity_t *idn,
                                 const Xmem__Welcome *welcome, rpc_admit_cb admit, void *arg,
                                 uint32_t timeout_ms, const char **why_p);

/* Seal one message into a frame (length header + ciphertext); *buf_p malloc'd. */
xm_status_t rpc_seal(rpc_conn_t *c, const xm_msg_t *msg, uint8_t **buf_p, size_t *len_p);
/* Open a sealed frame body (the bytes after the header) of at most max plaintext bytes. */
xm_status_t rpc_open(rpc_conn_t *c, const uint8_t *body, size_t len, size_t max, xm_msg_t **msg_p,
                     const char **why_p);
/* Largest frame body rpc_open accepts for max plaintext bytes. */
size_t rpc_frame_max(size_t max);

/* Send one message (sealed once secure) by the deadline. */
xm_status_t rpc_send(rpc_conn_t *c, const xm_msg_t *msg, uint64_t deadline_ns);
/* Receive one message of at most max bytes: its first byte by deadline_ns (UINT64_MAX: wait
 * forever), the rest within frame_ms. XM_ERR_DISCONNECTED with why NULL on orderly close. */
xm_status_t rpc_recv(rpc_conn_t *c, size_t max, uint64_t deadline_ns, uint32_t frame_ms,
                     xm_msg_t **msg_p, const char **why_p);

/* ---- calls (call.c) ------------------------------------------------------- */

/* A reply's status: XM_OK, or its error (an unknown code reads as XM_ERR_PROTOCOL) with
 * the peer's text, or the code's string, in why. */
xm_status_t rpc_reply_status(const xm_msg_t *rep, char *why, size_t whylen);
/*
 * n requests pipelined on one connection (sent together, replies read in order):
 * statuses[i] and reps[i] (NULL unless XM_OK) for each. Returns XM_OK when every
 * one succeeded; else the first failure, whose text goes to why. A transport
 * failure (XM_ERR_DISCONNECTED / TIMEOUT / PROTOCOL) leaves the outcome of the
 * requests from there on unknown.
 */
xm_status_t rpc_call_many(rpc_conn_t *c, xm_msg_t *const *reqs, size_t n, uint32_t timeout_ms,
                          xm_msg_t **reps, xm_status_t *statuses, char *why, size_t whylen);
/* One request/reply; an error reply's text (or the transport failure) goes to why. */
xm_status_t rpc_call(rpc_conn_t *c, xm_msg_t *req, uint32_t timeout_ms, xm_msg_t **rep_p,
                     char *why, size_t whylen);

/* ---- servers (admit.c) ---------------------------------------------------- */

#define RPC_ACCEPT_PAUSE_MS 100

/* Sessions per principal; the @ roles are not counted. */
typedef struct rpc_admit_entry {
    char name[XM_NAME_MAX + 1];
    uint32_t count;
} rpc_admit_entry_t;

typedef struct rpc_admission {
    pthread_mutex_t lock;            /* guards entries, n, cap */
    uint32_t per_principal;
    rpc_admit_entry_t *entries;
    size_t n, cap;
} rpc_admission_t;

void rpc_admission_init(rpc_admission_t *a, uint32_t per_principal);
void rpc_admission_cleanup(rpc_admission_t *a);
/* Count a session for principal; XM_ERR_AGAIN with why when it has its limit. */
xm_status_t rpc_admission_take(rpc_admission_t *a, const char *principal, const char **why_p);
void rpc_admission_put(rpc_admission_t *a, const char *principal);
/* A daemon's signals: SIGTERM/SIGINT on *stop_fd_p (stop), SIGHUP on *hup_fd_p (reload),
 * SIGPIPE ignored; blocked in every thread. Call before starting threads. */
void rpc_daemon_signals(int *stop_fd_p, int *hup_fd_p);
/* Accept one connection; when the process is out of descriptors (EMFILE...) set
 * *paused_until_ns: the caller stops watching the listener until then. -1: none. */
int rpc_accept_paced(int listen_fd, struct sockaddr_storage *ss, uint64_t *paused_until_ns);
/*
 * The full name of what principal calls name: a tenant's own names are "tenant/name"
 * (creating: name must be bare); another tenant's are given in full. '@' names are the
 * cluster's. out is "" for no name.
 */
xm_status_t rpc_scoped_name(const char *principal, const char *name, bool creating, char *out,
                            size_t len, const char **why_p);

/* ---- the event-loop server (server.c) -------------------------------------- */

/*
 * One epoll loop thread serves every authenticated connection of a daemon: it reads
 * and opens frames, hands each request to the owner's serve callback and sends the
 * sealed replies, buffering what the socket does not take at once. Requests are
 * served in rounds (at most one per connection, at most RPC_SRV_ROUND_MAX); a request
 * whose serve would wait is served again on a worker thread. Handshakes run on a
 * thread of their own each (bounded by max_conns), so a slow peer never holds the
 * loop. The loop also accepts (pausing on EMFILE), enforces per-tenant limits, the
 * idle timeout and the frame timeout, ends sessions whose credential was revoked
 * (the keyring's watch_fd or SIGHUP), and sleeps when nothing is due.
 */
#define RPC_SRV_ROUND_MAX 64

/* A server's connection as the owner's callbacks see it. Owned by one thread at a time
 * (the loop, or the worker serving its request), like everything behind it. */
typedef struct rpc_srv_conn {
    rpc_conn_t rc;                   /* the session; rc.principal is who the peer proved to be */
    struct sockaddr_storage peer_ss;
    char peer[64];                   /* HOST:PORT, for log lines */
    void *data;                      /* the owner's (release it in conn_closed) */
    bool keep;                       /* never closed for being idle */
    /* local transport: the connection came in on opts.local_fd; serve may set
     * pass_fd to a descriptor sent with its reply (SCM_RIGHTS) and closed by the server */
    bool local;
    int pass_fd;
} rpc_srv_conn_t;

typedef struct rpc_srv_ops {
    /*
     * Serve req into *rep (an error's reason into why; *close_p: end the session after the
     * reply). On the loop (loop true) nothing may wait: XM_ERR_AGAIN has req served again,
     * on a worker (loop false). slot: req's index in its round (loop only).
     */
    xm_status_t (*serve)(void *arg, rpc_srv_conn_t *c, xm_msg_t *req, bool loop, size_t slot,
                         xm_msg_t *rep, char *why, size_t whylen, bool *close_p);
    /* Release what serve put into a reply, once it is sealed (NULL: nothing to release). */
    void (*reply_cleanup)(void *arg, xm_msg_t *rep);
    /* Before the loop serves a round (NULL: nothing). */
    void (*round_begin)(void *arg);
    /* After it, before any of its replies is sent; failed[i] (false on entry): slot i's
     * reply is replaced by the returned status and *why_p (NULL: nothing). */
    xm_status_t (*round_end)(void *arg, size_t n, bool *failed, const char **why_p);
    /* Every tick_ms on the loop (NULL: none). */
    void (*tick)(void *arg);
    /* An authenticated session ends (NULL: nothing). */
    void (*conn_closed)(void *arg, rpc_srv_conn_t *c);
} rpc_srv_ops_t;

typedef struct rpc_server_opts {
    int listen_fd;                   /* non-blocking; stays the caller's */
    int local_fd;                    /* a second listener (AF_UNIX: the local transport), used
                                      * when > 0; non-blocking; stays the caller's */
    rpc_keyring_t *keyring;          /* who may connect; its watch_fd is watched */
    const rpc_identity_t *identity;  /* signs every handshake; NULL: none */
    const Xmem__Welcome *welcome;    /* the handshake's last frame; outlives the server */
    const rpc_srv_ops_t *ops;
    void *arg;                       /* the callbacks' first argument */
    uint32_t max_conns;              /* connections at once, handshaking ones included */
    uint32_t max_conns_per_tenant;
    uint32_t timeout_ms;             /* a handshake, a started frame, a pending reply */
    uint32_t idle_ms;                /* an authenticated session idle this long ends; 0: never */
    uint32_t workers;                /* threads serving requests that wait; 0: the loop serves them */
    uint32_t spin_us;                /* the loop polls this long after a round before sleeping */
    uint32_t tick_ms;                /* period of ops->tick */
    bool log_sessions;               /* an info line per session (else debug) */
} rpc_server_opts_t;

typedef struct rpc_server rpc_server_t;

typedef struct rpc_server_stats {
    uint64_t rounds, served, worked; /* rounds, requests served in them, of those on workers */
} rpc_server_stats_t;

xm_status_t rpc_server_create(const rpc_server_opts_t *opts, rpc_server_t **s_p);
/* Serve on the calling thread until stop_fd is readable; hup_fd (a SIGHUP signalfd, -1:
 * none) readable reloads the tenant registry. */
void rpc_server_run(rpc_server_t *s, int stop_fd, int hup_fd);
void rpc_server_stats(rpc_server_t *s, rpc_server_stats_t *st);
/* End every session (conn_closed for each) and stop the threads. */
void rpc_server_destroy(rpc_server_t *s);

/* Cryptographic random bytes (libsodium). */
void rpc_random(void *buf, size_t len);

#endif
