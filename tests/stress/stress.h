/* Helpers of the stress tests: plain programs (Criterion cannot start under
 * ThreadSanitizer here), each with an appliance of its own on loopback. */
#ifndef XS_STRESS_H
#define XS_STRESS_H

#include <stdint.h>

#include <xmem/xmem.h>

/* exit codes (CTest: SKIP_RETURN_CODE 77) */
#define EXIT_FAIL 1
#define EXIT_SETUP 2
#define EXIT_WATCHDOG 3
#define EXIT_SKIP 77

extern const char *xs_provider; /* "tcp" (default) or "local" */
extern int xs_timeout;          /* watchdog: seconds for the whole run */
extern char xs_addr[64];        /* the appliance: "127.0.0.1:PORT" */

uint64_t xs_now_ns(void);
/* Name what the test is doing now, for failure and watchdog reports (printf format). */
void xs_phase(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Report a failed check (exit 1) or a setup error (exit 2): one report, the
 * appliance killed (its log printed), no leak check. Any thread may call them. */
__attribute__((format(printf, 1, 2), noreturn)) void xs_fail(const char *fmt, ...);
__attribute__((format(printf, 1, 2), noreturn)) void xs_setup_error(const char *fmt, ...);
#define CHECK_OK(call)                                                                       \
    do {                                                                                     \
        xm_status_t s_ = (call);                                                             \
        if (s_ != XM_OK) xs_fail("%s:%d: %s returned %s", __FILE__, __LINE__, #call, xm_status_str(s_)); \
    } while (0)

/* Exit 77 with the reason where userfaultfd (with WP_ASYNC, MOVE, POISON) is unusable. */
void xs_need_uffd(void);
/* After xs_timeout seconds: report the phase and every thread's kernel stack, exit 3. */
void xs_watchdog_start(void);
/* xmemd over xs_provider on 127.0.0.1 (a free port), a fresh secret, a scratch dir. */
void xs_appliance_start(const char *pool);
/* SIGTERM and wait: its exit code (0: clean, no sanitizer report); the log is printed otherwise. */
int xs_appliance_stop(void);
/* A context on the appliance (tenant alice). */
xm_ctx_h xs_connect(void);
/* Remove the scratch directory. */
void xs_remove_dir(void);

#endif
