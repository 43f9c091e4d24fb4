/*
 * dockerfile: the parser (instructions, continuations, comments, flags, exec form, refusals with
 * keyword and line) and the word splitter with its variables.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "image/dockerfile.h"

static int parse(const char *text, struct dockerfile *df, char *msg)
{
    return dockerfile_parse(text, strlen(text), df, msg, 512);
}

static void test_basic(void **state)
{
    (void)state;
    struct dockerfile df;
    char msg[512];
    const char *text = "# syntax=docker/dockerfile:1\n"
                       "ARG BASE=busybox\n"
                       "from $BASE\n"
                       "\n"
                       "  # a comment\n"
                       "ENV A=1 B=\"two words\"\r\n"
                       "RUN echo a \\\n"
                       "  # dropped comment inside a continuation\n"
                       "    && echo b\n"
                       "RUN [\"/bin/echo\", \"x y\"]\n"
                       "CMD [\"sh\"]\n"
                       "ENTRYPOINT echo hi\n"
                       "COPY --chown=1000:1000 a b /dst/\n"
                       "ADD x.tar /opt/\n"
                       "WORKDIR /app\n"
                       "USER nobody\n"
                       "LABEL k=v\n"
                       "EXPOSE 80\n"
                       "RUN [not json\n";
    assert_int_equal(parse(text, &df, msg), 0);
    assert_int_equal(df.n, 14);
    assert_int_equal(df.instrs[0].kind, DF_ARG);
    assert_int_equal(df.instrs[0].line, 2);
    assert_int_equal(df.instrs[1].kind, DF_FROM);
    assert_string_equal(df.instrs[1].keyword, "FROM");
    assert_string_equal(df.instrs[1].args, "$BASE");
    assert_string_equal(df.instrs[2].args, "A=1 B=\"two words\"");
    assert_int_equal(df.instrs[3].kind, DF_RUN);
    assert_int_equal(df.instrs[3].line, 7);
    assert_string_equal(df.instrs[3].args, "echo a     && echo b");
    assert_null(df.instrs[3].exec);
    assert_non_null(df.instrs[4].exec);
    assert_string_equal(df.instrs[4].exec[0], "/bin/echo");
    assert_string_equal(df.instrs[4].exec[1], "x y");
    assert_null(df.instrs[4].exec[2]);
    assert_string_equal(df.instrs[5].exec[0], "sh");
    assert_null(df.instrs[6].exec);
    assert_int_equal(df.instrs[7].kind, DF_COPY);
    assert_string_equal(df.instrs[7].chown, "1000:1000");
    assert_string_equal(df.instrs[7].args, "a b /dst/");
    assert_string_equal(df.instrs[7].text, "COPY --chown=1000:1000 a b /dst/");
    assert_int_equal(df.instrs[8].kind, DF_ADD);
    assert_int_equal(df.instrs[12].kind, DF_EXPOSE);
    assert_null(df.instrs[13].exec); /* not JSON: the shell form */
    dockerfile_free(&df);
}

static void test_refused(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int r;
        const char *needle;
    } t[] = {
        {"FROM a\nVOLUME /data\n", -ENOTSUP, "line 2: instruction VOLUME"},
        {"FROM a\n\nHEALTHCHECK NONE\n", -ENOTSUP, "line 3: instruction HEALTHCHECK"},
        {"FROM a\nONBUILD RUN x\n", -ENOTSUP, "ONBUILD"},
        {"FROM a\nSHELL [\"/bin/bash\"]\n", -ENOTSUP, "SHELL"},
        {"FROM a\nSTOPSIGNAL 9\n", -ENOTSUP, "STOPSIGNAL"},
        {"FROM a AS b\n", -ENOTSUP, "multi-stage"},
        {"FROM a\nFROM b\n", -ENOTSUP, "line 2: a second FROM"},
        {"FROM a\nCOPY --from=b x y\n", -ENOTSUP, "COPY --from"},
        {"FROM a\nCOPY --chmod=644 x y\n", -ENOTSUP, "COPY --chmod"},
        {"FROM --platform=linux/amd64 a\n", -ENOTSUP, "FROM --platform"},
        {"RUN x\n", -EINVAL, "before FROM"},
        {"# nothing\n", -EINVAL, "no FROM"},
        {"FROM a\nRUN\n", -EINVAL, "line 2: RUN needs arguments"},
        {"FROM a b\n", -EINVAL, "one image"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct dockerfile df;
        char msg[512] = "";
        assert_int_equal(parse(t[i].text, &df, msg), t[i].r);
        if (!strstr(msg, t[i].needle))
            fail_msg("%s: message '%s' lacks '%s'", t[i].text, msg, t[i].needle);
        assert_null(df.instrs);
    }
}

static const char *lookup(const char *name, void *arg)
{
    (void)arg;
    if (!strcmp(name, "A"))
        return "one";
    if (!strcmp(name, "E"))
        return "";
    return NULL;
}

static void check_words(const char *in, int split, const char *const *want)
{
    char **w;
    size_t n, i;
    char msg[256];
    assert_int_equal(dockerfile_words(in, split, lookup, NULL, &w, &n, msg, sizeof(msg)), 0);
    for (i = 0; want[i]; i++) {
        if (i >= n || strcmp(w[i], want[i]))
            fail_msg("%s: word %zu is '%s', not '%s'", in, i, i < n ? w[i] : "(none)", want[i]);
    }
    assert_int_equal(n, i);
    assert_null(w[n]);
    dockerfile_strv_free(w);
}

static void test_words(void **state)
{
    (void)state;
    check_words("a  b\tc", 1, (const char *[]){"a", "b", "c", NULL});
    check_words("K=\"x y\" L='$A' M=$A", 1, (const char *[]){"K=x y", "L=$A", "M=one", NULL});
    check_words("${A}x ${B:-def} ${A:+alt} ${E:-e} $B.", 1,
                (const char *[]){"onex", "def", "alt", "e", ".", NULL});
    check_words("a\\ b \\$A \"q\\\"\"", 1, (const char *[]){"a b", "$A", "q\"", NULL});
    check_words("/my dir/$A", 0, (const char *[]){"/my dir/one", NULL});
    check_words("", 1, (const char *[]){NULL});
    check_words("cost $ 5", 1, (const char *[]){"cost", "$", "5", NULL});
    char **w;
    size_t n;
    char msg[256];
    assert_int_equal(dockerfile_words("\"open", 1, lookup, NULL, &w, &n, msg, sizeof(msg)),
                     -EINVAL);
    assert_non_null(strstr(msg, "unterminated"));
    assert_int_equal(dockerfile_words("${A", 1, lookup, NULL, &w, &n, msg, sizeof(msg)), -EINVAL);
    assert_int_equal(dockerfile_words("${A/x/y}", 1, lookup, NULL, &w, &n, msg, sizeof(msg)),
                     -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
