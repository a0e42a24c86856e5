/* The transport's provider table: known names, capabilities, and an unknown provider refused
 * with a message naming the known ones (before anything touches the network). */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <xmem/xmem.h>

#include "../../src/xfer/xfer.h"

Test(xfer, providers_listed_with_their_capabilities)
{
    const char *names = net_provider_names();
    cr_assert(strstr(names, "tcp") != NULL, "known providers: '%s'", names);
    uint32_t caps = 0xffffffffu;
    cr_assert(net_provider_caps("tcp", &caps));
    cr_expect(caps & NET_CAP_IP_ADDR, "tcp addresses are IPv4 socket addresses");
    cr_expect(!(caps & NET_CAP_SAME_HOST), "tcp reaches other hosts");
    caps = 0xffffffffu;
    cr_assert(!net_provider_caps("verbs-not-built", &caps));
    cr_expect_eq(caps, 0xffffffffu, "output written for an unknown provider");
    cr_assert(!net_provider_caps("", NULL));
    cr_assert(!net_provider_caps(NULL, NULL));
}

Test(xfer, unknown_provider_refused_naming_the_known_ones, .init = cr_redirect_stderr)
{
    net_fabric_t fab;
    memset(&fab, 0x5a, sizeof(fab));
    cr_assert_eq(net_fabric_open("tcpx", NET_ROLE_TARGET, "127.0.0.1", "0", &fab), XM_ERR_INVALID);
    cr_expect_eq(fab.ep, NULL, "no endpoint after a refusal");
    cr_expect_eq(fab.wait_fd, -1);
    net_fabric_close(&fab); /* harmless on a refused open */
    fflush(stderr);
    FILE *err = cr_get_redirected_stderr();
    char log[1024] = "";
    size_t n = fread(log, 1, sizeof(log) - 1, err);
    log[n] = '\0';
    char want[256];
    snprintf(want, sizeof(want), "unknown provider 'tcpx' (known: %s)", net_provider_names());
    cr_expect(strstr(log, want) != NULL, "log says '%s'; expected it to contain '%s'", log, want);
}
