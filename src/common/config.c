/* Config table with layered sources. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

void xm__config_init(xm_config_t *cfg)
{
    for (size_t i = 0; i < cfg->count; i++) {
        xm_config_entry_t *e = &cfg->entries[i];
        e->value = e->def != NULL ? strdup(e->def) : NULL;
        e->source = "default";
        char env[96] = "XMEM_";
        size_t j = 5;
        for (const char *p = e->name; *p != '\0' && j + 1 < sizeof(env); p++) {
            env[j++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        }
        env[j] = '\0';
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
        xm_log_error("cannot open config file %s: %m", path);
        return XM_ERR_IO;
    }
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
    fprintf(out, "Options (also XMEM_<NAME> in the environment, or NAME = VALUE in --config):\n");
    for (size_t i = 0; i < cfg->count; i++) {
        const xm_config_entry_t *e = &cfg->entries[i];
        fprintf(out, "  --%-14s %s (default: %s)\n", e->name, e->description,
                e->def != NULL && e->def[0] != '\0' ? e->def : "none");
    }
}

int xm__config_parse_args(xm_config_t *cfg, int argc, char **argv, const char *prog,
                          const char *synopsis)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(synopsis, stdout);
            xm__config_usage(cfg, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc &&
            xm__config_load_file(cfg, argv[i + 1]) != XM_OK) {
            return 2;
        }
    }
    bool print_config = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--print-config") == 0) {
            print_config = true;
            continue;
        }
        if (strncmp(argv[i], "--", 2) != 0 || i + 1 >= argc) {
            fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", prog, argv[i]);
            return 2;
        }
        const char *name = argv[i] + 2;
        if (strcmp(name, "config") != 0 && xm__config_set(cfg, name, argv[i + 1], "flag") != XM_OK) {
            fprintf(stderr, "%s: unknown option '%s' (see --help)\n", prog, argv[i]);
            return 2;
        }
        i++;
    }
    if (print_config) {
        xm__config_print(cfg, stdout);
        return 0;
    }
    return -1;
}

int xm__config_get_u32(const xm_config_t *cfg, const char *prog, const char *name, uint32_t *out)
{
    const char *text = xm__config_get(cfg, name);
    char *end;
    errno = 0;
    unsigned long v = text != NULL ? strtoul(text, &end, 10) : 0;
    if (text == NULL || text[0] == '\0' || text[0] == '-' || errno != 0 || *end != '\0' ||
        v > UINT32_MAX) {
        fprintf(stderr, "%s: --%s: not a number: %s\n", prog, name, text != NULL ? text : "");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}
