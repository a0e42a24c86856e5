/* The xmem command: shared option parsing and output helpers. Built only on include/xmem. */
#ifndef XMEM_CLI_H
#define XMEM_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include <xmem/xmem.h>

typedef struct cli {
    xm_connect_opts_t conn;
    bool json;
    int argc;          /* arguments left after the command words and global options */
    char **argv;
} cli_t;

/* Print "xmem: <what>: <why>" on stderr; returns 1 (the exit code). */
int cli_fail(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Connect with the global options; prints the reason on failure. */
int cli_connect(cli_t *cli, xm_ctx_h *ctx_p);
/* Value of --name in cli->argv, or NULL; removes it. Exits 2 when the value is missing. */
const char *cli_take(cli_t *cli, const char *name);
bool cli_take_flag(cli_t *cli, const char *name);
/* Parse "123" as an id, anything else as a name. */
void cli_ref(const char *text, uint64_t *id_p, const char **name_p);
const char *cli_size(uint64_t size, char *buf, size_t len);
/* Reject leftover arguments; 0 when none. */
int cli_no_more(cli_t *cli, int keep);

int cmd_region(cli_t *cli);
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
