/* A power cut you can take a picture of: LD_PRELOAD this into a process and every fsync/fdatasync of a
 * file under $POWERCUT_DIR also copies that file, as it is at that instant, to "<file>.synced". After a
 * kill -9, the *.synced copies are exactly what a disk that honours fsync and nothing else would hold
 * after losing power: every write before the file's last sync, none after. Deleting a watched file also
 * deletes its copy (SQLite's commit of a rollback journal is the unlink: a stale copy would resurrect a
 * hot journal). See iot_testing/powercut.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t copying = PTHREAD_MUTEX_INITIALIZER;

static void copy_synced(int fd);

static void snapshot(int fd) {
    pthread_mutex_lock(&copying);
    copy_synced(fd);
    pthread_mutex_unlock(&copying);
}

static void copy_synced(int fd) {
    const char *dir = getenv("POWERCUT_DIR");
    if (dir == NULL || dir[0] == '\0') return;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = '\0';
    size_t dl = strlen(dir);
    if (strncmp(path, dir, dl) != 0 || path[dl] != '/') return;
    char tmp[PATH_MAX + 16], dst[PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.synced.tmp", path);
    snprintf(dst, sizeof dst, "%s.synced", path);
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0) return;
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
        close(in);
        return;
    }
    char buf[65536];
    ssize_t r;
    int ok = 1;
    while ((r = read(in, buf, sizeof buf)) > 0) {
        char *p = buf;
        while (r > 0) {
            ssize_t w = write(out, p, (size_t)r);
            if (w <= 0) {
                ok = 0;
                break;
            }
            p += w;
            r -= w;
        }
        if (!ok) break;
    }
    if (r < 0) ok = 0;
    close(in);
    close(out);
    if (ok) rename(tmp, dst); /* atomic: a copy is whole or absent */
    else unlink(tmp);
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int rc = real(fd);
    if (rc == 0) snapshot(fd);
    return rc;
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int rc = real(fd);
    if (rc == 0) snapshot(fd);
    return rc;
}

/* The watched path's copy, when `path` (absolute, or relative to the working directory) is watched. */
static int copy_name(const char *path, char *out, size_t size) {
    const char *dir = getenv("POWERCUT_DIR");
    if (dir == NULL || dir[0] == '\0' || path == NULL) return 0;
    char full[2 * PATH_MAX + 2];
    if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == NULL) return 0;
        snprintf(full, sizeof full, "%s/%s", cwd, path);
    }
    size_t dl = strlen(dir);
    if (strncmp(full, dir, dl) != 0 || full[dl] != '/') return 0;
    snprintf(out, size, "%s.synced", full);
    return 1;
}

int unlink(const char *path) {
    static int (*real)(const char *) = NULL;
    if (real == NULL) real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    char copy[2 * PATH_MAX + 16];
    int rc = real(path);
    if (rc == 0 && copy_name(path, copy, sizeof copy)) {
        pthread_mutex_lock(&copying);
        real(copy);
        pthread_mutex_unlock(&copying);
    }
    return rc;
}
