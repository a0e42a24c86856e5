/* Size parsing and formatting, host:port, names, the cluster secret file. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "common.h"

xm_status_t xm__parse_size(const char *text, uint64_t *size_p)
{
    if (text == NULL || *text == '\0' || strlen(text) > 64) {
        return XM_ERR_INVALID;
    }
    const char *p = text;
    uint64_t whole = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p - '0');
        if (whole > (UINT64_MAX - d) / 10) {
            return XM_ERR_INVALID;
        }
        whole = whole * 10 + d;
        p++;
        digits++;
    }
    uint64_t frac_num = 0, frac_den = 1;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (frac_den < 1000000000ull) {
                frac_num = frac_num * 10 + (uint64_t)(*p - '0');
                frac_den *= 10;
            }
            p++;
            digits++;
        }
    }
    if (digits == 0) {
        return XM_ERR_INVALID;
    }
    unsigned shift = 0;
    switch (*p) {
    case '\0': break;
    case 'k': case 'K': shift = 10; p++; break;
    case 'm': case 'M': shift = 20; p++; break;
    case 'g': case 'G': shift = 30; p++; break;
    case 't': case 'T': shift = 40; p++; break;
    default: return XM_ERR_INVALID;
    }
    if (shift != 0 && (*p == 'i' || *p == 'I')) {
        p++;
    }
    if (shift != 0 && (*p == 'b' || *p == 'B')) {
        p++;
    }
    if (*p != '\0') {
        return XM_ERR_INVALID;
    }
    if (shift == 0 && frac_num != 0) {
        return XM_ERR_INVALID; /* fractional bytes */
    }
    if (whole > (UINT64_MAX >> shift)) {
        return XM_ERR_INVALID;
    }
    uint64_t size = whole << shift;
    uint64_t frac = (uint64_t)(((unsigned __int128)frac_num << shift) / frac_den);
    if (size > UINT64_MAX - frac) {
        return XM_ERR_INVALID;
    }
    *size_p = size + frac;
    return XM_OK;
}

XM_EXPORT xm_status_t xm_parse_size(const char *text, uint64_t *size_p)
{
    return xm__parse_size(text, size_p);
}

const char *xm__format_size(uint64_t size, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)size;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < XM_ARRAY_LEN(units)) {
        v /= 1024.0;
        u++;
    }
    if (u == 0) {
        snprintf(buf, len, "%llu B", (unsigned long long)size);
    } else {
        snprintf(buf, len, "%.1f %s", v, units[u]);
    }
    return buf;
}

bool xm__hostport_list_pick(const char *list, size_t i, char *host, size_t hostlen, char *port,
                            size_t portlen)
{
    const char *p = list;
    for (size_t k = 0; k < i && p != NULL; k++) {
        p = strchr(p, ',');
        if (p != NULL) p++;
    }
    if (p == NULL) return false;
    char one[300];
    size_t n = strcspn(p, ",");
    snprintf(one, sizeof(one), "%.*s", (int)(n < sizeof(one) ? n : sizeof(one) - 1), p);
    return xm__parse_hostport(one, host, hostlen, port, portlen) == XM_OK;
}

xm_status_t xm__parse_hostport(const char *text, char *host, size_t hostlen, char *port,
                               size_t portlen)
{
    if (text == NULL) {
        return XM_ERR_INVALID;
    }
    const char *colon;
    const char *h = text;
    size_t hl;
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (end == NULL || end[1] != ':') {
            return XM_ERR_INVALID;
        }
        h = text + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL) {
            return XM_ERR_INVALID;
        }
        hl = (size_t)(colon - text);
    }
    const char *p = colon + 1;
    size_t pl = strlen(p);
    if (hl == 0 || hl >= hostlen || pl == 0 || pl >= portlen || pl > 5 ||
        strspn(p, "0123456789") != pl) {
        return XM_ERR_INVALID;
    }
    char *endp;
    long pn = strtol(p, &endp, 10);
    if (*endp != '\0' || pn < 0 || pn > 65535) {
        return XM_ERR_INVALID;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    memcpy(port, p, pl);
    port[pl] = '\0';
    return XM_OK;
}

bool xm__name_valid(const char *name)
{
    if (name == NULL) {
        return false;
    }
    size_t n = strlen(name);
    if (n == 0 || n > XM_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c >= 0x7f) {
            return false;
        }
    }
    return true;
}

xm_status_t xm__secret_load(const char *path, uint8_t *secret, size_t cap, size_t *len_p,
                            char *why, size_t whylen)
{
    if (path == NULL || *path == '\0') {
        snprintf(why, whylen, "no cluster secret: pass --secret-file or set XMEM_SECRET_FILE");
        return XM_ERR_AUTH;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open secret file %s: %s", path, strerror(errno));
        return XM_ERR_AUTH;
    }
    ssize_t n = read(fd, secret, cap);
    int err = errno;
    close(fd);
    if (n < 0) {
        snprintf(why, whylen, "cannot read secret file %s: %s", path, strerror(err));
        return XM_ERR_AUTH;
    }
    /* trailing newline is not part of the secret */
    while (n > 0 && (secret[n - 1] == '\n' || secret[n - 1] == '\r')) {
        n--;
    }
    if (n < 16) {
        snprintf(why, whylen, "secret file %s holds %zd bytes; at least 16 are needed "
                 "(make one with: xmem secret new PATH)", path, n);
        return XM_ERR_AUTH;
    }
    *len_p = (size_t)n;
    return XM_OK;
}
