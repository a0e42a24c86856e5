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
    "  region stat ID|NAME                   describe a region\n"
    "  region rm ID|NAME                     destroy a region (owner only)\n"
    "  region copy ID|NAME --to HOST:PORT[:TARGET] [--offset N] [--chunk SIZE]\n"
    "                                        copy appliance to appliance (docs/region-copy.md)\n"
    "  region snapshot|clone ID|NAME [NEW]  copy-on-write copy on the appliance: read-only\n"
    "                                        (snapshot) or writable (clone); prints its id\n"
    "  region grant ID|NAME --tenant T [--read-only]\n"
    "                                        let tenant T open the region (a global\n"
    "                                        --tenant goes before the command)\n"
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
    "  down                                  stop them"
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
    "Sizes take K, M, G, T suffixes (powers of 1024). Every command takes --help.\n";

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

const char *cli_take(cli_t *cli, const char *name)
{
    for (int i = 0; i < cli->argc; i++) {
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
    for (int i = 0; i < cli->argc; i++) {
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
            fprintf(stderr, "xmem: unexpected argument '%s' (see --help)\n", cli->argv[i]);
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
    if (cli->argc != 2 || strcmp(cli->argv[0], "new") != 0) {
        fprintf(stderr, "usage: xmem secret new PATH\n");
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
        return cli_fail("secret", "cannot create %s: %s", path, strerror(errno));
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

static const char *tenants_file;

static int cmd_tenant(cli_t *cli)
{
    const char *secret = cli->conn.secret_file != NULL ? cli->conn.secret_file
                                                       : getenv("XMEM_SECRET_FILE");
    const char *reg = tenants_file != NULL ? tenants_file : getenv("XMEM_TENANTS_FILE");
    char why[512] = "";
    xm_status_t status;
    if (cli->argc >= 2 && strcmp(cli->argv[0], "add") == 0) {
        const char *name = cli->argv[1], *out = NULL;
        char def[300];
        for (int i = 2; i + 1 < cli->argc; i += 2) {
            if (strcmp(cli->argv[i], "--out") == 0) out = cli->argv[i + 1];
        }
        if ((cli->argc - 2) % 2 != 0 || (cli->argc > 2 && out == NULL)) {
            fprintf(stderr, "usage: xmem tenant add NAME [--out FILE]\n");
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
    struct { const char *name, *env, *def, *desc; } rows[] = {
        {"appliance", "XMEM_APPLIANCE", "127.0.0.1:7400", "appliance control address"},
        {"secret-file", "XMEM_SECRET_FILE", "(none)", "cluster secret file"},
        {"tenant", "XMEM_TENANT", "(user name)", "who you are to the appliance"},
        {"provider", "XMEM_PROVIDER", "(appliance's)", "libfabric provider: tcp (on an appliance's host the local transport, XMEM_TRANSPORT)"},
        {"timeout-ms", "XMEM_TIMEOUT_MS", "5000", "bound on every call"},
        {"log-level", "XMEM_LOG_LEVEL", "warn", "error, warn, info or debug"},
    };
    const char *given[] = {cli->conn.appliance, cli->conn.secret_file, cli->conn.tenant,
                           cli->conn.provider, NULL, NULL};
    char tbuf[16];
    if (cli->conn.timeout_ms != 0) {
        snprintf(tbuf, sizeof(tbuf), "%u", cli->conn.timeout_ms);
        given[4] = tbuf;
    }
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *v = given[i], *src = "flag";
        if (v == NULL) { v = getenv(rows[i].env); src = "env"; }
        if (v == NULL || *v == '\0') { v = rows[i].def; src = "default"; }
        if (cli->json) {
            printf("%s{\"name\":\"%s\",\"value\":\"%s\",\"source\":\"%s\"}%s", i == 0 ? "[" : "",
                   rows[i].name, v, src, i + 1 < sizeof(rows) / sizeof(rows[0]) ? "," : "]\n");
        } else {
            printf("%-12s %-22s %-8s %s (%s)\n", rows[i].name, v, src, rows[i].desc, rows[i].env);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    /* libfabric's rxm zeroes this many 16 KiB receive buffers per client context (87 MB by
     * default, 36 MB with 16); set before any thread, unless the user chose (README) */
    setenv("FI_OFI_RXM_MSG_RX_SIZE", "16", 0);
    cli_t cli = {.conn = XM_CONNECT_OPTS_INIT};
    char **rest = calloc((size_t)argc + 1, sizeof(char *));
    int nrest = 0;
    bool help = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        /* after "region grant", --tenant names the grantee, not who we are */
        bool grant = nrest >= 2 && strcmp(rest[0], "region") == 0 && strcmp(rest[1], "grant") == 0;
        if (strcmp(a, "--appliance") == 0) slot = &cli.conn.appliance;
        else if (strcmp(a, "--secret-file") == 0) slot = &cli.conn.secret_file;
        else if (strcmp(a, "--tenant") == 0 && !grant) slot = &cli.conn.tenant;
        else if (strcmp(a, "--provider") == 0) slot = &cli.conn.provider;
        else if (strcmp(a, "--manager") == 0) slot = &cli.conn.manager;
        else if (strcmp(a, "--tenants") == 0) slot = &tenants_file;
        if (slot != NULL || strcmp(a, "--timeout-ms") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "xmem: %s needs a value\n", a);
                return 2;
            }
            if (slot != NULL) *slot = argv[++i];
            else cli.conn.timeout_ms = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--") == 0) {
            /* what follows is a program's command line (xmem run): no global options in it */
            while (i < argc) rest[nrest++] = argv[i++];
        } else if (strcmp(a, "--json") == 0) {
            cli.json = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            help = true;
        } else {
            rest[nrest++] = argv[i];
        }
    }
    if (nrest == 0) {
        fputs(usage_text, help ? stdout : stderr);
        free(rest);
        return help ? 0 : 2;
    }
    static const struct { const char *name; int (*run)(cli_t *); } cmds[] = {
        {"secret", cmd_secret}, {"tenant", cmd_tenant}, {"region", cmd_region}, {"put", cmd_put},   {"get", cmd_get},
        {"stat", cmd_stat},     {"bench", cmd_bench},   {"config", cmd_config},
        {"appliances", cmd_appliances}, {"alloc", cmd_alloc}, {"ls", cmd_ls}, {"free", cmd_free},
        {"scrub", cmd_scrub},
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
        if (help) {
            /* every command's help is the relevant part of the usage */
            printf("%s", usage_text);
            rc = 0;
        } else {
            rc = cmds[i].run(&cli);
        }
    }
    if (!found) fprintf(stderr, "xmem: unknown command '%s' (see xmem --help)\n", cmd);
    free(rest);
    return rc;
}
