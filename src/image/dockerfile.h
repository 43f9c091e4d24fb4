/*
 * dockerfile — the Dockerfile language as `warren build` takes it, parsed and nothing else: no
 * file is read, no image touched (session/build.c runs what this returns).
 *
 * Lines: `#` comments (a line whose first non-blank is `#`, parser directives included: they are
 * read as comments), blank lines, `\` at the end of a line continues it on the next (comment
 * lines inside a continued instruction are dropped, as docker does). Keywords are
 * case-insensitive. Instructions taken: FROM (no `AS`, no flags), RUN, CMD and ENTRYPOINT (shell
 * form, or exec form: a JSON array of strings), COPY and ADD (`--chown=` only; no `--from`), ENV
 * (`K=V ...` or `K V`), ARG, LABEL, WORKDIR, USER, and EXPOSE (accepted and ignored: warren
 * publishes no ports). Anything else (VOLUME, HEALTHCHECK, ONBUILD, SHELL, STOPSIGNAL,
 * MAINTAINER, multi-stage builds) is refused with the keyword and its line, and so is a file with
 * no FROM before its first other instruction (ARG may come first).
 *
 * Words and variables (dockerfile_words): whitespace separates words; '...' is literal, "..."
 * takes \" \\ \$ escapes and variables, a backslash outside quotes escapes the next character;
 * $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alternative} are replaced by the lookup's value
 * ("" when unset), never inside single quotes.
 *
 * Errors: 0 or -errno: -EINVAL with a message naming the line, -ENOTSUP for an instruction or
 * flag that is not taken (message: keyword and line), -ENOMEM.
 */
#ifndef WARREN_IMAGE_DOCKERFILE_H
#define WARREN_IMAGE_DOCKERFILE_H

#include <stddef.h>

enum df_kind {
    DF_FROM,
    DF_RUN,
    DF_CMD,
    DF_ENTRYPOINT,
    DF_COPY,
    DF_ADD,
    DF_ENV,
    DF_ARG,
    DF_LABEL,
    DF_WORKDIR,
    DF_USER,
    DF_EXPOSE,
};

struct df_instr {
    enum df_kind kind;
    int line;      /* where it starts (1-based) */
    char *keyword; /* as written, upper-cased */
    char *args;    /* the rest of the instruction after the flags, continuations joined */
    char *chown;   /* COPY/ADD --chown= value, or NULL */
    char **exec;   /* RUN/CMD/ENTRYPOINT exec form: NULL-terminated; NULL for the shell form */
    char *text;    /* the whole instruction on one line, as it appears in steps and logs */
};

struct dockerfile {
    struct df_instr *instrs;
    size_t n;
};

/* Parses `len` bytes of `text` (need not be NUL-terminated). On failure nothing is allocated and
 * msg says what is wrong and where. */
int dockerfile_parse(const char *text, size_t len, struct dockerfile *out, char *msg,
                     size_t msglen);
void dockerfile_free(struct dockerfile *df);

/* The value of variable `name`, or NULL when it is not set. */
typedef const char *(*df_lookup_fn)(const char *name, void *arg);

/* Splits `s` into words as described above (split 0: one word of the whole text, whitespace
 * kept, only quotes, escapes and variables processed). *words is NULL-terminated, malloc'd (free
 * with dockerfile_strv_free), *n its length. -EINVAL for an unterminated quote or ${ (msg). */
int dockerfile_words(const char *s, int split, df_lookup_fn lookup, void *arg, char ***words,
                     size_t *n, char *msg, size_t msglen);
void dockerfile_strv_free(char **v);

const char *dockerfile_kind_name(enum df_kind k);

#endif
