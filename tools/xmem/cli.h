/* The xmem command: shared option parsing and output helpers. Built only on include/xmem. */
#ifndef XMEM_CLI_H
#define XMEM_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>
#include <xmem/xmem.h>

typedef struct cli {
    xm_connect_opts_t conn;
    bool json;
    bool help;         /* --help or -h was given */
    bool version;      /* --version (before the command) */
    const char *cmd;   /* the command's words, for messages and help: "region create" */
    int argc;          /* arguments left after the command words and global options */
    char **argv;
} cli_t;

/* Print "xmem: <what>: <why>" on stderr; returns 1 (the exit code). */
int cli_fail(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Connect with the global options; prints the reason on failure. */
int cli_connect(cli_t *cli, xm_ctx_h *ctx_p);
/* Print "xmem: <what>: <why>" with the library's reason for s (said once), disconnect ctx
 * (when not NULL); returns 1. */
int cli_fail_ctx(xm_ctx_h ctx, const char *what, xm_status_t s);
/* Is a manager configured (--manager, or XMEM_MANAGER without --appliance)? */
bool cli_has_manager(const cli_t *cli);
/* Value of --name in cli->argv, or NULL; removes it. Exits 2 when the value is missing. */
const char *cli_take(cli_t *cli, const char *name);
bool cli_take_flag(cli_t *cli, const char *name);
/* opts.c: getopt_long parsing. A command's options: value (takes one) or flag (none). */
typedef struct cli_opt {
    const char *name;    /* without the leading -- */
    const char **value;  /* set to the option's value; NULL: the option takes none */
    bool *flag;          /* set when the option is given */
} cli_opt_t;
/* Parse cli->argv with opts (NULL-name terminated) plus the global options, --opt=value and
 * --opt value alike; positional arguments stay in cli->argv, cli->argc their count. Returns 0,
 * or 2 after naming an unknown option or a missing value (and the command's --help). */
int cli_parse(cli_t *cli, const cli_opt_t *opts);
/* Global options before the command (stops at the first positional: the command). */
int cli_parse_globals(cli_t *cli, int *argc_p, char **argv);
/* For commands parsed with cli_take: remove global options (before any "--"). */
int cli_take_globals(cli_t *cli, bool keep_tenant);
/* A whole number in [min, max] or a size (K, M, G, T) >= min; 2 with a message naming what. */
int cli_u64(const cli_t *cli, const char *what, const char *text, uint64_t min, uint64_t max,
            uint64_t *out);
int cli_sz(const cli_t *cli, const char *what, const char *text, uint64_t min, uint64_t *out);
/* Print cmd's help (usage, description, an example) on stdout. */
void cli_help(const char *cmd, const char *usage);
bool cli_has_help(const char *cmd);
extern const char *cli_tenants_file;
/* Dump j compactly on stdout with a newline and drop the reference; 0 or 1. */
int cli_json_print(json_t *j);

/* Progress on stderr, only when stderr is a terminal; zero-initialise. */
typedef struct cli_progress {
    bool init, tty, shown;
    const char *what;
    uint64_t start_ms, last_ms;
} cli_progress_t;
/* done of total bytes (total 0: unknown); silent for the first half second */
void cli_progress(cli_progress_t *p, const char *what, uint64_t done, uint64_t total);
/* step i of n (i == n: done, the line is cleared) */
void cli_progress_step(cli_progress_t *p, const char *what, const char *step, unsigned i, unsigned n);
void cli_progress_end(cli_progress_t *p);

/* Parse "123" as an id, anything else as a name. */
void cli_ref(const char *text, uint64_t *id_p, const char **name_p);
const char *cli_size(uint64_t size, char *buf, size_t len);
/* Reject leftover arguments; 0 when none. */
int cli_no_more(cli_t *cli, int keep);

int cmd_region(cli_t *cli);
int cmd_appliance(cli_t *cli); /* appliance_cmds.c: xmem appliance drain | rm */
int cmd_put(cli_t *cli);
int cmd_get(cli_t *cli);
int cmd_stat(cli_t *cli);
int cmd_bench(cli_t *cli);
/* bench_map.c: xmem bench map */
int cmd_bench_map(cli_t *cli);
/* alloc_cmds.c: allocations through a manager, local clusters */
int cmd_appliances(cli_t *cli);
int cmd_alloc(cli_t *cli);
int cmd_ls(cli_t *cli);
int cmd_free(cli_t *cli);
int cmd_scrub(cli_t *cli);
int cmd_up(cli_t *cli);
int cmd_down(cli_t *cli);
/* run_cmd.c: xmem run -- CMD (issue 14) */
int cmd_run(cli_t *cli);

#endif
