/* xmem: the command-line tool. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xmem/tenant.h>

#include "cli.h"

static const char usage_text[] =
    "usage: xmem [GLOBAL OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  secret new PATH                       write a fresh cluster secret (mode 0600)\n"
    "  tenant add NAME [--out FILE]          issue NAME a credential (default ./NAME.cred);\n"
    "                                        needs the cluster secret (--secret-file)\n"
    "  tenant ls | tenant rm NAME            list tenants / revoke NAME's credentials\n"
    "  region create --size SIZE [--name N]  create a region, print its id\n"
    "  region create --file PATH [--read-only] [NAME]  expose a file on the appliance's host\n"
    "  region sync ID|NAME [--offset N] [--length N]   make written data durable (file regions)\n"
    "  region ls                             list regions you own or were granted\n"
    "  region stat ID|NAME                   describe a region and its grants\n"
    "  region rm ID|NAME                     destroy a region (owner only)\n"
    "  region copy ID|NAME --to HOST:PORT[:TARGET] [--offset N] [--chunk SIZE]\n"
    "                                        copy appliance to appliance (docs/region-copy.md)\n"
    "  region snapshot|clone ID|NAME [NEW]  copy-on-write copy on the appliance: read-only\n"
    "                                        (snapshot) or writable (clone); prints its id\n"
    "  region grant ID|NAME --tenant T [--read-only]\n"
    "                                        let tenant T open the region (a global\n"
    "                                        --tenant goes before the command)\n"
    "  region revoke ID|NAME --tenant T      remove T's grant; T's open handles stop working\n"
    "  put ID|NAME [--offset N]              copy stdin into the region\n"
    "  get ID|NAME [--offset N] [--length N] copy the region to stdout\n"
    "  stat                                  the appliance's pool\n"
    "  bench [--sizes LIST] [--iters N]      latency and bandwidth vs raw TCP\n"
    "  bench map [--size 256M] [--fetch SIZE] mapped memory: fault latency, workloads vs local\n"
    "  config                                the client settings in force\n"
    "  run [--heap SIZE] [--local SIZE] [--policy P] [--stats] -- CMD ARGS...\n"
    "                                        run an unmodified program with its heap on\n"
    "                                        external memory, at most --local of it local\n"
    "\n"
    "With a manager (--manager or XMEM_MANAGER):\n"
    "  appliances                            appliances: state, domain, capacity, use\n"
    "  alloc --size SIZE [--policy P] [--name N]\n"
    "                                        allocate (P: single, stripe:N[:CHUNK]); print the id\n"
    "  ls                                    allocations you own or were granted, with state\n"
    "  free ID|NAME                          free an allocation (owner only)\n"
    "  scrub ID|NAME                         check a replicate/ec allocation whole, repair what disagrees\n"
    "  put / get ID|NAME ...                 as above, on an allocation\n"
    "  up [--appliances N] [--pool SIZE]     start a local manager and N appliances in the\n"
    "                                        background (state in $XMEM_RUN_DIR or /tmp/xmem-run-UID)\n"
    "                                        (use as: eval \"$(xmem up)\"; it prints the export lines)\n"
    "  down                                  stop them\n"
    "  appliance drain|rm HOST:PORT          move parts off an appliance / forget a gone one\n"
    "                                        (the cluster's administrator)\n"
    "\n"
    "Global options:\n"
    "  --appliance HOST:PORT   or XMEM_APPLIANCE (default 127.0.0.1:7400)\n"
    "  --manager HOST:PORT     or XMEM_MANAGER: use allocations through a manager\n"
    "  --secret-file PATH      or XMEM_SECRET_FILE: your tenant credential (or, for\n"
    "                          administrators, the cluster secret)\n"
    "  --tenants PATH          or XMEM_TENANTS_FILE: the tenant registry (tenant commands;\n"
    "                          default SECRET.tenants)\n"
    "  --tenant NAME           or XMEM_TENANT: check the credential is NAME's\n"
    "  --provider tcp          or XMEM_PROVIDER (default: what the appliance serves)\n"
    "  --timeout-ms N          or XMEM_TIMEOUT_MS (default 5000)\n"
    "  --json                  machine-readable output for tables\n"
    "  --version               the version of xmem and libxmem\n"
    "Sizes take K, M, G, T suffixes (powers of 1024). Every command takes --help\n"
    "(xmem region create --help); options take --opt value or --opt=value.\n";

int cli_fail(const char *what, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "xmem: %s: ", what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

/* The library logs why a connect failed and keeps no context to ask; catch that log line
 * so the user gets one line with the real reason (a missing secret file is not "wrong secret"). */
int cli_connect(cli_t *cli, xm_ctx_h *ctx_p)
{
    xm_status_t s = xm_connect(&cli->conn, ctx_p);
    if (s != XM_OK) {
        return cli_fail("connect", "%s", xm_last_error(NULL));
    }
    return 0;
}

int cli_fail_ctx(xm_ctx_h ctx, const char *what, xm_status_t s)
{
    /* the library's reason is the specific one; the status word only when there is none */
    const char *detail = xm_last_error(ctx);
    int rc = cli_fail(what, "%s", detail != NULL && detail[0] != '\0' ? detail : xm_status_str(s));
    if (ctx != NULL) xm_disconnect(ctx);
    return rc;
}

bool cli_has_manager(const cli_t *cli)
{
    if (cli->conn.manager != NULL && cli->conn.manager[0] != '\0') return true;
    const char *env = getenv("XMEM_MANAGER");
    return cli->conn.appliance == NULL && env != NULL && env[0] != '\0';
}

/* "--name" for "name" or "--name" */
static const char *flag_name(const char *name, char *buf, size_t len)
{
    if (name[0] == '-') return name;
    snprintf(buf, len, "--%s", name);
    return buf;
}

const char *cli_take(cli_t *cli, const char *name)
{
    char fb[64];
    name = flag_name(name, fb, sizeof(fb));
    size_t nl = strlen(name);
    for (int i = 0; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], "--") == 0) break; /* what follows is not ours (xmem run) */
        if (strncmp(cli->argv[i], name, nl) == 0 && cli->argv[i][nl] == '=') {
            /* --name=value */
            const char *v = cli->argv[i] + nl + 1;
            memmove(&cli->argv[i], &cli->argv[i + 1], (size_t)(cli->argc - i - 1) * sizeof(char *));
            cli->argc--;
            return v;
        }
        if (strcmp(cli->argv[i], name) == 0) {
            if (i + 1 >= cli->argc) {
                fprintf(stderr, "xmem: %s needs a value\n", name);
                exit(2);
            }
            const char *v = cli->argv[i + 1];
            memmove(&cli->argv[i], &cli->argv[i + 2], (size_t)(cli->argc - i - 2) * sizeof(char *));
            cli->argc -= 2;
            return v;
        }
    }
    return NULL;
}

bool cli_take_flag(cli_t *cli, const char *name)
{
    char fb[64];
    name = flag_name(name, fb, sizeof(fb));
    for (int i = 0; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], "--") == 0) break;
        if (strcmp(cli->argv[i], name) == 0) {
            memmove(&cli->argv[i], &cli->argv[i + 1], (size_t)(cli->argc - i - 1) * sizeof(char *));
            cli->argc--;
            return true;
        }
    }
    return false;
}

int cli_no_more(cli_t *cli, int keep)
{
    for (int i = 0; i < cli->argc; i++) {
        if (cli->argv[i][0] == '-' || i >= keep) {
            const char *c = cli->cmd != NULL ? cli->cmd : "";
            fprintf(stderr, "xmem: %s '%s'; see xmem %s%s--help\n",
                    cli->argv[i][0] == '-' ? "unknown option" : "unexpected argument",
                    cli->argv[i], c, c[0] ? " " : "");
            return 2;
        }
    }
    return 0;
}

void cli_ref(const char *text, uint64_t *id_p, const char **name_p)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (text[0] != '\0' && text[0] != '-' && *end == '\0' && errno == 0 && v != 0) {
        *id_p = v;
        *name_p = NULL;
    } else {
        *id_p = 0;
        *name_p = text;
    }
}

const char *cli_size(uint64_t size, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)size;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%llu B", (unsigned long long)size);
    else snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

static int cmd_secret(cli_t *cli)
{
    if (cli_parse(cli, NULL) != 0) return 2;
    if (cli->argc != 2 || strcmp(cli->argv[0], "new") != 0) {
        fprintf(stderr, "usage: xmem secret new PATH (see xmem secret --help)\n");
        return 2;
    }
    const char *path = cli->argv[1];
    unsigned char raw[32];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
        return cli_fail("secret", "no randomness: %s", strerror(errno));
    }
    char hex[sizeof(raw) * 2 + 2];
    for (size_t i = 0; i < sizeof(raw); i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    strcat(hex, "\n");
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR) {
            /* name the directory that is missing, not only the file */
            char dir[4096];
            snprintf(dir, sizeof(dir), "%s", path);
            char *slash = strrchr(dir, '/');
            if (slash == dir) slash[1] = '\0';
            else if (slash != NULL) *slash = '\0';
            else snprintf(dir, sizeof(dir), ".");
            return cli_fail("secret", "cannot create %s: directory %s does not exist (create it "
                            "first, mode 0700)", path, dir);
        }
        if (e == EEXIST)
            return cli_fail("secret", "%s exists: not overwritten (remove it first, or pick "
                            "another path)", path);
        return cli_fail("secret", "cannot create %s: %s", path, strerror(e));
    }
    ssize_t n = write(fd, hex, strlen(hex));
    if (n != (ssize_t)strlen(hex) || fsync(fd) != 0) {
        close(fd);
        unlink(path);
        return cli_fail("secret", "cannot write %s: %s", path, strerror(errno));
    }
    close(fd);
    printf("%s\n", path);
    return 0;
}

static int cmd_tenant(cli_t *cli)
{
    const char *secret = cli->conn.secret_file != NULL ? cli->conn.secret_file
                                                       : getenv("XMEM_SECRET_FILE");
    const char *out = NULL;
    const cli_opt_t opts[] = {{"out", &out, NULL}, {NULL}};
    if (cli_parse(cli, opts) != 0) return 2;
    secret = cli->conn.secret_file != NULL ? cli->conn.secret_file : getenv("XMEM_SECRET_FILE");
    const char *reg = cli_tenants_file != NULL ? cli_tenants_file : getenv("XMEM_TENANTS_FILE");
    char why[512] = "";
    xm_status_t status;
    if (cli->argc >= 2 && strcmp(cli->argv[0], "add") == 0) {
        const char *name = cli->argv[1];
        char def[300];
        if (cli->argc != 2) {
            fprintf(stderr, "usage: xmem tenant add NAME [--out FILE] (see xmem tenant --help)\n");
            return 2;
        }
        if (out == NULL) {
            snprintf(def, sizeof(def), "%s.cred", name);
            out = def;
        }
        status = xm_tenant_add(secret, reg, name, out, why, sizeof(why));
        if (status != XM_OK) return cli_fail("tenant add", "%s", why);
        printf("%s\n", out);
        return 0;
    }
    if (cli->argc == 2 && strcmp(cli->argv[0], "rm") == 0) {
        status = xm_tenant_rm(secret, reg, cli->argv[1], why, sizeof(why));
        if (status != XM_OK) return cli_fail("tenant rm", "%s", why);
        return 0;
    }
    if (cli->argc == 1 && strcmp(cli->argv[0], "ls") == 0) {
        char *list;
        status = xm_tenant_list(secret, reg, &list, why, sizeof(why));
        if (status != XM_OK) return cli_fail("tenant ls", "%s", why);
        fputs(list, stdout);
        free(list);
        return 0;
    }
    fprintf(stderr, "usage: xmem tenant add NAME [--out FILE] | tenant ls | tenant rm NAME\n");
    return 2;
}

static int cmd_config(cli_t *cli)
{
    if (cli_parse(cli, NULL) != 0 || cli_no_more(cli, 0) != 0) return 2;
    struct { const char *name, *env, *def, *desc; } rows[] = {
        {"appliance", "XMEM_APPLIANCE", "127.0.0.1:7400", "appliance control address"},
        {"manager", "XMEM_MANAGER", "(none)", "manager address: allocations instead of regions"},
        {"secret-file", "XMEM_SECRET_FILE", "(none)", "cluster secret file"},
        {"tenant", "XMEM_TENANT", "(user name)", "who you are to the appliance"},
        {"provider", "XMEM_PROVIDER", "(appliance's)", "libfabric provider: tcp (on an appliance's host the local transport, XMEM_TRANSPORT)"},
        {"timeout-ms", "XMEM_TIMEOUT_MS", "5000", "bound on every call"},
        {"log-level", "XMEM_LOG_LEVEL", "warn", "error, warn, info or debug"},
    };
    const char *given[] = {cli->conn.appliance, cli->conn.manager, cli->conn.secret_file,
                           cli->conn.tenant, cli->conn.provider, NULL, NULL};
    char tbuf[16];
    const char *tenv = getenv("XMEM_TIMEOUT_MS");
    uint64_t tv;
    if (cli->conn.timeout_ms == 0 && tenv != NULL && tenv[0] != '\0' &&
        cli_u64(cli, "XMEM_TIMEOUT_MS", tenv, 1, 86400000, &tv) != 0)
        return 1;
    if (cli->conn.timeout_ms != 0) {
        snprintf(tbuf, sizeof(tbuf), "%u", cli->conn.timeout_ms);
        given[5] = tbuf;
    }
    json_t *all = cli->json ? json_array() : NULL;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *v = given[i], *src = "flag";
        if (v == NULL) { v = getenv(rows[i].env); src = "env"; }
        if (v == NULL || *v == '\0') { v = rows[i].def; src = "default"; }
        if (cli->json) {
            json_array_append_new(all, json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", rows[i].name,
                                                 "value", v, "source", src, "env", rows[i].env,
                                                 "description", rows[i].desc));
        } else {
            printf("%-12s %-22s %-8s %s (%s)\n", rows[i].name, v, src, rows[i].desc, rows[i].env);
        }
    }
    return cli->json ? cli_json_print(all) : 0;
}

int main(int argc, char **argv)
{
    /* libfabric's rxm zeroes this many 16 KiB receive buffers per client context (87 MB by
     * default, 36 MB with 16); set before any thread, unless the user chose (README) */
    setenv("FI_OFI_RXM_MSG_RX_SIZE", "16", 0);
    cli_t cli = {.conn = XM_CONNECT_OPTS_INIT};
    char **rest = calloc((size_t)argc + 1, sizeof(char *));
    /* global options before the command (getopt_long; the command parses what follows it) */
    int nrest = argc - 1;
    for (int i = 1; i < argc; i++) rest[i - 1] = argv[i];
    if (cli_parse_globals(&cli, &nrest, rest) != 0) {
        free(rest);
        return 2;
    }
    if (cli.version) {
        printf("xmem %s (libxmem %s)\n", XM_VERSION_STRING, xm_version(NULL));
        free(rest);
        return 0;
    }
    /* --help or -h after the command (before a "--"): that command's help */
    bool help = cli.help;
    for (int i = 0; i < nrest && strcmp(rest[i], "--") != 0; i++)
        help |= strcmp(rest[i], "--help") == 0 || strcmp(rest[i], "-h") == 0;
    if (nrest == 0) {
        fputs(usage_text, help ? stdout : stderr);
        free(rest);
        return help ? 0 : 2;
    }
    static const struct { const char *name; int (*run)(cli_t *); } cmds[] = {
        {"secret", cmd_secret}, {"tenant", cmd_tenant}, {"region", cmd_region}, {"put", cmd_put},   {"get", cmd_get},
        {"stat", cmd_stat},     {"bench", cmd_bench},   {"config", cmd_config},
        {"appliances", cmd_appliances}, {"alloc", cmd_alloc}, {"ls", cmd_ls}, {"free", cmd_free},
        {"scrub", cmd_scrub},   {"appliance", cmd_appliance},
        {"up", cmd_up},         {"down", cmd_down},
        {"bench map", cmd_bench_map},
        {"run", cmd_run},
    };
    const char *cmd = rest[0];
    cli.argc = nrest - 1;
    cli.argv = rest + 1;
    if (strcmp(cmd, "bench") == 0 && nrest > 1 && strcmp(rest[1], "map") == 0) cmd = "bench map", cli.argc--, cli.argv++;
    int rc = 2;
    bool found = false;
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]) && !found; i++) {
        if (strcmp(cmd, cmds[i].name) != 0) continue;
        found = true;
        /* "region create": the subcommand's help when it has one */
        char words[64];
        snprintf(words, sizeof(words), "%s", cmd);
        if (cli.argc > 0 && cli.argv[0][0] != '-') {
            char two[64];
            snprintf(two, sizeof(two), "%s %s", cmd, cli.argv[0]);
            if (cli_has_help(two)) snprintf(words, sizeof(words), "%s", two);
        }
        cli.cmd = words;
        if (help && !cli_has_help(words) && !cli_has_help(cmd)) {
            /* a command with its own help text prints it */
            rc = cmds[i].run(&cli);
        } else if (help) {
            cli_help(words, usage_text);
            rc = 0;
        } else {
            /* commands that parse with cli_take see no global options */
            bool own = strcmp(cmd, "run") != 0 && strcmp(cmd, "bench map") != 0 && cli_has_help(cmd);
            rc = own || cli_take_globals(&cli, false) == 0 ? cmds[i].run(&cli) : 2;
        }
    }
    if (!found) fprintf(stderr, "xmem: unknown command '%s' (see xmem --help)\n", cmd);
    free(rest);
    return rc;
}
