/* Service integration: log destination from config, journald, sd_notify. */
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#ifdef XMEM_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#endif

#include "../common/common.h"
#include "ops.h"

#ifdef XMEM_HAVE_SYSTEMD
/* journald gets the message with its priority and our identifier as fields */
static void journal_sink(xm_log_level_t level, const char *msg)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", prio[level], "SYSLOG_IDENTIFIER=%s",
                    xm__log_ident(), NULL);
}
#endif

int xm__ops_log_setup(const xm_config_t *cfg, const char *prog)
{
    xm_log_level_t level;
    const char *lv = xm__config_get(cfg, "log-level");
    char origin[PATH_MAX + 32];
    if (!xm__log_parse_level(lv, &level)) {
        fprintf(stderr, "%s: log-level = '%s' (from %s): use error, warn, info or debug\n", prog,
                lv != NULL ? lv : "", xm__config_origin(cfg, "log-level", origin, sizeof(origin)));
        return 2;
    }
    xm__log_set_level(level);
    const char *to = xm__config_get(cfg, "log");
    const char *file = xm__config_get(cfg, "log-file");
    bool has_file = file != NULL && file[0] != '\0';
    if (to == NULL || to[0] == '\0' || strcmp(to, "stderr") == 0 || strcmp(to, "file") == 0) {
        if (!has_file) return 0;
        if (xm__log_set_target(XM_LOG_TO_FILE, file, NULL) != XM_OK) {
            fprintf(stderr, "%s: log-file = '%s' (from %s): cannot open it for appending: %m\n",
                    prog, file, xm__config_origin(cfg, "log-file", origin, sizeof(origin)));
            return 2;
        }
        return 0;
    }
    if (has_file) {
        fprintf(stderr, "%s: log = %s and log-file = %s: choose one destination\n", prog, to, file);
        return 2;
    }
    if (strcmp(to, "syslog") == 0) {
        xm__log_set_target(XM_LOG_TO_SYSLOG, NULL, NULL);
        return 0;
    }
    if (strcmp(to, "journald") == 0) {
#ifdef XMEM_HAVE_SYSTEMD
        xm__log_set_target(XM_LOG_TO_SINK, NULL, journal_sink);
        return 0;
#else
        fprintf(stderr, "%s: log = journald: this build has no libsystemd; use syslog or stderr "
                        "(under systemd, stderr goes to the journal)\n", prog);
        return 2;
#endif
    }
    fprintf(stderr, "%s: log = '%s' (from %s): use stderr, syslog or journald (or log-file PATH)\n",
            prog, to, xm__config_origin(cfg, "log", origin, sizeof(origin)));
    return 2;
}

void xm__ops_notify(const char *state)
{
#ifdef XMEM_HAVE_SYSTEMD
    int r = sd_notify(0, state);
    if (r < 0) xm_log_warn("sd_notify(%s) failed: %s", state, strerror(-r));
#else
    (void)state;
#endif
}
