/* etcd v3 through its JSON gateway over HTTP (libcurl), JSON by jansson, base64 by
 * libsodium. One keep-alive connection per client; a failed connection moves on to
 * the next endpoint. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "../common/common.h"
#include "etcd.h"

#define ETCD_ENDPOINTS_MAX 8

struct mgr_etcd {
    CURL *curl;
    struct curl_slist *headers;
    char *url[ETCD_ENDPOINTS_MAX];   /* "http://HOST:PORT" */
    size_t nurl, cur;
    uint32_t timeout_ms;
    char *buf;                       /* the reply being received */
    size_t len, cap;
};

static size_t on_data(char *data, size_t size, size_t n, void *arg)
{
    mgr_etcd_t *e = arg;
    size_t add = size * n;
    if (e->len + add + 1 > e->cap) {
        size_t cap = e->cap ? e->cap : 4096;
        while (cap < e->len + add + 1) cap *= 2;
        char *nb = realloc(e->buf, cap);
        if (nb == NULL) return 0; /* curl fails the transfer */
        e->buf = nb;
        e->cap = cap;
    }
    memcpy(e->buf + e->len, data, add);
    e->len += add;
    e->buf[e->len] = '\0';
    return add;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void mgr_etcd_destroy(mgr_etcd_t *e)
{
    if (e == NULL) return;
    if (e->curl != NULL) curl_easy_cleanup(e->curl);
    curl_slist_free_all(e->headers);
    for (size_t i = 0; i < e->nurl; i++) free(e->url[i]);
    free(e->buf);
    free(e);
}

xm_status_t mgr_etcd_create(const char *endpoints, uint32_t timeout_ms, mgr_etcd_t **e_p,
                            char *why, size_t whylen)
{
    pthread_once(&curl_once, curl_init_once);
    mgr_etcd_t *e = calloc(1, sizeof(*e));
    if (e == NULL) return XM_ERR_NO_MEMORY;
    e->timeout_ms = timeout_ms ? timeout_ms : 5000;
    char *copy = strdup(endpoints != NULL ? endpoints : ""), *save = NULL;
    if (copy == NULL) goto err_mem;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (*tok == '\0') continue;
        if (e->nurl == ETCD_ENDPOINTS_MAX) {
            snprintf(why, whylen, "--etcd: at most %d endpoints", ETCD_ENDPOINTS_MAX);
            free(copy);
            goto err;
        }
        if (strncmp(tok, "https://", 8) == 0) {
            snprintf(why, whylen, "--etcd %s: https is not supported (use http on a trusted network)", tok);
            free(copy);
            goto err;
        }
        size_t n = strlen(tok);
        while (n > 0 && tok[n - 1] == '/') tok[--n] = '\0';
        char *u = malloc(n + 8);
        if (u == NULL) {
            free(copy);
            goto err_mem;
        }
        snprintf(u, n + 8, "%s%s", strncmp(tok, "http://", 7) == 0 ? "" : "http://", tok);
        e->url[e->nurl++] = u;
    }
    free(copy);
    if (e->nurl == 0) {
        snprintf(why, whylen, "--etcd: no endpoint given (http://HOST:PORT[,...])");
        goto err;
    }
    e->curl = curl_easy_init();
    if (e->curl == NULL) goto err_mem;
    e->headers = curl_slist_append(NULL, "Content-Type: application/json");
    /* no "Expect: 100-continue" round trip before larger bodies */
    e->headers = curl_slist_append(e->headers, "Expect:");
    if (e->headers == NULL) goto err_mem;
    curl_easy_setopt(e->curl, CURLOPT_HTTPHEADER, e->headers);
    curl_easy_setopt(e->curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e->curl, CURLOPT_WRITEDATA, e);
    curl_easy_setopt(e->curl, CURLOPT_TIMEOUT_MS, (long)e->timeout_ms);
    curl_easy_setopt(e->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)(e->timeout_ms < 1000 ? e->timeout_ms : 1000));
    curl_easy_setopt(e->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e->curl, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e->curl, CURLOPT_PROXY, ""); /* never through an http_proxy of the environment */
    *e_p = e;
    return XM_OK;
err_mem:
    snprintf(why, whylen, "out of memory");
err:
    mgr_etcd_destroy(e);
    return XM_ERR_INVALID;
}

xm_status_t mgr_etcd_call(mgr_etcd_t *e, const char *path, json_t *body, json_t **rep_p,
                          char *why, size_t whylen)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (text == NULL) {
        snprintf(why, whylen, "out of memory");
        return XM_ERR_NO_MEMORY;
    }
    xm_status_t status = XM_ERR_CONNECT;
    for (size_t tries = 0; tries < e->nurl; tries++) {
        char url[512];
        snprintf(url, sizeof(url), "%s%s", e->url[e->cur], path);
        e->len = 0;
        curl_easy_setopt(e->curl, CURLOPT_URL, url);
        curl_easy_setopt(e->curl, CURLOPT_POSTFIELDS, text);
        CURLcode rc = curl_easy_perform(e->curl);
        if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
            rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_GOT_NOTHING || rc == CURLE_RECV_ERROR ||
            rc == CURLE_SEND_ERROR) {
            status = rc == CURLE_OPERATION_TIMEDOUT ? XM_ERR_TIMEOUT : XM_ERR_CONNECT;
            snprintf(why, whylen, "etcd %s: %s", e->url[e->cur], curl_easy_strerror(rc));
            e->cur = (e->cur + 1) % e->nurl;
            continue;
        }
        if (rc != CURLE_OK) {
            snprintf(why, whylen, "etcd %s: %s", e->url[e->cur], curl_easy_strerror(rc));
            status = XM_ERR_IO;
            break;
        }
        long code = 0;
        curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &code);
        json_error_t jerr;
        json_t *rep = json_loadb(e->buf != NULL ? e->buf : "", e->len, 0, &jerr);
        if (rep == NULL || !json_is_object(rep)) {
            json_decref(rep);
            snprintf(why, whylen, "etcd %s%s: HTTP %ld, not a JSON object", e->url[e->cur], path, code);
            status = XM_ERR_PROTOCOL;
            break;
        }
        if (code != 200 || json_object_get(rep, "error") != NULL) {
            const char *msg = json_string_value(json_object_get(rep, "message"));
            if (msg == NULL) msg = json_string_value(json_object_get(rep, "error"));
            snprintf(why, whylen, "etcd %s%s: HTTP %ld: %s", e->url[e->cur], path, code,
                     msg != NULL ? msg : "error");
            json_decref(rep);
            /* a member that lost its quorum or is not ready: another may serve */
            if (code == 503 || (msg != NULL && (strstr(msg, "leader") != NULL ||
                                                strstr(msg, "timed out") != NULL))) {
                status = XM_ERR_CONNECT;
                e->cur = (e->cur + 1) % e->nurl;
                continue;
            }
            status = XM_ERR_IO;
            break;
        }
        *rep_p = rep;
        status = XM_OK;
        break;
    }
    free(text);
    return status;
}

json_t *mgr_etcd_b64(const void *data, size_t len)
{
    size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *out = malloc(cap);
    if (out == NULL) return NULL;
    sodium_bin2base64(out, cap, data, len, sodium_base64_VARIANT_ORIGINAL);
    json_t *s = json_string(out);
    free(out);
    return s;
}

json_t *mgr_etcd_b64s(const char *s)
{
    return mgr_etcd_b64(s, strlen(s));
}

char *mgr_etcd_unb64(const json_t *s, size_t *len_p)
{
    const char *in = json_string_value(s);
    if (in == NULL) return NULL;
    size_t inlen = strlen(in), len = 0;
    char *out = malloc(inlen + 1);
    if (out == NULL) return NULL;
    if (sodium_base642bin((unsigned char *)out, inlen, in, inlen, NULL, &len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(out);
        return NULL;
    }
    out[len] = '\0';
    if (len_p != NULL) *len_p = len;
    return out;
}

int64_t mgr_etcd_int(const json_t *obj, const char *field)
{
    const json_t *v = json_object_get(obj, field);
    if (json_is_integer(v)) return (int64_t)json_integer_value(v);
    const char *s = json_string_value(v);
    return s != NULL ? strtoll(s, NULL, 10) : 0;
}

json_t *mgr_etcd_prefix_end(const char *prefix)
{
    size_t n = strlen(prefix);
    char *end = strdup(prefix);
    if (end == NULL || n == 0) {
        free(end);
        return NULL;
    }
    end[n - 1]++;
    json_t *s = mgr_etcd_b64(end, n);
    free(end);
    return s;
}
