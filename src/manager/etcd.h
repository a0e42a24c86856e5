/* A small etcd v3 client: the JSON gateway (/v3/...) over HTTP with libcurl, JSON with
 * jansson. Used by the etcd store (store_etcd.c) and the leader election (leader.c). */
#ifndef XM_MGR_ETCD_H
#define XM_MGR_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <xmem/xmem.h>

/* One client: a keep-alive HTTP connection to one endpoint at a time. Not thread-safe:
 * each thread that talks to etcd has its own. */
typedef struct mgr_etcd mgr_etcd_t;

/* endpoints: "http://HOST:PORT[,http://HOST:PORT...]" (or HOST:PORT). timeout_ms bounds
 * each call. */
xm_status_t mgr_etcd_create(const char *endpoints, uint32_t timeout_ms, mgr_etcd_t **e_p,
                            char *why, size_t whylen);
void mgr_etcd_destroy(mgr_etcd_t *e);

/* POST body (consumed) to path ("/v3/kv/txn"); *rep_p: the parsed reply (caller json_decref).
 * A connection failure tries the next endpoint. XM_ERR_CONNECT (no endpoint answered),
 * XM_ERR_TIMEOUT, XM_ERR_IO (an error reply from etcd, reason in why), XM_ERR_PROTOCOL. */
xm_status_t mgr_etcd_call(mgr_etcd_t *e, const char *path, json_t *body, json_t **rep_p,
                          char *why, size_t whylen);

/* A JSON string holding data base64-encoded (the gateway's bytes). NULL: no memory. */
json_t *mgr_etcd_b64(const void *data, size_t len);
json_t *mgr_etcd_b64s(const char *s);
/* Decode a base64 JSON string into a malloc'd, NUL-terminated buffer; NULL: not one. */
char *mgr_etcd_unb64(const json_t *s, size_t *len_p);
/* An int64 field (the gateway writes them as strings); 0 when absent. */
int64_t mgr_etcd_int(const json_t *obj, const char *field);
/* The end of the range of keys starting with prefix (the prefix with its last byte + 1). */
json_t *mgr_etcd_prefix_end(const char *prefix);

#endif
