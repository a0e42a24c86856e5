/* The appliance's data endpoint under a flood of messages from a peer that never
 * authenticated: the appliance takes none, so its memory must stay bounded and other
 * clients must keep working (issue 11). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>

#include "harness.h"

/* seconds of flood; XT_FLOOD_S overrides (docs/performance.md runs it for 60) */
static int flood_s(void)
{
    const char *v = getenv("XT_FLOOD_S");
    return v != NULL && atoi(v) > 0 ? atoi(v) : 6;
}
#define MSG_SIZE 16384
/* The old code kept every message: +164 MB for 12,000 messages in 6 s. Now +18-22 MB in
 * 6 s (+23.5 MB under ASan; +31 MB in a CI run that sent 356,000), +28.5 MB in 60 s
 * (docs/performance.md): bounded, but the "a few MB" is not reached yet; this bound
 * catches a return to keeping messages (which would be gigabytes at those counts) without
 * failing on how fast a machine floods. */
#define RSS_GROWTH_MAX (64u << 20)

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    cr_assert(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
    close(fd);
    return ntohs(sin.sin_port);
}

/* The hostile peer: its own libfabric endpoint, messages (untagged and tagged) to the
 * appliance's data address for flood_s() seconds. Exits 0 when it sent something. */
static int flood(const char *provider, const void *addr, size_t addr_len)
{
    struct fi_info *hints = fi_allocinfo(), *info = NULL;
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_MSG | FI_TAGGED;
    hints->domain_attr->mr_mode = 0;
    hints->fabric_attr->prov_name = strdup(provider);
    if (strcmp(provider, "tcp") == 0) hints->addr_format = FI_SOCKADDR_IN;
    if (fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &info) != 0) return 10;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_cq *cq;
    struct fid_av *av;
    struct fid_ep *ep;
    struct fi_cq_attr cq_attr = {.size = 1024, .format = FI_CQ_FORMAT_CONTEXT};
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE};
    if (fi_fabric(info->fabric_attr, &fabric, NULL) != 0 ||
        fi_domain(fabric, info, &domain, NULL) != 0 || fi_cq_open(domain, &cq_attr, &cq, NULL) != 0 ||
        fi_av_open(domain, &av_attr, &av, NULL) != 0 || fi_endpoint(domain, info, &ep, NULL) != 0 ||
        fi_ep_bind(ep, &cq->fid, FI_TRANSMIT | FI_RECV) != 0 || fi_ep_bind(ep, &av->fid, 0) != 0 ||
        fi_enable(ep) != 0) {
        return 11;
    }
    fi_addr_t peer;
    if (fi_av_insert(av, addr, 1, &peer, 0, NULL) != 1) return 12;
    static char buf[MSG_SIZE];
    memset(buf, 0x5a, sizeof(buf));
    uint64_t end = xt_now_ms() + flood_s() * 1000, sent = 0;
    struct fi_cq_entry e[64];
    while (xt_now_ms() < end) {
        ssize_t rc = (sent & 1) ? fi_tsend(ep, buf, sizeof(buf), NULL, peer, sent, NULL)
                                : fi_send(ep, buf, sizeof(buf), NULL, peer, NULL);
        if (rc == 0) sent++;
        fi_cq_read(cq, e, 64);
        if (rc != 0 && rc != -FI_EAGAIN) break; /* refused: the appliance dropped us */
    }
    fprintf(stderr, "flood: %llu messages of %d bytes sent\n", (unsigned long long)sent, MSG_SIZE);
    /* leave without closing, like a crashed or malicious peer */
    return sent > 0 ? 0 : 13;
}

/* A legitimate client's write and read back of a pattern; false on any difference. */
static bool round_trip(xm_region_h r, uint64_t seed)
{
    static uint8_t out[65536], in[65536];
    xt_fill(out, sizeof(out), seed);
    if (xm_write(r, 0, out, sizeof(out)) != XM_OK) return false;
    memset(in, 0, sizeof(in));
    if (xm_read(r, 0, in, sizeof(in)) != XM_OK) return false;
    return memcmp(in, out, sizeof(in)) == 0;
}

static void flood_run(const char *provider, const void *addr, size_t addr_len, xt_appliance_t *a)
{
    xm_ctx_h ctx = xt_connect(a, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    cr_assert(round_trip(r, 1));
    sleep(1);
    size_t before = xt_rss(a->pid);

    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        /* dies with the test, and after its time even when a send never returns */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm((unsigned)flood_s() + 3);
        _exit(flood(provider, addr, addr_len));
    }

    /* other clients keep working during the flood, bytes intact */
    unsigned trips = 0;
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        bool ok = round_trip(r, 100 + trips);
        if (!ok) {
            kill(pid, SIGKILL);
            xt_dump_log(a);
        }
        cr_assert(ok, "round trip %u during the flood failed: %s", trips,
                  xm_last_error(ctx));
        trips++;
        usleep(20000);
    }
    cr_assert((WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
                  (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM),
              "the flooding peer failed (%d)", status);
    sleep(1);
    size_t after = xt_rss(a->pid);
    fprintf(stderr, "%s: appliance RSS %zu -> %zu KiB (+%zd KiB) over a %d s flood; %u round trips\n",
            provider, before >> 10, after >> 10, ((ssize_t)after - (ssize_t)before) / 1024, flood_s(),
            trips);
    cr_assert(trips > 0);
    cr_assert(after < before + RSS_GROWTH_MAX, "appliance RSS grew by %zu KiB under the flood",
              (after - before) >> 10);
    /* and after it */
    cr_assert(round_trip(r, 7));
    xm_region_close(r);
    xm_disconnect(ctx);
}

Test(data_endpoint, tcp_flood_of_messages_is_bounded, .timeout = 120)
{
    uint16_t port = free_port();
    char ports[16];
    snprintf(ports, sizeof(ports), "%u", port);
    xt_appliance_t a;
    xt_opts_t o = {.extra = {"--data-port", ports}};
    xt_start(&a, &o);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    flood_run("tcp", &sin, sizeof(sin), &a);
    cr_assert_eq(xt_stop(&a), 0);
    xt_cleanup(&a);
}
