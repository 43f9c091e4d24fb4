/*
 * dockerfile — see dockerfile.h.
 */
#include "image/dockerfile.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"

static const struct {
    const char *name;
    enum df_kind kind;
} keywords[] = {
    {"FROM", DF_FROM},   {"RUN", DF_RUN},         {"CMD", DF_CMD},   {"ENTRYPOINT", DF_ENTRYPOINT},
    {"COPY", DF_COPY},   {"ADD", DF_ADD},         {"ENV", DF_ENV},   {"ARG", DF_ARG},
    {"LABEL", DF_LABEL}, {"WORKDIR", DF_WORKDIR}, {"USER", DF_USER}, {"EXPOSE", DF_EXPOSE},
};

const char *dockerfile_kind_name(enum df_kind k)
{
    for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++)
        if (keywords[i].kind == k)
            return keywords[i].name;
    return "?";
}

void dockerfile_strv_free(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

static void instr_free(struct df_instr *in)
{
    free(in->keyword);
    free(in->args);
    free(in->chown);
    free(in->text);
    dockerfile_strv_free(in->exec);
}

void dockerfile_free(struct dockerfile *df)
{
    for (size_t i = 0; i < df->n; i++)
        instr_free(&df->instrs[i]);
    free(df->instrs);
    df->instrs = NULL;
    df->n = 0;
}

/* The exec form: a JSON array of strings (anything else is the shell form, as docker has it). */
static char **exec_form(const char *args, int *r)
{
    json_error_t jerr;
    json_t *arr = args[0] == '[' ? json_loads(args, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    char **v = NULL;
    size_t n = json_array_size(arr);
    *r = 0;
    if (!json_is_array(arr) || n == 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (!json_is_string(json_array_get(arr, i)))
            goto out;
    if (!(v = calloc(n + 1, sizeof(*v)))) {
        *r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!(v[i] = strdup(json_string_value(json_array_get(arr, i))))) {
            dockerfile_strv_free(v);
            v = NULL;
            *r = -ENOMEM;
            break;
        }
out:
    json_decref(arr);
    return v;
}

/* One logical instruction: `s` is its text (continuations joined), starting at a keyword. */
static int parse_instr(char *s, int line, int *seen_from, struct df_instr *in, char *msg,
                       size_t msglen)
{
    size_t kl = strcspn(s, " \t");
    char *rest = s + kl;
    int r = 0;
    memset(in, 0, sizeof(*in));
    in->line = line;
    while (*rest == ' ' || *rest == '\t')
        rest++;
    /* Trailing blanks are no part of the arguments. */
    for (size_t n = strlen(rest); n && isspace((unsigned char)rest[n - 1]);)
        rest[--n] = '\0';
    if (!(in->keyword = strndup(s, kl)))
        return -ENOMEM;
    for (char *p = in->keyword; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    size_t i, nk = sizeof(keywords) / sizeof(keywords[0]);
    for (i = 0; i < nk && strcmp(keywords[i].name, in->keyword); i++)
        ;
    if (i == nk) {
        snprintf(msg, msglen, "line %d: instruction %s is not supported by warren build", line,
                 in->keyword);
        r = -ENOTSUP;
        goto fail;
    }
    in->kind = keywords[i].kind;
    /* Flags: --chown on COPY and ADD; nothing else anywhere. */
    while (!strncmp(rest, "--", 2)) {
        size_t fl = strcspn(rest, " \t");
        if ((in->kind == DF_COPY || in->kind == DF_ADD) && !strncmp(rest, "--chown=", 8) &&
            fl > 8) {
            free(in->chown);
            if (!(in->chown = strndup(rest + 8, fl - 8))) {
                r = -ENOMEM;
                goto fail;
            }
        } else {
            int from = !strncmp(rest, "--from=", 7);
            snprintf(msg, msglen, "line %d: %s %.*s is not supported by warren build%s", line,
                     in->keyword,
                     (int)(strchr(rest, '=') && (size_t)(strchr(rest, '=') - rest) < fl
                               ? (size_t)(strchr(rest, '=') - rest)
                               : fl),
                     rest, from ? " (multi-stage builds are not)" : "");
            r = -ENOTSUP;
            goto fail;
        }
        rest += fl;
        while (*rest == ' ' || *rest == '\t')
            rest++;
    }
    if (!*rest) {
        snprintf(msg, msglen, "line %d: %s needs arguments", line, in->keyword);
        r = -EINVAL;
        goto fail;
    }
    if (in->kind == DF_FROM) {
        char *sp = rest + strcspn(rest, " \t");
        char *next = sp + strspn(sp, " \t");
        if (*next) {
            int as = !strncasecmp(next, "as", 2) && (!next[2] || isspace((unsigned char)next[2]));
            snprintf(msg, msglen, "line %d: %s", line,
                     as ? "FROM ... AS (multi-stage builds) is not supported by warren build"
                        : "FROM takes one image reference or template name");
            r = as ? -ENOTSUP : -EINVAL;
            goto fail;
        }
        if (*seen_from) {
            snprintf(msg, msglen,
                     "line %d: a second FROM (multi-stage builds) is not supported by warren "
                     "build",
                     line);
            r = -ENOTSUP;
            goto fail;
        }
        *seen_from = 1;
    } else if (in->kind != DF_ARG && !*seen_from) {
        snprintf(msg, msglen, "line %d: %s before FROM (only ARG may come first)", line,
                 in->keyword);
        r = -EINVAL;
        goto fail;
    }
    if (in->kind == DF_RUN || in->kind == DF_CMD || in->kind == DF_ENTRYPOINT) {
        in->exec = exec_form(rest, &r);
        if (r < 0)
            goto fail;
    }
    if (!(in->args = strdup(rest))) {
        r = -ENOMEM;
        goto fail;
    }
    buf_t t = BUF_INIT;
    if (in->chown)
        r = buf_appendf(&t, "%s --chown=%s %s", in->keyword, in->chown, rest);
    else
        r = buf_appendf(&t, "%s %s", in->keyword, rest);
    if (r < 0 || !(in->text = strndup(t.data, t.len))) {
        buf_free(&t);
        r = -ENOMEM;
        goto fail;
    }
    buf_free(&t);
    return 0;
fail:
    if (r == -ENOMEM)
        snprintf(msg, msglen, "out of memory");
    instr_free(in);
    memset(in, 0, sizeof(*in));
    return r;
}

int dockerfile_parse(const char *text, size_t len, struct dockerfile *out, char *msg, size_t msglen)
{
    buf_t cur = BUF_INIT;
    int r = 0, line = 0, start = 0, cont = 0, seen_from = 0;
    size_t cap = 0;
    memset(out, 0, sizeof(*out));
    if (memchr(text, '\0', len)) {
        snprintf(msg, msglen, "the Dockerfile contains a NUL byte");
        return -EINVAL;
    }
    for (size_t pos = 0; pos < len || cont;) {
        const char *l = text + pos, *nl = memchr(l, '\n', len - pos);
        size_t ll = pos < len ? (nl ? (size_t)(nl - l) : len - pos) : 0;
        int at_end = pos >= len;
        pos = at_end ? len : pos + ll + (nl ? 1 : 0);
        line++;
        if (ll && l[ll - 1] == '\r')
            ll--;
        size_t lead = 0;
        while (lead < ll && (l[lead] == ' ' || l[lead] == '\t'))
            lead++;
        if (!at_end && (lead == ll || l[lead] == '#'))
            continue; /* blank or comment, inside a continuation too */
        if (!cont) {
            start = line;
            l += lead;
            ll -= lead;
        }
        size_t end = ll;
        while (end && (l[end - 1] == ' ' || l[end - 1] == '\t'))
            end--;
        cont = !at_end && end && l[end - 1] == '\\';
        if (buf_append(&cur, l, cont ? end - 1 : ll) < 0) {
            r = -ENOMEM;
            break;
        }
        if (cont)
            continue;
        if (!cur.len)
            break; /* a continuation that ran into the end of the file with nothing after it */
        if (out->n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            struct df_instr *v = realloc(out->instrs, nc * sizeof(*v));
            if (!v) {
                r = -ENOMEM;
                break;
            }
            out->instrs = v;
            cap = nc;
        }
        if (buf_append(&cur, "", 1) < 0) {
            r = -ENOMEM;
            break;
        }
        if ((r = parse_instr(cur.data, start, &seen_from, &out->instrs[out->n], msg, msglen)) < 0)
            break;
        out->n++;
        buf_reset(&cur);
    }
    buf_free(&cur);
    if (r == 0 && !seen_from) {
        snprintf(msg, msglen, "the Dockerfile has no FROM");
        r = -EINVAL;
    }
    if (r < 0) {
        if (r == -ENOMEM)
            snprintf(msg, msglen, "out of memory");
        dockerfile_free(out);
    }
    return r;
}

/* ---- words ---------------------------------------------------------------------------------- */

static int is_name_char(char c, int first)
{
    return c == '_' || isalpha((unsigned char)c) || (!first && isdigit((unsigned char)c));
}

/* A variable at s ('$'); appends its value to b, returns the characters consumed, or -EINVAL. */
static int expand_var(const char *s, df_lookup_fn lookup, void *arg, buf_t *b, char *msg,
                      size_t msglen)
{
    char name[256];
    const char *val;
    if (s[1] == '{') {
        const char *close = strchr(s + 2, '}');
        size_t n = 0;
        while (is_name_char(s[2 + n], n == 0))
            n++;
        if (!close || n == 0 || n >= sizeof(name)) {
            snprintf(msg, msglen, "bad variable reference '%.40s'", s);
            return -EINVAL;
        }
        memcpy(name, s + 2, n);
        name[n] = '\0';
        val = lookup(name, arg);
        const char *mod = s + 2 + n;
        if (mod == close) {
            if (val && buf_append(b, val, strlen(val)) < 0)
                return -ENOMEM;
        } else if (mod[0] == ':' && (mod[1] == '-' || mod[1] == '+')) {
            int set = val && *val;
            const char *word = mod + 2;
            if (mod[1] == '-' && set && buf_append(b, val, strlen(val)) < 0)
                return -ENOMEM;
            if (((mod[1] == '-' && !set) || (mod[1] == '+' && set)) &&
                buf_append(b, word, (size_t)(close - word)) < 0)
                return -ENOMEM;
        } else {
            snprintf(msg, msglen, "unsupported variable modifier in '%.*s'", (int)(close - s + 1),
                     s);
            return -EINVAL;
        }
        return (int)(close - s + 1);
    }
    size_t n = 0;
    while (is_name_char(s[1 + n], n == 0))
        n++;
    if (n == 0 || n >= sizeof(name)) { /* a lone '$' stays */
        return buf_append(b, "$", 1) < 0 ? -ENOMEM : 1;
    }
    memcpy(name, s + 1, n);
    name[n] = '\0';
    if ((val = lookup(name, arg)) && buf_append(b, val, strlen(val)) < 0)
        return -ENOMEM;
    return (int)(n + 1);
}

static int push_word(char ***v, size_t *n, size_t *cap, buf_t *b)
{
    if (*n + 2 > *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        char **nv = realloc(*v, nc * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        *v = nv;
        *cap = nc;
    }
    if (!((*v)[*n] = strndup(b->data ? b->data : "", b->len)))
        return -ENOMEM;
    (*v)[++*n] = NULL;
    buf_reset(b);
    return 0;
}

int dockerfile_words(const char *s, int split, df_lookup_fn lookup, void *arg, char ***words,
                     size_t *n, char *msg, size_t msglen)
{
    buf_t b = BUF_INIT;
    char **v = NULL;
    size_t cap = 0;
    int r = 0, in_word = 0;
    char quote = 0;
    *n = 0;
    *words = NULL;
    for (const char *p = s; *p && r >= 0;) {
        char c = *p;
        if (quote == '\'') {
            if (c == '\'')
                quote = 0;
            else
                r = buf_append(&b, p, 1);
            p++;
        } else if (c == '$') {
            int used = expand_var(p, lookup, arg, &b, msg, msglen);
            r = used < 0 ? used : 0;
            p += used > 0 ? used : 1;
            in_word = 1;
        } else if (c == '\\' && p[1] && (!quote || strchr("\"\\$", p[1]))) {
            r = buf_append(&b, p + 1, 1);
            p += 2;
            in_word = 1;
        } else if (quote == '"') {
            if (c == '"')
                quote = 0;
            else
                r = buf_append(&b, p, 1);
            p++;
        } else if (c == '\'' || c == '"') {
            quote = c;
            in_word = 1;
            p++;
        } else if (split && isspace((unsigned char)c)) {
            if (in_word)
                r = push_word(&v, n, &cap, &b);
            in_word = 0;
            p++;
        } else {
            r = buf_append(&b, p, 1);
            in_word = 1;
            p++;
        }
    }
    if (r == 0 && quote) {
        snprintf(msg, msglen, "unterminated %c quote in '%.60s'", quote, s);
        r = -EINVAL;
    }
    if (r == 0 && (in_word || !split))
        r = push_word(&v, n, &cap, &b);
    if (r == 0 && !v)
        v = calloc(1, sizeof(*v));
    buf_free(&b);
    if (r < 0 || !v) {
        if (r == -ENOMEM || r == 0)
            snprintf(msg, msglen, "out of memory");
        dockerfile_strv_free(v);
        *n = 0;
        return r < 0 ? r : -ENOMEM;
    }
    *words = v;
    return 0;
}
