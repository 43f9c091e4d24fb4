/*
 * secrets — see secrets.h.
 */
#include "session/secrets.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET_MAX (64u << 10)

int secrets_valid_name(const char *name)
{
    if (!name || !(isalpha((unsigned char)name[0]) || name[0] == '_'))
        return 0;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return 0;
    return strlen(name) <= 128;
}

static int private_to_root(const struct stat *st)
{
    return st->st_uid == 0 && !(st->st_mode & 077);
}

static int load_one(int dfd, const char *name, char **value, char *err, size_t errlen)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, errlen, "secret '%s': %s", name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -errno;
    }
    if (!S_ISREG(st.st_mode) || !private_to_root(&st) || st.st_size > (off_t)SECRET_MAX) {
        snprintf(err, errlen,
                 "secret '%s' must be a regular file owned by root, mode 0600 or stricter, "
                 "at most %u bytes",
                 name, SECRET_MAX);
        close(fd);
        return -EPERM;
    }
    char *v = calloc(1, (size_t)st.st_size + 1);
    ssize_t n = v ? read(fd, v, (size_t)st.st_size) : -1;
    close(fd);
    if (n < 0) {
        free(v);
        snprintf(err, errlen, "secret '%s': cannot read it", name);
        return -EIO;
    }
    size_t len = (size_t)n;
    if (len > 0 && v[len - 1] == '\n')
        v[--len] = '\0';
    if (memchr(v, '\0', len)) {
        explicit_bzero(v, len);
        free(v);
        snprintf(err, errlen, "secret '%s' contains a NUL byte", name);
        return -EINVAL;
    }
    *value = v;
    return 0;
}

int secrets_load(struct secrets *s, const char *dir, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    if (dfd < 0 || fstat(dfd, &st) < 0) {
        snprintf(err, errlen, "secrets dir %s: %s", dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return -errno;
    }
    if (!private_to_root(&st)) {
        snprintf(err, errlen, "secrets dir %s must be owned by root with mode 0700 or stricter",
                 dir);
        close(dfd);
        return -EPERM;
    }
    DIR *d = fdopendir(dfd);
    struct dirent *de;
    int r = 0;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (!secrets_valid_name(de->d_name)) {
            snprintf(err, errlen,
                     "secret file name '%s' is not a valid name "
                     "([A-Za-z_][A-Za-z0-9_]*)",
                     de->d_name);
            r = -EINVAL;
            break;
        }
        struct secret *items = realloc(s->items, (s->count + 1) * sizeof(*items));
        if (!items) {
            r = -ENOMEM;
            break;
        }
        s->items = items;
        char *value = NULL;
        if ((r = load_one(dirfd(d), de->d_name, &value, err, errlen)) < 0)
            break;
        s->items[s->count].name = strdup(de->d_name);
        s->items[s->count].value = value;
        s->count++;
    }
    if (d)
        closedir(d);
    if (r < 0)
        secrets_free(s);
    return r;
}

const char *secrets_get(const struct secrets *s, const char *name)
{
    for (size_t i = 0; i < s->count; i++)
        if (strcmp(s->items[i].name, name) == 0)
            return s->items[i].value;
    return NULL;
}

void secrets_free(struct secrets *s)
{
    for (size_t i = 0; i < s->count; i++) {
        explicit_bzero(s->items[i].value, strlen(s->items[i].value));
        free(s->items[i].value);
        free(s->items[i].name);
    }
    free(s->items);
    memset(s, 0, sizeof(*s));
}
