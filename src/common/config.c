/* Config table with layered sources. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xmem/version.h>

#include "common.h"
#include "config.h"

static xm_config_entry_t *find(const xm_config_t *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->count; i++) {
        if (strcmp(cfg->entries[i].name, name) == 0) {
            return &cfg->entries[i];
        }
    }
    return NULL;
}

xm_status_t xm__config_set(xm_config_t *cfg, const char *name, const char *value,
                           const char *source)
{
    xm_config_entry_t *e = find(cfg, name);
    if (e == NULL) {
        return XM_ERR_INVALID;
    }
    char *copy = strdup(value);
    if (copy == NULL) {
        return XM_ERR_NO_MEMORY;
    }
    free(e->value);
    e->value = copy;
    e->source = source;
    return XM_OK;
}

/* "pool-size" -> "XMEM_POOL_SIZE" */
static void env_name(const char *name, char *env, size_t len)
{
    size_t j = snprintf(env, len, "XMEM_");
    for (const char *p = name; *p != '\0' && j + 1 < len; p++) {
        env[j++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    }
    env[j] = '\0';
}

void xm__config_init(xm_config_t *cfg)
{
    cfg->file_path[0] = '\0';
    for (size_t i = 0; i < cfg->count; i++) {
        xm_config_entry_t *e = &cfg->entries[i];
        e->value = e->def != NULL ? strdup(e->def) : NULL;
        e->source = "default";
        char env[96];
        env_name(e->name, env, sizeof(env));
        const char *v = getenv(env);
        if (v != NULL && *v != '\0') {
            xm__config_set(cfg, e->name, v, "env");
        }
    }
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
    return s;
}

xm_status_t xm__config_load_file(xm_config_t *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        xm_log_error("cannot read config file %s: %m", path);
        return XM_ERR_IO;
    }
    snprintf(cfg->file_path, sizeof(cfg->file_path), "%s", path);
    char line[1024];
    int lineno = 0;
    xm_status_t status = XM_OK;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#') {
            continue;
        }
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            xm_log_error("%s:%d: expected 'name = value'", path, lineno);
            status = XM_ERR_INVALID;
            break;
        }
        *eq = '\0';
        char *name = trim(s), *value = trim(eq + 1);
        xm_config_entry_t *e = find(cfg, name);
        if (e == NULL) {
            xm_log_error("%s:%d: unknown setting '%s'", path, lineno, name);
            status = XM_ERR_INVALID;
            break;
        }
        if (strcmp(e->source, "env") == 0 || strcmp(e->source, "flag") == 0) {
            continue; /* the environment and flags outrank the file */
        }
        status = xm__config_set(cfg, name, value, "file");
        if (status != XM_OK) {
            break;
        }
    }
    fclose(f);
    return status;
}

const char *xm__config_get(const xm_config_t *cfg, const char *name)
{
    xm_config_entry_t *e = find(cfg, name);
    return e != NULL ? e->value : NULL;
}

void xm__config_print(const xm_config_t *cfg, FILE *out)
{
    for (size_t i = 0; i < cfg->count; i++) {
        const xm_config_entry_t *e = &cfg->entries[i];
        fprintf(out, "%-14s %-24s %-8s %s\n", e->name, e->value != NULL ? e->value : "(unset)",
                e->source, e->description);
    }
}

void xm__config_cleanup(xm_config_t *cfg)
{
    for (size_t i = 0; i < cfg->count; i++) {
        free(cfg->entries[i].value);
        cfg->entries[i].value = NULL;
    }
}

void xm__config_usage(const xm_config_t *cfg, FILE *out)
{
    fprintf(out, "Options (--NAME VALUE or --NAME=VALUE; also XMEM_<NAME> in the environment, or "
                 "NAME = VALUE in the config file):\n");
    fprintf(out, "  --%-22s %s\n", "config FILE", cfg->default_file != NULL
                     ? "read settings from FILE (default: the file below, when it exists)"
                     : "read settings from FILE");
    if (cfg->default_file != NULL) fprintf(out, "  %-24s %s\n", "", cfg->default_file);
    for (size_t i = 0; i < cfg->count; i++) {
        const xm_config_entry_t *e = &cfg->entries[i];
        fprintf(out, "  --%-22s %s (default: %s)\n", e->name, e->description,
                e->def != NULL && e->def[0] != '\0' ? e->def : "none");
    }
    fprintf(out, "  --%-22s %s\n", "print-config", "print every setting, its value and source, and exit");
    fprintf(out, "  --%-22s %s\n", "version", "print the version and exit");
    fprintf(out, "  --%-22s %s\n", "help, -h", "print this help and exit");
}

/* Levenshtein distance of a and b (short option names only). */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return SIZE_MAX;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++) prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = XM_MIN(sub, XM_MIN(del, ins));
        }
        memcpy(prev, cur, (lb + 1) * sizeof(size_t));
    }
    return prev[lb];
}

/* The option name closest to the misspelt one, or NULL when none is close. */
static const char *nearest_option(const xm_config_t *cfg, const char *name)
{
    static const char *const extra[] = {"config", "help", "version", "print-config"};
    const char *best = NULL;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < cfg->count + XM_ARRAY_LEN(extra); i++) {
        const char *cand = i < cfg->count ? cfg->entries[i].name : extra[i - cfg->count];
        size_t d = edit_distance(name, cand);
        /* a prefix of a longer name is also a good guess ("--pool-s") */
        if (strncmp(cand, name, strlen(name)) == 0 && name[0] != '\0') d = XM_MIN(d, 1);
        if (d < best_d) {
            best_d = d;
            best = cand;
        }
    }
    size_t len = strlen(name);
    return best_d <= (len < 6 ? 1u : len < 12 ? 2u : 3u) ? best : NULL;
}

enum { OPT_CONFIG = 1000, OPT_HELP, OPT_VERSION, OPT_PRINT };

int xm__config_parse_args(xm_config_t *cfg, int argc, char **argv, const char *prog,
                          const char *synopsis)
{
    size_t n = cfg->count;
    struct option *opts = calloc(n + 5, sizeof(*opts));
    /* flags are applied after the config file is read, so they win whatever the order */
    struct pending { size_t idx; const char *value; } *flags = calloc((size_t)argc + 1, sizeof(*flags));
    if (opts == NULL || flags == NULL) {
        free(opts);
        free(flags);
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        opts[i] = (struct option){cfg->entries[i].name, required_argument, NULL, (int)i + 1};
    }
    opts[n] = (struct option){"config", required_argument, NULL, OPT_CONFIG};
    opts[n + 1] = (struct option){"help", no_argument, NULL, OPT_HELP};
    opts[n + 2] = (struct option){"version", no_argument, NULL, OPT_VERSION};
    opts[n + 3] = (struct option){"print-config", no_argument, NULL, OPT_PRINT};
    const char *config = NULL;
    bool print_config = false;
    size_t nflags = 0;
    int rc = -1;
    int saved_opterr = opterr;
    opterr = 0;
    optind = 0; /* reset getopt's state: a process may parse more than once (tests) */
    /* "+": stop at the first non-option (there are none: reported below) */
    for (;;) {
        int last = optind == 0 ? 1 : optind;
        int c = getopt_long(argc, argv, "+:h", opts, NULL);
        if (c == -1) break;
        if (c == '?' || c == ':') {
            const char *arg = argv[last] != NULL ? argv[last] : "";
            if (c == ':' && optopt >= 1 && optopt <= (int)n) {
                fprintf(stderr, "%s: option '--%s' needs a value (see --help)\n", prog,
                        cfg->entries[optopt - 1].name);
            } else if (c == ':' && optopt == OPT_CONFIG) {
                fprintf(stderr, "%s: option '--config' needs a file (see --help)\n", prog);
            } else if (strncmp(arg, "--", 2) == 0) {
                char name[128];
                snprintf(name, sizeof(name), "%s", arg + 2);
                char *eq = strchr(name, '=');
                if (eq != NULL) *eq = '\0';
                const char *hint = nearest_option(cfg, name);
                if (hint != NULL)
                    fprintf(stderr, "%s: unknown option '--%s'; did you mean '--%s'? (see --help)\n",
                            prog, name, hint);
                else
                    fprintf(stderr, "%s: unknown option '--%s' (see --help)\n", prog, name);
            } else {
                fprintf(stderr, "%s: unknown option '%s' (see --help)\n", prog, arg);
            }
            rc = 2;
            goto out;
        }
        switch (c) {
        case OPT_CONFIG:
            config = optarg;
            break;
        case OPT_HELP:
        case 'h':
            fputs(synopsis, stdout);
            xm__config_usage(cfg, stdout);
            rc = 0;
            goto out;
        case OPT_VERSION:
            printf("%s (xmem) %s\n", prog, XM_VERSION_STRING);
            rc = 0;
            goto out;
        case OPT_PRINT:
            print_config = true;
            break;
        default:
            flags[nflags++] = (struct pending){(size_t)c - 1, optarg};
            break;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s' (options are --NAME VALUE; see --help)\n",
                prog, argv[optind]);
        rc = 2;
        goto out;
    }
    /* a file named on the command line must exist; the default one may be absent */
    if (config != NULL) {
        if (xm__config_load_file(cfg, config) != XM_OK) {
            rc = 2;
            goto out;
        }
    } else if (cfg->default_file != NULL && access(cfg->default_file, F_OK) == 0) {
        if (xm__config_load_file(cfg, cfg->default_file) != XM_OK) {
            rc = 2;
            goto out;
        }
    }
    for (size_t i = 0; i < nflags; i++) {
        if (xm__config_set(cfg, cfg->entries[flags[i].idx].name, flags[i].value, "flag") != XM_OK) {
            fprintf(stderr, "%s: out of memory\n", prog);
            rc = 1;
            goto out;
        }
    }
    if (print_config) {
        xm__config_print(cfg, stdout);
        rc = 0;
    }
out:
    opterr = saved_opterr;
    optind = 0;
    free(opts);
    free(flags);
    return rc;
}

/* Where a setting's value came from, for messages: "--name", "XMEM_NAME", "FILE", "default". */
const char *xm__config_origin(const xm_config_t *cfg, const char *name, char *buf, size_t len)
{
    xm_config_entry_t *e = find(cfg, name);
    if (e == NULL || strcmp(e->source, "default") == 0) {
        snprintf(buf, len, "the default");
    } else if (strcmp(e->source, "flag") == 0) {
        snprintf(buf, len, "--%s", name);
    } else if (strcmp(e->source, "env") == 0) {
        env_name(name, buf, len);
    } else if (strcmp(e->source, "file") == 0) {
        snprintf(buf, len, "%s", cfg->file_path[0] != '\0' ? cfg->file_path : "the config file");
    } else {
        snprintf(buf, len, "%s", e->source);
    }
    return buf;
}

/* "PROG: NAME = 'VALUE' (from ORIGIN): WHAT" on stderr. */
static void bad_value(const xm_config_t *cfg, const char *prog, const char *name,
                      const char *text, const char *what)
{
    char origin[PATH_MAX + 32];
    fprintf(stderr, "%s: %s = '%s' (from %s): %s\n", prog, name, text != NULL ? text : "",
            xm__config_origin(cfg, name, origin, sizeof(origin)), what);
}

int xm__config_get_u32(const xm_config_t *cfg, const char *prog, const char *name, uint32_t *out)
{
    const char *text = xm__config_get(cfg, name);
    char *end;
    errno = 0;
    unsigned long long v = text != NULL ? strtoull(text, &end, 10) : 0;
    if (text == NULL || text[0] == '\0' || !isdigit((unsigned char)text[0]) || errno != 0 ||
        *end != '\0' || v > UINT32_MAX) {
        bad_value(cfg, prog, name, text, "expected a whole number from 0 to 4294967295");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

int xm__config_get_size(const xm_config_t *cfg, const char *prog, const char *name, uint64_t *out)
{
    const char *text = xm__config_get(cfg, name);
    uint64_t v;
    if (text == NULL || xm__parse_size(text, &v) != XM_OK) {
        bad_value(cfg, prog, name, text, "expected a size such as 4096, 64K, 2M or 1.5G");
        return -1;
    }
    *out = v;
    return 0;
}

int xm__config_get_hostport(const xm_config_t *cfg, const char *prog, const char *name,
                            char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *text = xm__config_get(cfg, name);
    if (text == NULL || xm__parse_hostport(text, host, hostlen, port, portlen) != XM_OK) {
        bad_value(cfg, prog, name, text, "expected HOST:PORT (or [IPv6]:PORT)");
        return -1;
    }
    return 0;
}
