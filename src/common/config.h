/* One config table per component: name, default, description. Precedence:
 * defaults < config file < XMEM_<NAME> environment < command-line flags. */
#ifndef XM_CONFIG_H
#define XM_CONFIG_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#include <xmem/status.h>

typedef struct xm_config_entry {
    const char *name;        /* "pool-size"; env XMEM_POOL_SIZE; flag --pool-size */
    const char *def;         /* default value as text, NULL for none */
    const char *description;
    char *value;             /* current value (malloc'd), NULL when unset */
    const char *source;      /* "default", "file", "env", "flag" */
} xm_config_entry_t;

typedef struct xm_config {
    xm_config_entry_t *entries;
    size_t count;
    const char *default_file;   /* read when present and no --config is given; NULL: none */
    char file_path[PATH_MAX];   /* the file settings were read from ("" none), for messages */
} xm_config_t;

/* Fill values from defaults, then env. */
void xm__config_init(xm_config_t *cfg);
/* Read "name = value" lines (# comments); XM_ERR_INVALID on an unknown name or bad line. */
xm_status_t xm__config_load_file(xm_config_t *cfg, const char *path);
/* Set from a flag or elsewhere; XM_ERR_INVALID on an unknown name. */
xm_status_t xm__config_set(xm_config_t *cfg, const char *name, const char *value,
                           const char *source);
const char *xm__config_get(const xm_config_t *cfg, const char *name);
void xm__config_print(const xm_config_t *cfg, FILE *out);
/* A setting as an unsigned 32-bit number; -1 with a line on stderr naming prog, the
 * setting, its value and where the value came from (--flag, XMEM_ variable, config file)
 * when it is not one (empty, signed, too large or trailing junk). */
int xm__config_get_u32(const xm_config_t *cfg, const char *prog, const char *name,
                       uint32_t *out);
/* A size ("64K", "1.5G"), checked and reported like xm__config_get_u32. */
int xm__config_get_size(const xm_config_t *cfg, const char *prog, const char *name,
                        uint64_t *out);
/* HOST:PORT, checked and reported like xm__config_get_u32. */
int xm__config_get_hostport(const xm_config_t *cfg, const char *prog, const char *name,
                            char *host, size_t hostlen, char *port, size_t portlen);
/* Where a setting's value came from: "--name", "XMEM_NAME", the file's path or "the default". */
const char *xm__config_origin(const xm_config_t *cfg, const char *name, char *buf, size_t len);
/* The options of the table as --help shows them. */
void xm__config_usage(const xm_config_t *cfg, FILE *out);
/*
 * A daemon's command line (getopt_long: --name value, --name=value). The config
 * file (--config FILE, which must exist, else cfg->default_file when it exists) is
 * read before the flags are applied, so flags win wherever they stand; --help
 * prints synopsis and the options, --version prog and the version, --print-config
 * the table. Returns -1 to go on, or the exit code (0 after help, version or the
 * table; 2 on a bad argument or file, with a line on stderr naming prog; an
 * unknown option is named as such, with the nearest known one as a hint).
 */
int xm__config_parse_args(xm_config_t *cfg, int argc, char **argv, const char *prog,
                          const char *synopsis);
void xm__config_cleanup(xm_config_t *cfg);

#endif
