/* What both daemons' servers share besides the handshake: connection limits per
 * principal, accept that backs off when descriptors run out, scoped names. */
#include <errno.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "rpc.h"

void rpc_admission_init(rpc_admission_t *a, uint32_t per_principal)
{
    memset(a, 0, sizeof(*a));
    pthread_mutex_init(&a->lock, NULL);
    a->per_principal = per_principal;
}

void rpc_admission_cleanup(rpc_admission_t *a)
{
    free(a->entries);
    pthread_mutex_destroy(&a->lock);
}

static rpc_admit_entry_t *entry_find(rpc_admission_t *a, const char *principal)
{
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(a->entries[i].name, principal) == 0) return &a->entries[i];
    }
    return NULL;
}

xm_status_t rpc_admission_take(rpc_admission_t *a, const char *principal, const char **why_p)
{
    /* the cluster's own roles are not limited: they are few and trusted */
    if (principal[0] == '@') return XM_OK;
    xm_status_t status = XM_OK;
    pthread_mutex_lock(&a->lock);
    rpc_admit_entry_t *e = entry_find(a, principal);
    if (e == NULL) {
        if (a->n == a->cap) {
            size_t cap = a->cap == 0 ? 16 : 2 * a->cap;
            rpc_admit_entry_t *g = realloc(a->entries, cap * sizeof(*g));
            if (g == NULL) {
                pthread_mutex_unlock(&a->lock);
                *why_p = "out of memory";
                return XM_ERR_NO_MEMORY;
            }
            a->entries = g;
            a->cap = cap;
        }
        e = &a->entries[a->n++];
        snprintf(e->name, sizeof(e->name), "%s", principal);
        e->count = 0;
    }
    if (e->count >= a->per_principal) {
        *why_p = "too many connections for this tenant (--max-conns-per-tenant)";
        status = XM_ERR_AGAIN;
    } else {
        e->count++;
    }
    pthread_mutex_unlock(&a->lock);
    return status;
}

void rpc_admission_put(rpc_admission_t *a, const char *principal)
{
    if (principal[0] == '@') return;
    pthread_mutex_lock(&a->lock);
    rpc_admit_entry_t *e = entry_find(a, principal);
    if (e != NULL && e->count > 0 && --e->count == 0) *e = a->entries[--a->n];
    pthread_mutex_unlock(&a->lock);
}

void rpc_daemon_signals(int *stop_fd_p, int *hup_fd_p)
{
    /* blocked in every thread (threads start after this), read from descriptors instead */
    sigset_t all, stop, hup;
    sigemptyset(&all);
    sigaddset(&all, SIGTERM);
    sigaddset(&all, SIGINT);
    sigaddset(&all, SIGPIPE);
    sigaddset(&all, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    /* SIGHUP reloads the tenant registry instead of ending the daemon */
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    *stop_fd_p = signalfd(-1, &stop, SFD_CLOEXEC);
    *hup_fd_p = signalfd(-1, &hup, SFD_CLOEXEC | SFD_NONBLOCK);
}

int rpc_accept_paced(int listen_fd, struct sockaddr_storage *ss, uint64_t *paused_until_ns)
{
    int fd = rpc_accept(listen_fd, ss);
    if (fd >= 0) return fd;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        /* the pending connection stays queued; looking again at once would spin */
        if (*paused_until_ns == 0) {
            xm_log_warn("cannot accept connections: %m; pausing accept for %d ms", RPC_ACCEPT_PAUSE_MS);
        }
        *paused_until_ns = xm__now_ns() + RPC_ACCEPT_PAUSE_MS * 1000000ull;
    }
    return -1;
}

xm_status_t rpc_scoped_name(const char *principal, const char *name, bool creating, char *out,
                            size_t len, const char **why_p)
{
    out[0] = '\0';
    if (name == NULL || name[0] == '\0') return XM_OK;
    if (principal[0] == '@') {
        /* the cluster's roles name things in full */
        snprintf(out, len, "%s", name);
        return XM_OK;
    }
    if (name[0] == '@') {
        *why_p = "names starting with '@' are reserved for the cluster";
        return XM_ERR_INVALID;
    }
    if (strchr(name, '/') != NULL) {
        size_t plen = strlen(principal);
        bool own = strncmp(name, principal, plen) == 0 && name[plen] == '/';
        if (creating && !own) {
            *why_p = "a new name is the tenant's own: give it without another tenant's prefix";
            return XM_ERR_INVALID;
        }
        snprintf(out, len, "%s", name);
        return XM_OK;
    }
    if ((size_t)snprintf(out, len, "%s/%s", principal, name) >= len || strlen(out) > XM_NAME_MAX) {
        *why_p = "the name with its tenant prefix (tenant/name) is longer than 63 characters";
        return XM_ERR_INVALID;
    }
    return XM_OK;
}
