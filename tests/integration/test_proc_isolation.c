/* No process of the appliance's own (unprivileged) user reaches pool memory through
 * /proc/PID/fd, /proc/PID/mem or process_vm_readv: xmemd is not dumpable (issue 11). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define UNPRIV_UID 65534 /* nobody */
#define UNPRIV_GID 65534

static void drop_to_unpriv(void)
{
    if (setgroups(0, NULL) != 0 || setgid(UNPRIV_GID) != 0 || setuid(UNPRIV_UID) != 0) _exit(99);
}

/* xmemd as the unprivileged user, on a free port; its pid. */
static pid_t start_unpriv_xmemd(const char *secret)
{
    int out[2];
    cr_assert(pipe(out) == 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        drop_to_unpriv();
        execl(XMEM_BIN_DIR "/xmemd", "xmemd", "--listen", "127.0.0.1:0", "--pool", "64M",
              "--secret-file", secret, "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[256];
    size_t len = 0;
    while (len < sizeof(line) - 1 && read(out[0], line + len, 1) == 1 && line[len] != '\n') len++;
    line[len] = '\0';
    close(out[0]);
    cr_assert(strncmp(line, "xmemd listening on ", 19) == 0, "unprivileged xmemd did not start: '%s'", line);
    return pid;
}

/* As root: the fd number of the pool's memfd, and a readable address of xmemd (the start
 * of its first mapping: its ELF header; the pool is mapped only once a region exists). */
static bool find_pool(pid_t pid, int *fd_p, unsigned long *addr_p)
{
    char path[64], target[512];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    struct dirent *e;
    *fd_p = -1;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char link[384];
        snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n > 0 && (target[n] = '\0', strncmp(target, "/memfd:", 7) == 0)) *fd_p = atoi(e->d_name);
    }
    if (d != NULL) closedir(d);
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    char line[1024];
    *addr_p = 0;
    if (f != NULL && fgets(line, sizeof(line), f) != NULL) *addr_p = strtoul(line, NULL, 16);
    if (f != NULL) fclose(f);
    return *fd_p >= 0 && *addr_p != 0;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[PATH_MAX];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d != NULL) closedir(d);
    rmdir(dir);
}

Test(proc_isolation, same_user_cannot_read_the_pool, .timeout = 60)
{
    if (geteuid() != 0) {
        cr_skip_test("needs root to run xmemd and a peer as an unprivileged user (uid %d)", UNPRIV_UID);
    }
    char dir[] = "/tmp/xmem-prociso-XXXXXX";
    cr_assert(mkdtemp(dir) != NULL);
    chmod(dir, 0755);
    char secret[PATH_MAX];
    snprintf(secret, sizeof(secret), "%s/secret", dir);
    xt_make_secret(secret);
    /* xmemd keeps files beside its secret (its identity): the directory is its user's */
    cr_assert(chown(secret, UNPRIV_UID, UNPRIV_GID) == 0 && chown(dir, UNPRIV_UID, UNPRIV_GID) == 0);

    pid_t appl = start_unpriv_xmemd(secret);
    int memfd;
    unsigned long addr;
    usleep(200000); /* the memfd is made before "listening"; nothing to wait for, but be sure */
    if (!find_pool(appl, &memfd, &addr)) {
        kill(appl, SIGTERM);
        waitpid(appl, NULL, 0);
        remove_dir(dir);
        cr_assert_fail("no memfd pool found in xmemd %d", (int)appl);
    }

    /* a process of the same unprivileged user tries each path to the pool */
    int res[2];
    cr_assert(pipe(res) == 0);
    pid_t peer = fork();
    cr_assert(peer >= 0);
    if (peer == 0) {
        close(res[0]);
        drop_to_unpriv();
        int got[3];
        char path[96];
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)appl, memfd);
        int fd = open(path, O_RDONLY);
        got[0] = fd >= 0 ? 0 : errno;
        snprintf(path, sizeof(path), "/proc/%d/mem", (int)appl);
        fd = open(path, O_RDONLY);
        got[1] = fd >= 0 ? 0 : errno;
        char buf[64];
        struct iovec local = {buf, sizeof(buf)}, remote = {(void *)addr, sizeof(buf)};
        got[2] = process_vm_readv(appl, &local, 1, &remote, 1, 0) >= 0 ? 0 : errno;
        if (write(res[1], got, sizeof(got)) != (ssize_t)sizeof(got)) _exit(98);
        _exit(0);
    }
    close(res[1]);
    int got[3] = {-1, -1, -1};
    ssize_t n = read(res[0], got, sizeof(got));
    close(res[0]);
    int status;
    waitpid(peer, &status, 0);
    kill(appl, SIGTERM);
    waitpid(appl, NULL, 0);
    remove_dir(dir);

    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0 && n == (ssize_t)sizeof(got),
              "the peer could not drop to uid %d (status %d)", UNPRIV_UID, status);
    cr_expect_neq(got[0], 0, "a same-user process opened /proc/<xmemd>/fd/<memfd>");
    cr_expect_neq(got[1], 0, "a same-user process opened /proc/<xmemd>/mem");
    cr_expect_neq(got[2], 0, "a same-user process read xmemd's memory with process_vm_readv");
}
