/* Membership: register with the allocation manager and heartbeat, reconnecting
 * whenever the manager goes away. */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "appliance.h"

struct appl_member {
    appl_member_opts_t opts;
    char host[256], port[16];        /* the manager tried now */
    char *managers;                  /* --manager: HOST:PORT[,HOST:PORT...] (a group, docs/ha.md) */
    size_t nmanagers, cur;
    uint64_t boot_id;
    pthread_t thread;
    int stop_pipe[2];   /* readable when stopping */
};

/* One registration; returns when the connection fails or stop is requested. */
static void serve_connection(appl_member_t *mb, rpc_conn_t *rc)
{
    const appl_member_opts_t *o = &mb->opts;
    bool logged = false;
    /* the identity signs this session's transcript: the manager pins it, so an impostor
     * holding the cluster secret cannot take this appliance's place */
    uint8_t sig[RPC_ID_SIG_LEN], msg[14 + 32];
    memcpy(msg, "xmem-register", 14);
    memcpy(msg + 14, rc->transcript, 32);
    crypto_sign_detached(sig, NULL, msg, sizeof(msg), o->identity->sk);
    for (;;) {
        xm_appliance_info_t info;
        appl_pool_info(o->regions, &info);
        Xmem__ApplianceRegister reg = XMEM__APPLIANCE_REGISTER__INIT;
        reg.control_addr = (char *)o->control_addr;
        reg.domain = (char *)o->domain;
        reg.provider = o->fab->provider;
        reg.fabric_addr = (ProtobufCBinaryData){o->fab->addr_len, o->fab->addr};
        reg.pool_size = info.pool_size;
        reg.pool_used = info.pool_used;
        reg.extent_size = info.extent_size;
        reg.regions = info.regions;
        reg.backing = info.backing;
        reg.boot_id = mb->boot_id;
        reg.direct_used = appl_regions_direct_bytes(o->regions);
        reg.identity_pk = (ProtobufCBinaryData){RPC_ID_PK_LEN, (uint8_t *)o->identity->pk};
        reg.identity_sig = (ProtobufCBinaryData){RPC_ID_SIG_LEN, sig};
        xm_msg_t req = XMEM__MSG__INIT, *rep;
        req.body_case = XMEM__MSG__BODY_APPLIANCE_REGISTER;
        req.appliance_register = &reg;
        char why[256];
        /* the first registration waits for the manager to compare our regions with its table */
        xm_status_t status = rpc_call(rc, &req, logged ? o->timeout_ms : 4 * o->timeout_ms,
                                      &rep, why, sizeof(why));
        if (status != XM_OK) {
            xm_log_warn("manager %s:%s: %s", mb->host, mb->port, why);
            return;
        }
        proto_msg_free(rep);
        if (!logged) {
            xm_log_info("registered with manager %s:%s as %s (domain %s)", mb->host, mb->port,
                        o->control_addr, o->domain);
            logged = true;
        }
        struct pollfd p = {.fd = mb->stop_pipe[0], .events = POLLIN};
        if (poll(&p, 1, (int)o->heartbeat_ms) != 0) return;
    }
}

/* Entry i of the manager list into mb->host/port; false: not HOST:PORT. */
static bool manager_pick(appl_member_t *mb, size_t i)
{
    return xm__hostport_list_pick(mb->managers, i, mb->host, sizeof(mb->host), mb->port, sizeof(mb->port));
}

/* Move on to the next manager of the group, or to the leader a standby named when it is
 * one of ours; true: every manager was tried since the last success (time to pause). */
static bool manager_next(appl_member_t *mb, const char *leader, size_t *tried)
{
    if (mb->nmanagers <= 1) return true;
    for (size_t i = 0; leader != NULL && leader[0] != '\0' && i < mb->nmanagers; i++) {
        char h[256], pt[16];
        memcpy(h, mb->host, sizeof(h));
        memcpy(pt, mb->port, sizeof(pt));
        manager_pick(mb, i);
        char addr[300];
        snprintf(addr, sizeof(addr), "%s:%s", mb->host, mb->port);
        if (strcmp(addr, leader) == 0 && i != mb->cur) {
            mb->cur = i;
            return false;
        }
        memcpy(mb->host, h, sizeof(h));
        memcpy(mb->port, pt, sizeof(pt));
    }
    mb->cur = (mb->cur + 1) % mb->nmanagers;
    manager_pick(mb, mb->cur);
    return ++*tried >= mb->nmanagers;
}

static void *member_main(void *arg)
{
    appl_member_t *mb = arg;
    const appl_member_opts_t *o = &mb->opts;
    bool warned = false;
    size_t tried = 0;
    for (;;) {
        char leader[XM_NAME_MAX + 1] = "";
        bool standby = false;
        int fd;
        xm_status_t status = rpc_connect(mb->host, mb->port, o->timeout_ms, &fd);
        if (status == XM_OK) {
            xm_msg_t *welcome;
            char why[256];
            rpc_conn_t rc;
            rpc_conn_init(&rc, fd);
            status = rpc_handshake_client(&rc, o->cred, RPC_ROLE_APPLIANCE, o->timeout_ms, &welcome,
                                          why, sizeof(why));
            if (status == XM_OK && welcome->welcome->standby) {
                /* a manager of a group that is not its leader: on to the leader */
                standby = true;
                snprintf(leader, sizeof(leader), "%s", welcome->welcome->leader_addr);
                proto_msg_free(welcome);
            } else if (status == XM_OK) {
                proto_msg_free(welcome);
                warned = false;
                tried = 0;
                serve_connection(mb, &rc);
            } else if (!warned) {
                xm_log_warn("manager %s:%s: %s", mb->host, mb->port, why);
            }
            rpc_conn_close(&rc);
        } else if (!warned) {
            xm_log_warn("manager %s:%s unreachable (%s); retrying", mb->host, mb->port,
                        xm_status_str(status));
            warned = true;
        }
        (void)standby;
        /* a group: the next manager at once, a pause once all were tried */
        struct pollfd p = {.fd = mb->stop_pipe[0], .events = POLLIN};
        if (!manager_next(mb, leader, &tried)) {
            if (poll(&p, 1, 0) != 0) return NULL;
            continue;
        }
        tried = 0;
        if (poll(&p, 1, (int)o->heartbeat_ms) != 0) return NULL;
    }
}

xm_status_t appl_member_start(const appl_member_opts_t *opts, appl_member_t **mb_p)
{
    appl_member_t *mb = calloc(1, sizeof(*mb));
    if (mb == NULL) return XM_ERR_NO_MEMORY;
    mb->opts = *opts;
    mb->managers = strdup(opts->manager);
    mb->nmanagers = 1;
    for (const char *c = opts->manager; *c != '\0'; c++) mb->nmanagers += *c == ',';
    for (size_t i = mb->nmanagers; mb->managers != NULL && i-- > 0;) {
        if (!manager_pick(mb, i)) {
            xm_log_error("--manager: expected HOST:PORT[,HOST:PORT...], got '%s'", opts->manager);
            free(mb->managers);
            free(mb);
            return XM_ERR_INVALID;
        }
    }
    if (mb->managers == NULL) {
        free(mb);
        return XM_ERR_NO_MEMORY;
    }
    rpc_random(&mb->boot_id, sizeof(mb->boot_id));
    if (pipe2(mb->stop_pipe, O_CLOEXEC) != 0) {
        free(mb->managers);
        free(mb);
        return XM_ERR_IO;
    }
    if (pthread_create(&mb->thread, NULL, member_main, mb) != 0) {
        close(mb->stop_pipe[0]);
        close(mb->stop_pipe[1]);
        free(mb->managers);
        free(mb);
        return XM_ERR_IO;
    }
    *mb_p = mb;
    return XM_OK;
}

void appl_member_stop(appl_member_t *mb)
{
    if (mb == NULL) return;
    if (write(mb->stop_pipe[1], "x", 1) < 0) { /* the thread ends at its next timeout anyway */ }
    pthread_join(mb->thread, NULL);
    close(mb->stop_pipe[0]);
    close(mb->stop_pipe[1]);
    free(mb->managers);
    free(mb);
}
