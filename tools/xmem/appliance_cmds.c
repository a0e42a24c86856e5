/* xmem appliance drain | rm: moving parts off an appliance before maintenance, and forgetting
 * an appliance that is gone (docs/resilience.md, "Rebuild"). The cluster's administrator's
 * commands: they need the cluster secret (--secret-file) and a manager. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char usage[] =
    "usage: xmem appliance drain HOST:PORT [--stop] [--no-wait] [--json]\n"
    "       xmem appliance rm HOST:PORT\n"
    "drain: the manager places nothing new on the appliance and moves the parts of replicate\n"
    "  allocations elsewhere, appliance to appliance; waits until they are moved (--no-wait:\n"
    "  returns at once) and says how many parts of single, stripe and ec allocations stay\n"
    "  (a drain does not move those). --stop: the appliance takes new parts again.\n"
    "rm: forget an appliance that is down and holds no parts (refused, naming an allocation,\n"
    "  while parts remain).\n"
    "HOST:PORT is the appliance's control address as `xmem appliances` lists it. Both need the\n"
    "cluster secret (--secret-file) and --manager.\n"
    "example: xmem --manager 10.0.0.1:7300 --secret-file /etc/xmem/secret appliance drain 10.0.0.7:7400\n";

static int drain(cli_t *cli, xm_ctx_h ctx, const char *addr, bool stop, bool nowait)
{
    uint32_t moving = 0, unmovable = 0;
    xm_status_t s = xm_appliance_drain(ctx, addr, stop, &moving, &unmovable);
    if (s != XM_OK) return cli_fail_ctx(ctx, "appliance drain", s);
    cli_progress_t prog = {0};
    uint32_t first = moving;
    while (!stop && !nowait && moving > 0) {
        cli_progress_step(&prog, "drain", "parts", first - (moving < first ? moving : first), first);
        usleep(200000);
        s = xm_appliance_drain(ctx, addr, false, &moving, &unmovable);
        if (s != XM_OK) {
            cli_progress_end(&prog);
            return cli_fail_ctx(ctx, "appliance drain", s);
        }
        if (moving > first) first = moving;
    }
    cli_progress_end(&prog);
    if (cli->json) {
        cli_json_print(json_pack("{s:s, s:b, s:i, s:i}", "appliance", addr, "draining", !stop,
                                 "moving", (int)moving, "unmovable", (int)unmovable));
    } else if (stop) {
        printf("appliance %s takes new parts again\n", addr);
    } else if (moving > 0) {
        printf("appliance %s draining: %u replicate parts being moved\n", addr, moving);
    } else {
        printf("appliance %s drained: no replicate part left on it", addr);
        if (unmovable > 0) {
            printf("; %u parts of single, stripe or ec allocations stay (a drain does not move "
                   "them: free or copy those allocations first)", unmovable);
        }
        printf("\n");
    }
    xm_disconnect(ctx);
    return 0;
}

int cmd_appliance(cli_t *cli)
{
    bool stop = cli_take_flag(cli, "stop"), nowait = cli_take_flag(cli, "no-wait");
    if (cli->argc < 1 || strcmp(cli->argv[0], "--help") == 0 || strcmp(cli->argv[0], "-h") == 0) {
        fputs(usage, cli->argc < 1 ? stderr : stdout);
        return cli->argc < 1 ? 2 : 0;
    }
    const char *sub = cli->argv[0];
    bool is_drain = strcmp(sub, "drain") == 0, is_rm = strcmp(sub, "rm") == 0;
    if (!is_drain && !is_rm) {
        fprintf(stderr, "xmem: appliance: unknown subcommand '%s'\n%s", sub, usage);
        return 2;
    }
    if (cli->argc != 2) {
        fprintf(stderr, "xmem: appliance %s: give one appliance, HOST:PORT\n%s", sub, usage);
        return 2;
    }
    if (is_rm && (stop || nowait)) {
        fprintf(stderr, "xmem: appliance rm takes no --stop or --no-wait\n");
        return 2;
    }
    const char *addr = cli->argv[1];
    if (!cli_has_manager(cli)) return cli_fail("appliance", "needs a manager (--manager or XMEM_MANAGER)");
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    if (is_drain) return drain(cli, ctx, addr, stop, nowait);
    xm_status_t s = xm_appliance_remove(ctx, addr);
    if (s != XM_OK) return cli_fail_ctx(ctx, "appliance rm", s);
    if (cli->json) cli_json_print(json_pack("{s:s, s:b}", "appliance", addr, "removed", 1));
    else printf("appliance %s removed from the manager's registry\n", addr);
    xm_disconnect(ctx);
    return 0;
}
