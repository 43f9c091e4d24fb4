/*
 * Unit tests for sandbox/egress: the policy (parsing, name and address rules, the host's own
 * addresses, the static hosts table), then the proxy end to end on loopback: a real uv loop in a
 * background thread, a threaded origin server on 127.0.0.1, and blocking clients in the test
 * thread (where cmocka's asserts live). Nothing is resolved through DNS: names come from a hosts
 * file, and requests the policy denies never leave the proxy.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "sandbox/egress.h"

/* ---------------------------------------------------------------------------------------------
 * Policy
 */

static struct egress_policy *parse_ok(const char *text)
{
    char err[256] = "";
    json_error_t je;
    json_t *j = text ? json_loads(text, JSON_DECODE_ANY, &je) : NULL;
    struct egress_policy *p = NULL;
    if (text)
        assert_non_null(j);
    int rc = egress_policy_parse(j, &p, err, sizeof(err));
    if (rc != 0)
        fail_msg("parse(%s) failed: %s", text, err);
    json_decref(j);
    assert_non_null(p);
    return p;
}

/* Expects -EINVAL with `want` somewhere in the message. */
static void parse_bad(const char *text, const char *want)
{
    char err[512] = "";
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    struct egress_policy *p = (struct egress_policy *)1;
    assert_non_null(j);
    int rc = egress_policy_parse(j, &p, err, sizeof(err));
    json_decref(j);
    if (rc != -EINVAL || p != NULL)
        fail_msg("parse(%s) should fail (rc %d)", text, rc);
    if (!strstr(err, want))
        fail_msg("parse(%s): message \"%s\" lacks \"%s\"", text, err, want);
}

static void assert_json_is(json_t *j, const char *want)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(s);
    if (strcmp(s, want) != 0)
        fail_msg("got %s, want %s", s, want);
    free(s);
}

static void test_parse_good(void **state)
{
    struct egress_policy *p = parse_ok(NULL);
    assert_int_equal(egress_policy_mode(p), EGRESS_NONE);
    json_t *j = egress_policy_to_json(p);
    assert_json_is(j, "{\"allow\":[],\"mode\":\"none\"}");
    egress_policy_free(p);

    /* to_json output parses back (an empty allow list with mode none is fine). */
    char *s = json_dumps(j, 0);
    json_decref(j);
    p = parse_ok(s);
    free(s);
    assert_int_equal(egress_policy_mode(p), EGRESS_NONE);
    egress_policy_free(p);

    p = parse_ok("null");
    assert_int_equal(egress_policy_mode(p), EGRESS_NONE);
    egress_policy_free(p);
    p = parse_ok("{}");
    assert_int_equal(egress_policy_mode(p), EGRESS_NONE);
    egress_policy_free(p);
    p = parse_ok("{\"mode\": \"open\"}");
    assert_int_equal(egress_policy_mode(p), EGRESS_OPEN);
    egress_policy_free(p);
    p = parse_ok("{\"mode\": \"open\", \"allow\": [\"127.0.0.1:8080\"]}");
    assert_int_equal(egress_policy_mode(p), EGRESS_OPEN);
    egress_policy_free(p);

    p = parse_ok("{\"mode\": \"allowlist\", \"allow\": [\"Example.COM.\", \"*.Foo.org:443\", "
                 "\"198.18.0.5\", \"[2001:DB8:0::1]\", \"[::1]:8080\", \"10.0.0.1:22\", "
                 "\"under_score-x.test:1\", \"a.b.c.d.e\", \"x.y:65535\"]}");
    assert_int_equal(egress_policy_mode(p), EGRESS_ALLOWLIST);
    j = egress_policy_to_json(p);
    assert_json_is(j, "{\"allow\":[\"example.com\",\"*.foo.org:443\",\"198.18.0.5\","
                      "\"[2001:db8::1]\",\"[::1]:8080\",\"10.0.0.1:22\",\"under_score-x.test:1\","
                      "\"a.b.c.d.e\",\"x.y:65535\"],\"mode\":\"allowlist\"}");
    egress_policy_free(p);
    /* ... and round-trips. */
    s = json_dumps(j, 0);
    p = parse_ok(s);
    json_t *j2 = egress_policy_to_json(p);
    assert_true(json_equal(j, j2));
    json_decref(j2);
    json_decref(j);
    free(s);
    egress_policy_free(p);

    /* Exactly the maximum number of entries, each of maximum length. */
    json_t *big = json_array();
    char name[EGRESS_MAX_HOST + 1];
    for (int i = 0; i < EGRESS_MAX_ENTRIES; i++) {
        memset(name, 'a', EGRESS_MAX_HOST);
        for (int k = 63; k < EGRESS_MAX_HOST; k += 64)
            name[k] = '.';
        name[0] = 'n';
        name[1] = (char)('a' + i % 26);
        name[2] = (char)('a' + i / 26);
        name[EGRESS_MAX_HOST] = '\0';
        json_array_append_new(big, json_string(name));
    }
    json_t *net = json_pack("{s:s,s:o}", "mode", "allowlist", "allow", big);
    char err[256];
    assert_int_equal(egress_policy_parse(net, &p, err, sizeof(err)), 0);
    egress_policy_free(p);
    json_decref(net);
}

static void test_parse_bad(void **state)
{
    parse_bad("[]", "'network' must be an object");
    parse_bad("{\"mode\": \"none\", \"bogus\": 1}", "network.bogus");
    parse_bad("{\"mode\": 5}", "network.mode");
    parse_bad("{\"mode\": \"sometimes\"}", "network.mode");
    parse_bad("{\"mode\": \"allowlist\", \"allow\": \"a.com\"}", "network.allow");
    parse_bad("{\"mode\": \"allowlist\", \"allow\": {}}", "network.allow");
    parse_bad("{\"mode\": \"allowlist\", \"allow\": [\"a.com\", 1]}", "network.allow[1]");
    parse_bad("{\"mode\": \"none\", \"allow\": [\"a.com\"]}", "network.allow");
    parse_bad("{\"allow\": [\"a.com\"]}", "network.allow");

    /* The exact message format of the brief. */
    char err[256];
    json_t *j =
        json_pack("{s:s,s:[sss]}", "mode", "allowlist", "allow", "a.com", "b.com", "x.com:99999");
    struct egress_policy *p;
    assert_int_equal(egress_policy_parse(j, &p, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "network.allow[2]: bad port in \"x.com:99999\"");
    json_decref(j);

    static const char *const bad[] = {
        "",
        " a.com",
        "a.com ",
        "a .com",
        "*",
        "*.",
        "*.*",
        "a*b.com",
        "*a.com",
        "a.*.com",
        "x.com:99999",
        "x.com:0",
        "x.com:",
        "x.com:80a",
        "x.com:-1",
        "x.com:+80",
        ":80",
        "http://x.com",
        "https://x.com/",
        "x.com/path",
        "1.2.3.999",
        "999",
        "::1",
        "[::1",
        "[zzz]",
        "[::1]x",
        "[::1]:",
        "[fe80::1%eth0]",
        "*.1.2.3.4",
        "a..b",
        ".a.com",
        "exa mple.com",
        "ex\"ample",
        "\xc3\xa9.com",
        "x.com:80:81",
        "[]",
        "[1.2.3.4]",
        "a.com..",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        j = json_pack("{s:s,s:[ss]}", "mode", "allowlist", "allow", "ok.com", bad[i]);
        assert_non_null(j);
        err[0] = '\0';
        p = (struct egress_policy *)1;
        int rc = egress_policy_parse(j, &p, err, sizeof(err));
        json_decref(j);
        if (rc != -EINVAL || p)
            fail_msg("entry \"%s\" should be refused", bad[i]);
        if (!strstr(err, "network.allow[1]: "))
            fail_msg("entry \"%s\": message \"%s\" does not name the entry", bad[i], err);
    }

    /* Too long: a 254-byte name, and 257 entries. */
    char name[300];
    memset(name, 'a', 254);
    for (int k = 50; k < 254; k += 51)
        name[k] = '.';
    name[254] = '\0';
    j = json_pack("{s:s,s:[s]}", "mode", "allowlist", "allow", name);
    assert_int_equal(egress_policy_parse(j, &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "network.allow[0]"));
    json_decref(j);
    json_t *arr = json_array();
    for (int i = 0; i <= EGRESS_MAX_ENTRIES; i++)
        json_array_append_new(arr, json_string("a.com"));
    j = json_pack("{s:s,s:o}", "mode", "allowlist", "allow", arr);
    assert_int_equal(egress_policy_parse(j, &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "network.allow"));
    json_decref(j);
}

static void test_names(void **state)
{
    struct egress_policy *p =
        parse_ok("{\"mode\": \"allowlist\", \"allow\": [\"example.com\", \"*.example.org\", "
                 "\"api.test:443\", \"*.svc.test:8443\", \"127.0.0.1\"]}");
    const char *why = NULL;
    assert_true(egress_policy_allows_name(p, "example.com", 80, &why));
    assert_string_equal(why, "in allowlist");
    assert_true(egress_policy_allows_name(p, "example.com", 443, NULL));
    assert_true(egress_policy_allows_name(p, "EXAMPLE.Com", 443, NULL));
    assert_true(egress_policy_allows_name(p, "example.com.", 443, NULL));
    assert_false(egress_policy_allows_name(p, "www.example.com", 443, &why));
    assert_string_equal(why, "not in allowlist");
    assert_false(egress_policy_allows_name(p, "example.com.evil", 443, NULL));
    assert_false(egress_policy_allows_name(p, "xexample.com", 443, NULL));

    assert_false(egress_policy_allows_name(p, "example.org", 443, NULL));
    assert_true(egress_policy_allows_name(p, "a.example.org", 443, NULL));
    assert_true(egress_policy_allows_name(p, "A.B.Example.ORG.", 80, NULL));
    assert_false(egress_policy_allows_name(p, "xexample.org", 443, NULL));
    assert_false(egress_policy_allows_name(p, ".example.org", 443, NULL));

    assert_true(egress_policy_allows_name(p, "api.test", 443, NULL));
    assert_false(egress_policy_allows_name(p, "api.test", 80, NULL));
    assert_true(egress_policy_allows_name(p, "x.svc.test", 8443, NULL));
    assert_false(egress_policy_allows_name(p, "x.svc.test", 443, NULL));
    assert_false(egress_policy_allows_name(p, "svc.test", 8443, NULL));
    /* IP-literal entries never match names. */
    assert_false(egress_policy_allows_name(p, "127.0.0.1", 80, NULL));
    egress_policy_free(p);

    p = parse_ok("{\"mode\": \"open\"}");
    assert_true(egress_policy_allows_name(p, "anything.example", 1, &why));
    assert_string_equal(why, "open mode");
    egress_policy_free(p);
    p = parse_ok("{\"mode\": \"none\"}");
    assert_false(egress_policy_allows_name(p, "example.com", 80, &why));
    assert_string_equal(why, "network mode is none");
    egress_policy_free(p);
    assert_false(egress_policy_allows_name(NULL, "example.com", 80, NULL));
}

static union egress_sockaddr sa_of(const char *ip, unsigned port)
{
    union egress_sockaddr a;
    memset(&a, 0, sizeof(a));
    if (inet_pton(AF_INET, ip, &a.in.sin_addr) == 1) {
        a.in.sin_family = AF_INET;
        a.in.sin_port = htons((uint16_t)port);
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &a.in6.sin6_addr), 1);
        a.in6.sin6_family = AF_INET6;
        a.in6.sin6_port = htons((uint16_t)port);
    }
    return a;
}

static void test_classify(void **state)
{
    static const struct {
        const char *ip;
        enum egress_addr_class c;
    } cases[] = {
        {"127.0.0.1", EGRESS_ADDR_LOOPBACK},
        {"127.255.255.254", EGRESS_ADDR_LOOPBACK},
        {"0.0.0.0", EGRESS_ADDR_UNSPECIFIED},
        {"0.1.2.3", EGRESS_ADDR_UNSPECIFIED},
        {"10.1.2.3", EGRESS_ADDR_PRIVATE},
        {"172.16.0.1", EGRESS_ADDR_PRIVATE},
        {"172.31.255.255", EGRESS_ADDR_PRIVATE},
        {"172.15.255.255", EGRESS_ADDR_PUBLIC},
        {"172.32.0.1", EGRESS_ADDR_PUBLIC},
        {"192.168.1.1", EGRESS_ADDR_PRIVATE},
        {"192.169.0.1", EGRESS_ADDR_PUBLIC},
        {"100.64.0.1", EGRESS_ADDR_CGNAT},
        {"100.127.255.255", EGRESS_ADDR_CGNAT},
        {"100.63.255.255", EGRESS_ADDR_PUBLIC},
        {"100.128.0.1", EGRESS_ADDR_PUBLIC},
        {"169.254.169.254", EGRESS_ADDR_LINK_LOCAL},
        {"224.0.0.1", EGRESS_ADDR_MULTICAST},
        {"239.255.255.250", EGRESS_ADDR_MULTICAST},
        {"240.0.0.1", EGRESS_ADDR_RESERVED},
        {"255.255.255.254", EGRESS_ADDR_RESERVED},
        {"255.255.255.255", EGRESS_ADDR_BROADCAST},
        {"198.18.0.5", EGRESS_ADDR_PUBLIC},
        {"198.19.255.255", EGRESS_ADDR_PUBLIC},
        {"8.8.8.8", EGRESS_ADDR_PUBLIC},
        {"223.255.255.255", EGRESS_ADDR_PUBLIC},
        {"::1", EGRESS_ADDR_LOOPBACK},
        {"::", EGRESS_ADDR_UNSPECIFIED},
        {"fc00::1", EGRESS_ADDR_PRIVATE},
        {"fd12:3456::1", EGRESS_ADDR_PRIVATE},
        {"fe80::1", EGRESS_ADDR_LINK_LOCAL},
        {"febf::1", EGRESS_ADDR_LINK_LOCAL},
        {"fec0::1", EGRESS_ADDR_PRIVATE},
        {"ff02::1", EGRESS_ADDR_MULTICAST},
        {"100::1", EGRESS_ADDR_RESERVED},
        {"2001:db8::1", EGRESS_ADDR_PUBLIC},
        {"2606:4700::1111", EGRESS_ADDR_PUBLIC},
        {"::ffff:127.0.0.1", EGRESS_ADDR_LOOPBACK},
        {"::ffff:169.254.169.254", EGRESS_ADDR_LINK_LOCAL},
        {"::ffff:10.0.0.1", EGRESS_ADDR_PRIVATE},
        {"::ffff:0.0.0.0", EGRESS_ADDR_UNSPECIFIED},
        {"::ffff:198.18.0.5", EGRESS_ADDR_PUBLIC},
        {"::127.0.0.1", EGRESS_ADDR_LOOPBACK},
        {"::169.254.169.254", EGRESS_ADDR_LINK_LOCAL},
        {"64:ff9b::a9fe:a9fe", EGRESS_ADDR_LINK_LOCAL},
        {"64:ff9b::808:808", EGRESS_ADDR_PUBLIC},
        {"64:ff9b:1::1", EGRESS_ADDR_PRIVATE},
        {"2002:7f00:1::1", EGRESS_ADDR_LOOPBACK},
        {"2002:c612:5::1", EGRESS_ADDR_PUBLIC},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        union egress_sockaddr a = sa_of(cases[i].ip, 443);
        enum egress_addr_class c = egress_addr_classify(&a.sa);
        if (c != cases[i].c)
            fail_msg("%s: class %s, want %s", cases[i].ip, egress_addr_class_name(c),
                     egress_addr_class_name(cases[i].c));
    }
}

static bool addr_ok(const struct egress_policy *p, const char *ip, unsigned port, bool literal,
                    const char **why)
{
    union egress_sockaddr a = sa_of(ip, port);
    return egress_policy_allows_addr(p, &a.sa, literal, NULL, why);
}

static void test_addresses(void **state)
{
    const char *why = NULL;
    struct egress_policy *p = parse_ok("{\"mode\": \"open\"}");
    assert_true(addr_ok(p, "198.18.0.5", 443, true, &why));
    assert_string_equal(why, "public address");
    assert_true(addr_ok(p, "198.18.0.5", 443, false, NULL));
    assert_false(addr_ok(p, "127.0.0.1", 80, true, &why));
    assert_string_equal(why, "loopback address");
    assert_false(addr_ok(p, "169.254.169.254", 80, false, &why));
    assert_string_equal(why, "link-local address");
    assert_false(addr_ok(p, "10.0.0.1", 80, false, &why));
    assert_string_equal(why, "private address");
    assert_false(addr_ok(p, "::ffff:127.0.0.1", 80, true, NULL));
    assert_false(addr_ok(p, "::1", 80, true, NULL));
    assert_false(addr_ok(p, "100.100.100.100", 80, true, NULL));
    egress_policy_free(p);

    /* Open mode with explicit addresses: those (and only on the listed port) are unlocked. */
    p = parse_ok("{\"mode\": \"open\", \"allow\": [\"127.0.0.1:8080\", \"[::1]\", "
                 "\"[::ffff:10.1.1.1]\"]}");
    assert_true(addr_ok(p, "127.0.0.1", 8080, true, &why));
    assert_string_equal(why, "listed address");
    assert_true(addr_ok(p, "127.0.0.1", 8080, false, NULL)); /* a name resolving there, too */
    assert_false(addr_ok(p, "127.0.0.1", 8081, true, NULL));
    assert_false(addr_ok(p, "127.0.0.2", 8080, true, NULL));
    assert_true(addr_ok(p, "::ffff:127.0.0.1", 8080, true, NULL)); /* the same socket */
    assert_true(addr_ok(p, "::1", 1, true, NULL));
    assert_true(addr_ok(p, "::1", 65535, false, NULL));
    assert_true(addr_ok(p, "10.1.1.1", 22, true, NULL));
    assert_false(addr_ok(p, "10.1.1.2", 22, true, NULL));
    egress_policy_free(p);

    /* Allowlist: a literal destination must be listed; a name's public addresses are fine; a
     * name never unlocks a special address. */
    p = parse_ok(
        "{\"mode\": \"allowlist\", \"allow\": [\"metadata.test\", \"198.18.0.5\", \"10.1.2.3\"]}");
    assert_true(addr_ok(p, "198.18.0.5", 443, true, NULL));
    assert_false(addr_ok(p, "198.18.0.6", 443, true, &why));
    assert_string_equal(why, "not in allowlist");
    assert_true(addr_ok(p, "198.18.0.6", 443, false, &why));
    assert_string_equal(why, "public address");
    assert_false(addr_ok(p, "169.254.169.254", 80, false, &why));
    assert_string_equal(why, "link-local address");
    assert_true(addr_ok(p, "10.1.2.3", 5432, true, NULL));
    assert_true(addr_ok(p, "10.1.2.3", 5432, false, NULL));
    assert_false(addr_ok(p, "10.1.2.4", 5432, false, NULL));
    egress_policy_free(p);

    p = parse_ok("{\"mode\": \"none\"}");
    assert_false(addr_ok(p, "198.18.0.5", 443, true, &why));
    assert_string_equal(why, "network mode is none");
    egress_policy_free(p);
}

static void test_local_addresses(void **state)
{
    struct egress_local *l;
    struct egress_policy *p = parse_ok("{\"mode\": \"open\"}");
    const char *why;
    union egress_sockaddr pub = sa_of("198.18.0.5", 443);

    assert_int_equal(egress_local_new(&l), 0);
    /* Never loaded: every address refused. */
    assert_false(egress_policy_allows_addr(p, &pub.sa, true, l, &why));
    assert_int_equal(egress_local_refresh(l, false), 0);
    assert_int_equal(egress_local_refresh(l, false), 0); /* cached */
    assert_true(egress_policy_allows_addr(p, &pub.sa, true, l, &why));

    struct ifaddrs *ifa;
    int seen = 0, seen_public = 0;
    assert_int_equal(getifaddrs(&ifa), 0);
    for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
        if (!i->ifa_addr ||
            (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6))
            continue;
        union egress_sockaddr a;
        memset(&a, 0, sizeof(a));
        memcpy(&a, i->ifa_addr, i->ifa_addr->sa_family == AF_INET ? sizeof(a.in) : sizeof(a.in6));
        a.in.sin_port = htons(443);
        assert_true(egress_local_contains(l, &a.sa));
        assert_false(egress_policy_allows_addr(p, &a.sa, true, l, &why));
        if (egress_addr_classify(&a.sa) == EGRESS_ADDR_PUBLIC) {
            /* A host address that is not special by itself is still refused. */
            assert_string_equal(why, "address of this host");
            seen_public++;
        }
        seen++;
    }
    freeifaddrs(ifa);
    assert_true(seen > 0); /* at least lo */
    print_message("      (%d host addresses checked, %d of them public-looking)\n", seen,
                  seen_public);
    assert_false(egress_local_contains(l, &pub.sa));
    assert_int_equal(egress_local_refresh(l, true), 0);
    egress_local_free(l);
    egress_policy_free(p);
}

static void test_targets(void **state)
{
    struct egress_target t;
    const char *why;
    char s[EGRESS_MAX_HOST + 16];

    assert_int_equal(egress_target_parse("Example.COM.", 12, 80, &t, &why), 0);
    assert_string_equal(t.host, "example.com");
    assert_int_equal(t.port, 80);
    assert_false(t.literal);
    assert_int_equal(egress_target_parse("[::FFFF:127.0.0.1]:8443", 23, 0, &t, &why), 0);
    assert_true(t.literal);
    assert_string_equal(t.host, "::ffff:127.0.0.1");
    assert_int_equal(t.port, 8443);
    assert_int_equal(ntohs(t.addr.in6.sin6_port), 8443);
    egress_target_format(&t, s, sizeof(s));
    assert_string_equal(s, "[::ffff:127.0.0.1]:8443");
    assert_int_equal(egress_target_parse("10.0.0.1:1", 10, 0, &t, &why), 0);
    assert_true(t.literal);
    assert_int_equal(t.addr.sa.sa_family, AF_INET);
    egress_target_format(&t, s, sizeof(s));
    assert_string_equal(s, "10.0.0.1:1");
    /* inet_aton forms are neither names nor addresses. */
    assert_int_equal(egress_target_parse("127.1", 5, 80, &t, &why), -EINVAL);
    assert_int_equal(egress_target_parse("2130706433", 10, 80, &t, &why), -EINVAL);
    assert_int_equal(egress_target_parse("0x7f.0.0.1", 10, 80, &t, &why), -EINVAL);
    assert_string_equal(why, "bad IPv4 address");
    assert_int_equal(egress_target_parse("0x7f000001", 10, 80, &t, &why), 0); /* a name... */
    assert_false(t.literal); /* ... whose resolved address is checked like any other */
    assert_int_equal(egress_target_parse("a.com:65536", 11, 80, &t, &why), -EINVAL);
    assert_string_equal(why, "bad port");
}

static void test_hosts_file(void **state)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/warren-test-egress-hosts-%d", getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("# static overrides\n"
          "127.0.0.1   origin.test  Alias.Test.   # trailing comment\n"
          "\n"
          "   \t\n"
          "::1 v6.test\n"
          "198.18.0.7 origin.test\n",
          f);
    fclose(f);
    struct egress_hosts *h;
    union egress_sockaddr out[4];
    char a[INET6_ADDRSTRLEN];
    assert_int_equal(egress_hosts_load(path, &h), 0);
    assert_int_equal(egress_hosts_lookup(h, "ORIGIN.test.", out, 4), 2);
    assert_int_equal(out[0].sa.sa_family, AF_INET);
    inet_ntop(AF_INET, &out[0].in.sin_addr, a, sizeof(a));
    assert_string_equal(a, "127.0.0.1");
    inet_ntop(AF_INET, &out[1].in.sin_addr, a, sizeof(a));
    assert_string_equal(a, "198.18.0.7");
    assert_int_equal(egress_hosts_lookup(h, "origin.test", out, 1), 2); /* count, not copied */
    assert_int_equal(egress_hosts_lookup(h, "alias.test", out, 4), 1);
    assert_int_equal(egress_hosts_lookup(h, "v6.test", out, 4), 1);
    assert_int_equal(out[0].sa.sa_family, AF_INET6);
    assert_int_equal(egress_hosts_lookup(h, "other.test", out, 4), 0);
    assert_int_equal(egress_hosts_lookup(NULL, "origin.test", out, 4), 0);
    egress_hosts_free(h);

    static const char *const bad[] = {"not-an-ip name.test\n", "127.0.0.1\n",
                                      "127.0.0.1 bad_name!\n", "[::1] x.test\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        f = fopen(path, "w");
        assert_non_null(f);
        fputs(bad[i], f);
        fclose(f);
        h = (struct egress_hosts *)1;
        assert_int_equal(egress_hosts_load(path, &h), -EINVAL);
        assert_null(h);
    }
    unlink(path);
    assert_int_equal(egress_hosts_load(path, &h), -ENOENT);
}

/* ---------------------------------------------------------------------------------------------
 * End to end: the origin server (plain threads, blocking sockets)
 */

#define MAX_WORKERS 64

struct origin {
    int lfd;
    int port;
    pthread_t thread;
    atomic_int stop;
    pthread_mutex_t mu;
    char last_head[8192];
    int requests;
    pthread_t workers[MAX_WORKERS];
    int nworkers;
};

struct worker_arg {
    struct origin *o;
    int fd;
};

static void set_timeouts(int fd, int secs)
{
    struct timeval tv = {secs, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A connection starting with "ECHO" is echoed until EOF; anything else is an HTTP request whose
 * head is recorded and answered with "hello" (or "got:" + the body if it has one). */
static void *origin_worker(void *arg)
{
    struct worker_arg *wa = arg;
    struct origin *o = wa->o;
    int fd = wa->fd;
    free(wa);
    char buf[16384];
    size_t len = 0;
    int small = 64 * 1024; /* less kernel buffering for the backpressure test to fill */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    set_timeouts(fd, 5);
    while (len < sizeof(buf) - 1) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            goto out;
        len += (size_t)n;
        buf[len] = '\0';
        if (len >= 4 && memcmp(buf, "ECHO", 4) == 0) {
            if (write_all(fd, buf, len) < 0)
                goto out;
            for (;;) {
                n = read(fd, buf, sizeof(buf));
                if (n <= 0 || write_all(fd, buf, (size_t)n) < 0)
                    goto out;
            }
        }
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        size_t head_len = (size_t)(end + 4 - buf);
        pthread_mutex_lock(&o->mu);
        snprintf(o->last_head, sizeof(o->last_head), "%.*s", (int)head_len, buf);
        o->requests++;
        pthread_mutex_unlock(&o->mu);
        size_t clen = 0;
        const char *cl = strstr(buf, "Content-Length: ");
        if (cl && cl < end)
            clen = strtoul(cl + 16, NULL, 10);
        while (len - head_len < clen && len < sizeof(buf) - 1) {
            n = read(fd, buf + len, sizeof(buf) - 1 - len);
            if (n <= 0)
                goto out;
            len += (size_t)n;
        }
        char resp[20000];
        int body_len = clen ? (int)(4 + clen) : 5;
        int rn =
            snprintf(resp, sizeof(resp),
                     "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s%.*s",
                     body_len, clen ? "got:" : "hello", (int)clen, buf + head_len);
        write_all(fd, resp, (size_t)rn);
        break;
    }
out:
    close(fd);
    return NULL;
}

static void *origin_main(void *arg)
{
    struct origin *o = arg;
    while (!atomic_load(&o->stop)) {
        struct pollfd pfd = {o->lfd, POLLIN, 0};
        if (poll(&pfd, 1, 20) <= 0)
            continue;
        int fd = accept(o->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        struct worker_arg *wa = malloc(sizeof(*wa));
        wa->o = o;
        wa->fd = fd;
        if (o->nworkers == MAX_WORKERS ||
            pthread_create(&o->workers[o->nworkers], NULL, origin_worker, wa) != 0) {
            close(fd);
            free(wa);
            continue;
        }
        o->nworkers++;
    }
    return NULL;
}

/* A TCP socket listening on 127.0.0.1:<ephemeral>. */
static int listen_loopback(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sin);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, backlog), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

static void origin_start(struct origin *o)
{
    memset(o, 0, sizeof(*o));
    pthread_mutex_init(&o->mu, NULL);
    o->lfd = listen_loopback(64, &o->port);
    assert_int_equal(pthread_create(&o->thread, NULL, origin_main, o), 0);
}

static void origin_stop(struct origin *o)
{
    atomic_store(&o->stop, 1);
    pthread_join(o->thread, NULL);
    for (int i = 0; i < o->nworkers; i++)
        pthread_join(o->workers[i], NULL);
    close(o->lfd);
    pthread_mutex_destroy(&o->mu);
}

/* ---------------------------------------------------------------------------------------------
 * End to end: the proxy (its loop runs in a background thread)
 */

struct rec {
    bool allowed;
    char method[16];
    char host[64];
    char address[64];
    char reason[64];
    unsigned port;
};

struct fx {
    uv_loop_t loop;
    uv_async_t async;
    pthread_t thread;
    sem_t done;
    void (*fn)(struct fx *f, void *arg);
    void *arg;
    struct egress_proxy *px;
    bool px_closed;
    bool started;
    int pport;
    struct origin origin;
    struct egress_hosts *hosts;
    char hosts_path[64];
    pthread_mutex_t mu;
    struct rec dec[64];
    int ndec;
};

static void on_decision(void *ud, const struct egress_decision *d)
{
    struct fx *f = ud;
    pthread_mutex_lock(&f->mu);
    if (f->ndec < 64) {
        struct rec *r = &f->dec[f->ndec++];
        r->allowed = d->allowed;
        snprintf(r->method, sizeof(r->method), "%s", d->method);
        snprintf(r->host, sizeof(r->host), "%s", d->host);
        snprintf(r->address, sizeof(r->address), "%s", d->address);
        snprintf(r->reason, sizeof(r->reason), "%s", d->reason);
        r->port = d->port;
    }
    pthread_mutex_unlock(&f->mu);
}

static void on_async(uv_async_t *a)
{
    struct fx *f = a->data;
    f->fn(f, f->arg);
    sem_post(&f->done);
}

/* Runs fn(f, arg) on the loop thread and waits for it. */
static void on_loop(struct fx *f, void (*fn)(struct fx *, void *), void *arg)
{
    f->fn = fn;
    f->arg = arg;
    uv_async_send(&f->async);
    sem_wait(&f->done);
}

static void *loop_main(void *arg)
{
    struct fx *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    sem_init(&f->done, 0, 0);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    origin_start(&f->origin);
    snprintf(f->hosts_path, sizeof(f->hosts_path), "/tmp/warren-test-egress-%d.hosts", getpid());
    FILE *h = fopen(f->hosts_path, "w");
    assert_non_null(h);
    fputs("127.0.0.1 origin.test\n"
          "169.254.169.254 metadata.test\n"
          "# tried in order: refused by policy, refused by the kernel, then the origin\n"
          "169.254.169.254 multi.test\n"
          "127.0.0.2 multi.test\n"
          "127.0.0.1 multi.test\n",
          h);
    fclose(h);
    assert_int_equal(egress_hosts_load(f->hosts_path, &f->hosts), 0);
    *state = f;
    return 0;
}

struct start_opts {
    unsigned max_connections;
    unsigned head_timeout_ms;
    unsigned connect_timeout_ms;
};

static struct egress_policy *policy_of(const char *json)
{
    return parse_ok(json);
}

static void proxy_start(struct fx *f, const char *policy, const struct start_opts *so)
{
    int lfd = listen_loopback(128, &f->pport);
    struct egress_options opt = {
        .sandbox_id = "sbx_test",
        .hosts = f->hosts,
        .on_decision = on_decision,
        .ud = f,
    };
    if (so) {
        opt.max_connections = so->max_connections;
        opt.head_timeout_ms = so->head_timeout_ms;
        opt.connect_timeout_ms = so->connect_timeout_ms;
    }
    assert_int_equal(egress_proxy_start(&f->loop, lfd, &opt, policy_of(policy), &f->px), 0);
    assert_int_equal(uv_async_init(&f->loop, &f->async, on_async), 0);
    f->async.data = f;
    assert_int_equal(pthread_create(&f->thread, NULL, loop_main, f), 0);
    f->started = true;
}

static void do_close_proxy(struct fx *f, void *arg)
{
    egress_proxy_close(f->px);
}

static void close_proxy(struct fx *f)
{
    if (!f->px_closed)
        on_loop(f, do_close_proxy, NULL);
    f->px_closed = true;
}

static void do_stop(struct fx *f, void *arg)
{
    uv_close((uv_handle_t *)&f->async, NULL);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    if (f->started) {
        close_proxy(f);
        on_loop(f, do_stop, NULL);
        pthread_join(f->thread, NULL);
    }
    /* Every handle of the proxy and its connections went through its close callback. */
    assert_int_equal(uv_loop_close(&f->loop), 0);
    origin_stop(&f->origin);
    egress_hosts_free(f->hosts);
    unlink(f->hosts_path);
    sem_destroy(&f->done);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

static void do_set_policy(struct fx *f, void *arg)
{
    struct egress_policy *p = arg;
    egress_proxy_set_policy(f->px, p);
}

static void set_policy(struct fx *f, const char *json)
{
    on_loop(f, do_set_policy, policy_of(json));
}

static void do_count(struct fx *f, void *arg)
{
    *(unsigned *)arg = egress_proxy_connections(f->px);
}

/* Waits (up to 2 s) until the proxy has `n` connections. */
static void wait_connections(struct fx *f, unsigned n)
{
    unsigned got = 0;
    for (int i = 0; i < 200; i++) {
        on_loop(f, do_count, &got);
        if (got == n)
            return;
        usleep(10000);
    }
    fail_msg("proxy has %u connections, want %u", got, n);
}

static int decisions(struct fx *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->ndec;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void wait_decisions(struct fx *f, int n)
{
    for (int i = 0; i < 200 && decisions(f) < n; i++)
        usleep(10000);
    assert_int_equal(decisions(f), n);
}

/* Client side */

static int client_connect(struct fx *f)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)f->pport),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    set_timeouts(fd, 5);
    return fd;
}

/* Reads until EOF; -1 on timeout or error. */
static ssize_t read_all(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n == 0)
            break;
        if (n < 0)
            return errno == ECONNRESET ? (ssize_t)len : -1;
        len += (size_t)n;
        if (len == cap - 1)
            break;
    }
    buf[len] = '\0';
    return (ssize_t)len;
}

static size_t read_exact(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

struct resp {
    int status;
    char text[32768];
    const char *body;
};

/* Sends `req` as one connection and reads the whole answer. */
static void exchange(struct fx *f, const char *req, size_t len, struct resp *r)
{
    int fd = client_connect(f);
    assert_int_equal(write_all(fd, req, len), 0);
    ssize_t n = read_all(fd, r->text, sizeof(r->text));
    close(fd);
    if (n < 0)
        fail_msg("no answer to %.40s...", req);
    r->status = 0;
    sscanf(r->text, "HTTP/1.1 %d", &r->status);
    const char *b = strstr(r->text, "\r\n\r\n");
    r->body = b ? b + 4 : "";
}

static void request(struct fx *f, const char *req, struct resp *r)
{
    exchange(f, req, strlen(req), r);
}

/* Checks the framing every proxy-made error has. */
static void assert_proxy_error(const struct resp *r, int status)
{
    if (r->status != status)
        fail_msg("status %d, want %d: %s", r->status, status, r->text);
    assert_non_null(strstr(r->text, "\r\nConnection: close\r\n"));
    char cl[64];
    snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n", strlen(r->body));
    assert_non_null(strstr(r->text, cl));
}

static void get_url(struct fx *f, const char *url, struct resp *r)
{
    char req[512];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: whatever\r\n\r\n", url);
    request(f, req, r);
}

/* CONNECT through the proxy; returns the tunnel's fd, the 200 consumed. */
static int tunnel(struct fx *f, const char *authority)
{
    char req[256], buf[64];
    int fd = client_connect(f);
    snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority);
    assert_int_equal(write_all(fd, req, strlen(req)), 0);
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    size_t got = read_exact(fd, buf, sizeof(ok) - 1);
    buf[got] = '\0';
    assert_string_equal(buf, ok);
    return fd;
}

static void echo_roundtrip(int fd, const char *msg)
{
    char buf[256];
    size_t n = strlen(msg);
    assert_int_equal(write_all(fd, msg, n), 0);
    assert_int_equal(read_exact(fd, buf, n), n);
    assert_memory_equal(buf, msg, n);
}

/* The peer closed (EOF or reset) rather than timing out. */
static void assert_closed(int fd)
{
    char buf[64];
    ssize_t n;
    do {
        n = read(fd, buf, sizeof(buf));
    } while (n > 0);
    if (n < 0 && errno != ECONNRESET)
        fail_msg("connection not closed: %s", strerror(errno));
}

/* ---------------------------------------------------------------------------------------------
 * End to end tests
 */

static void test_get_forwarded(void **state)
{
    struct fx *f = *state;
    struct resp r;
    char req[1024];
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}", NULL);

    snprintf(req, sizeof(req),
             "GET http://127.0.0.1:%d/x?y=1#frag HTTP/1.1\r\n"
             "Host: evil.example\r\n"
             "User-Agent: t/1\r\n"
             "Proxy-Connection: keep-alive\r\n"
             "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
             "Keep-Alive: 300\r\n"
             "Connection: keep-alive, X-Hop\r\n"
             "X-Hop: secret\r\n"
             "connection: ,x-other ,\r\n"
             "X-OTHER: also hop-by-hop\r\n"
             "X-Kept: yes\r\n"
             "Accept: */*\r\n"
             "\r\n",
             f->origin.port);
    request(f, req, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");

    char want[256];
    pthread_mutex_lock(&f->origin.mu);
    char head[8192];
    snprintf(head, sizeof(head), "%s", f->origin.last_head);
    pthread_mutex_unlock(&f->origin.mu);
    snprintf(want, sizeof(want), "GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n", f->origin.port);
    if (strncmp(head, want, strlen(want)) != 0)
        fail_msg("origin saw:\n%s", head);
    assert_non_null(strstr(head, "\r\nUser-Agent: t/1\r\n"));
    assert_non_null(strstr(head, "\r\nAccept: */*\r\n"));
    assert_non_null(strstr(head, "\r\nConnection: close\r\n\r\n"));
    assert_null(strstr(head, "Proxy-"));
    assert_null(strstr(head, "Keep-Alive"));
    assert_null(strstr(head, "keep-alive"));
    assert_null(strstr(head, "X-Hop"));
    assert_null(strstr(head, "X-OTHER"));
    assert_null(strstr(head, "onnection: ,"));
    assert_non_null(strstr(head, "\r\nX-Kept: yes\r\n"));
    assert_null(strstr(head, "evil"));
    assert_null(strstr(head, "frag"));

    wait_decisions(f, 1);
    assert_true(f->dec[0].allowed);
    assert_string_equal(f->dec[0].method, "GET");
    assert_string_equal(f->dec[0].host, "127.0.0.1");
    assert_int_equal(f->dec[0].port, f->origin.port);
    assert_string_equal(f->dec[0].address, "127.0.0.1");

    /* A body sent with the head (and any other method) is relayed; so is an empty path. */
    snprintf(req, sizeof(req),
             "POST http://127.0.0.1:%d HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
             f->origin.port);
    request(f, req, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "got:hello world");
    pthread_mutex_lock(&f->origin.mu);
    snprintf(want, sizeof(want), "POST / HTTP/1.1\r\n");
    assert_int_equal(strncmp(f->origin.last_head, want, strlen(want)), 0);
    pthread_mutex_unlock(&f->origin.mu);

    /* A body sent after the head, in pieces. */
    int fd = client_connect(f);
    snprintf(req, sizeof(req), "PUT http://127.0.0.1:%d/up HTTP/1.1\r\nContent-Length: 6\r\n\r\n",
             f->origin.port);
    assert_int_equal(write_all(fd, req, strlen(req)), 0);
    usleep(20000);
    assert_int_equal(write_all(fd, "abc", 3), 0);
    usleep(20000);
    assert_int_equal(write_all(fd, "def", 3), 0);
    ssize_t n = read_all(fd, r.text, sizeof(r.text));
    close(fd);
    assert_true(n > 0);
    assert_non_null(strstr(r.text, "\r\n\r\ngot:abcdef"));
}

struct pump {
    int fd;
    size_t total;
};

static unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 131) ^ (i >> 9) ^ (i >> 17));
}

static void *pump_main(void *arg)
{
    struct pump *p = arg;
    unsigned char buf[65536];
    size_t off = 0;
    while (off < p->total) {
        size_t n = p->total - off < sizeof(buf) ? p->total - off : sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern(off + i);
        if (write_all(p->fd, buf, n) < 0)
            break;
        off += n;
    }
    shutdown(p->fd, SHUT_WR); /* half-close: the echo must still come back in full */
    return NULL;
}

static void test_connect_relay(void **state)
{
    struct fx *f = *state;
    char auth[64];
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}", NULL);
    snprintf(auth, sizeof(auth), "127.0.0.1:%d", f->origin.port);

    int fd = tunnel(f, auth);
    echo_roundtrip(fd, "ECHO hello");
    echo_roundtrip(fd, " and more");
    close(fd);

    /* Several MiB both ways at once, then a half-close from the client: everything comes back,
     * in order, and then EOF. */
    fd = tunnel(f, auth);
    assert_int_equal(write_all(fd, "ECHO", 4), 0);
    char buf[65536];
    assert_int_equal(read_exact(fd, buf, 4), 4);
    struct pump p = {fd, 6u << 20};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pump_main, &p), 0);
    size_t got = 0;
    bool same = true;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n && same; i++)
            same = (unsigned char)buf[i] == pattern(got + (size_t)i);
        got += (size_t)n;
    }
    pthread_join(t, NULL);
    close(fd);
    assert_int_equal(got, p.total);
    assert_true(same);

    /* Bytes sent right behind the CONNECT head (before the 200) reach the origin first. */
    fd = client_connect(f);
    char req[256];
    snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\n\r\nECHO early", auth);
    assert_int_equal(write_all(fd, req, strlen(req)), 0);
    static const char want[] = "HTTP/1.1 200 Connection established\r\n\r\nECHO early";
    assert_int_equal(read_exact(fd, buf, sizeof(want) - 1), sizeof(want) - 1);
    assert_memory_equal(buf, want, sizeof(want) - 1);
    close(fd);

    wait_connections(f, 0);
    wait_decisions(f, 3);
    assert_string_equal(f->dec[0].method, "CONNECT");
    assert_true(f->dec[2].allowed);
}

static void do_queued(struct fx *f, void *arg)
{
    *(size_t *)arg = egress_proxy_queued_bytes(f->px);
}

/* A client that writes and never reads: the proxy stops reading both sides instead of buffering,
 * so the client's writes eventually block; when it reads, everything arrives intact. */
static void test_backpressure(void **state)
{
    struct fx *f = *state;
    char auth[64];
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}", NULL);
    snprintf(auth, sizeof(auth), "127.0.0.1:%d", f->origin.port);
    int fd = tunnel(f, auth);
    echo_roundtrip(fd, "ECHO");
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));

    struct timeval tv = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    static unsigned char buf[65536];
    size_t total = 0, limit = (size_t)512 << 20;
    while (total < limit) {
        for (size_t i = 0; i < sizeof(buf); i++)
            buf[i] = pattern(total + i);
        ssize_t n = send(fd, buf, sizeof(buf), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        total += (size_t)n;
        if ((size_t)n < sizeof(buf))
            break; /* partial: the timeout hit */
    }
    assert_true(total < limit);
    size_t q = 0;
    on_loop(f, do_queued, &q);
    print_message("      (blocked after %zu KiB; %zu KiB queued in the proxy)\n", total >> 10,
                  q >> 10);
    assert_true(q <= 2 * (256 + 64) * 1024);

    shutdown(fd, SHUT_WR);
    size_t got = 0;
    bool same = true;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n && same; i++)
            same = buf[i] == pattern(got + (size_t)i);
        got += (size_t)n;
    }
    close(fd);
    assert_int_equal(got, total);
    assert_true(same);
    wait_connections(f, 0);
}

static void test_denied(void **state)
{
    struct fx *f = *state;
    struct resp r;
    char url[128];
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"origin.test\", \"metadata.test\"]}",
                NULL);

    /* origin.test is listed but resolves to loopback, which is not. */
    snprintf(url, sizeof(url), "http://origin.test:%d/", f->origin.port);
    get_url(f, url, &r);
    assert_proxy_error(&r, 403);
    assert_non_null(strstr(r.text, "\r\nX-Warren-Egress: denied\r\n"));
    char want[256];
    snprintf(want, sizeof(want),
             "warren egress: origin.test:%d is not allowed by this sandbox's network policy "
             "(loopback address 127.0.0.1)\n",
             f->origin.port);
    assert_string_equal(r.body, want);
    wait_decisions(f, 1);
    assert_false(f->dec[0].allowed);
    assert_string_equal(f->dec[0].host, "origin.test");
    assert_string_equal(f->dec[0].address, "127.0.0.1");
    assert_string_equal(f->dec[0].reason, "loopback address");

    /* A listed name pointing at the metadata service. */
    get_url(f, "http://metadata.test/latest/meta-data/", &r);
    assert_proxy_error(&r, 403);
    assert_non_null(strstr(r.body, "link-local address 169.254.169.254"));

    /* Unlisted names and literals, both protocols: denied before any lookup. */
    request(f, "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", &r);
    assert_proxy_error(&r, 403);
    assert_string_equal(r.body, "warren egress: example.org:443 is not allowed by this sandbox's "
                                "network policy (not in allowlist)\n");
    get_url(f, "http://other.test/", &r);
    assert_proxy_error(&r, 403);
    get_url(f, "http://198.18.0.9/", &r);
    assert_proxy_error(&r, 403);
    assert_non_null(strstr(r.body, "198.18.0.9:80"));
    /* A client that half-closes right after its request still gets the whole answer. */
    int fd = client_connect(f);
    static const char hc[] = "GET http://other.test/ HTTP/1.1\r\n\r\n";
    assert_int_equal(write_all(fd, hc, sizeof(hc) - 1), 0);
    shutdown(fd, SHUT_WR);
    assert_true(read_all(fd, r.text, sizeof(r.text)) > 0);
    close(fd);
    assert_non_null(strstr(r.text, "HTTP/1.1 403 Forbidden\r\n"));
    assert_non_null(strstr(r.text, "(not in allowlist)\n"));
    wait_decisions(f, 6);
    assert_string_equal(f->dec[2].method, "CONNECT");
    assert_string_equal(f->dec[2].reason, "not in allowlist");
    assert_string_equal(f->dec[2].address, "");
    assert_int_equal(f->origin.requests, 0);

    /* Listing the address too unlocks it, also through the name (case and dot normalised). */
    set_policy(f, "{\"mode\": \"allowlist\", \"allow\": [\"origin.test\", \"127.0.0.1\"]}");
    snprintf(url, sizeof(url), "http://ORIGIN.test.:%d/", f->origin.port);
    get_url(f, url, &r);
    assert_int_equal(r.status, 200);
    pthread_mutex_lock(&f->origin.mu);
    snprintf(want, sizeof(want), "GET / HTTP/1.1\r\nHost: origin.test:%d\r\n", f->origin.port);
    assert_int_equal(strncmp(f->origin.last_head, want, strlen(want)), 0);
    pthread_mutex_unlock(&f->origin.mu);

    /* Candidates in order: the link-local one is filtered out, 127.0.0.2 refuses, 127.0.0.1
     * answers. */
    set_policy(f, "{\"mode\": \"allowlist\", \"allow\": [\"multi.test\", \"127.0.0.1\", "
                  "\"127.0.0.2\"]}");
    snprintf(url, sizeof(url), "http://multi.test:%d/m", f->origin.port);
    get_url(f, url, &r);
    assert_int_equal(r.status, 200);
    wait_decisions(f, 8);
    assert_true(f->dec[7].allowed);
    assert_string_equal(f->dec[7].address, "127.0.0.2");
}

static void test_open_mode(void **state)
{
    struct fx *f = *state;
    struct resp r;
    char url[128], req[256];
    proxy_start(f, "{\"mode\": \"open\"}", NULL);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", f->origin.port);
    get_url(f, url, &r);
    assert_proxy_error(&r, 403);
    assert_non_null(strstr(r.body, "(loopback address 127.0.0.1)"));
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", f->origin.port);
    request(f, req, &r);
    assert_proxy_error(&r, 403);
    snprintf(req, sizeof(req), "CONNECT [::ffff:127.0.0.1]:%d HTTP/1.1\r\n\r\n", f->origin.port);
    request(f, req, &r);
    assert_proxy_error(&r, 403);
    request(f, "CONNECT [::1]:443 HTTP/1.1\r\n\r\n", &r);
    assert_proxy_error(&r, 403);
    assert_non_null(strstr(r.body, "[::1]:443"));
    snprintf(url, sizeof(url), "http://origin.test:%d/", f->origin.port);
    get_url(f, url, &r);
    assert_proxy_error(&r, 403);
    get_url(f, "http://169.254.169.254/", &r);
    assert_proxy_error(&r, 403);
    get_url(f, "http://metadata.test/", &r);
    assert_proxy_error(&r, 403);
    /* Not in the hosts table: resolved with uv_getaddrinfo (from /etc/hosts, no network). */
    snprintf(url, sizeof(url), "http://localhost:%d/", f->origin.port);
    get_url(f, url, &r);
    assert_proxy_error(&r, 403);
    assert_non_null(strstr(r.body, "loopback address"));
    assert_int_equal(f->origin.requests, 0);

    /* An explicit entry unlocks exactly that address and port. */
    set_policy(f, "{\"mode\": \"open\", \"allow\": [\"127.0.0.1:1\"]}");
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", f->origin.port);
    get_url(f, url, &r);
    assert_proxy_error(&r, 403);
    snprintf(req, sizeof(req), "{\"mode\": \"open\", \"allow\": [\"127.0.0.1:%d\"]}",
             f->origin.port);
    set_policy(f, req);
    get_url(f, url, &r);
    assert_int_equal(r.status, 200);
    snprintf(url, sizeof(url), "http://origin.test:%d/", f->origin.port);
    get_url(f, url, &r);
    assert_int_equal(r.status, 200);
}

static void test_malformed(void **state)
{
    struct fx *f = *state;
    struct resp r;
    proxy_start(f, "{\"mode\": \"open\"}", NULL);

    static const char *const bad[] = {
        "GET /x HTTP/1.1\r\nHost: a.com\r\n\r\n",
        "garbage\r\n\r\n",
        "\r\n\r\n",
        "GET https://a.com/ HTTP/1.1\r\n\r\n",
        "GET ftp://a.com/ HTTP/1.1\r\n\r\n",
        "GET http://a.com/ HTTP/2.0\r\n\r\n",
        "GET http://a.com/ http/1.1\r\n\r\n",
        "GET  http://a.com/ HTTP/1.1\r\n\r\n",
        "GET http://a.com/ HTTP/1.1 x\r\n\r\n",
        "GET http://user:pw@a.com/ HTTP/1.1\r\n\r\n",
        "GET http://a.com:99999/ HTTP/1.1\r\n\r\n",
        "GET http:///x HTTP/1.1\r\n\r\n",
        "GET http://a b/ HTTP/1.1\r\n\r\n",
        "GET http://a.com/ HTTP/1.1\r\nNo-Colon\r\n\r\n",
        "GET http://a.com/ HTTP/1.1\r\n folded: x\r\n\r\n",
        "GET http://a.com/ HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "GET http://a.com/ HTTP/1.1\r\nX: a\rb\r\n\r\n",
        "CONNECT a.com HTTP/1.1\r\n\r\n",
        "CONNECT a.com:0 HTTP/1.1\r\n\r\n",
        "CONNECT http://a.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT ::1:443 HTTP/1.1\r\n\r\n",
        "connect a.com:443 HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        request(f, bad[i], &r);
        if (r.status != 400)
            fail_msg("%s -> %d", bad[i], r.status);
        assert_proxy_error(&r, 400);
        assert_non_null(strstr(r.body, "warren egress: bad request"));
    }
    /* A NUL byte in the head. */
    static const char nul[] = "GET http://a.com/ HTTP/1.1\r\nX: a\0b\r\n\r\n";
    exchange(f, nul, sizeof(nul) - 1, &r);
    assert_proxy_error(&r, 400);

    /* Too many Connection options to strip. */
    static char many[2048];
    int m = snprintf(many, sizeof(many), "GET http://a.com/ HTTP/1.1\r\nConnection: close");
    for (int i = 0; i < 40; i++)
        m += snprintf(many + m, sizeof(many) - (size_t)m, ", X-%d", i);
    snprintf(many + m, sizeof(many) - (size_t)m, "\r\n\r\n");
    request(f, many, &r);
    assert_proxy_error(&r, 400);
    assert_non_null(strstr(r.body, "Connection options"));

    /* A head over 16 KiB. */
    static char big[20000];
    int n = snprintf(big, sizeof(big), "GET http://a.com/ HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', 17000);
    strcpy(big + n + 17000, "\r\n\r\n");
    request(f, big, &r);
    assert_proxy_error(&r, 431);
    assert_int_equal(decisions(f), 0); /* none of these named a destination the proxy judged */
}

static void test_connect_errors(void **state)
{
    struct fx *f = *state;
    struct resp r;
    char url[128], req[256];
    struct start_opts so = {.connect_timeout_ms = 200};
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}", &so);

    /* Refused: a port nobody listens on. */
    int port;
    close(listen_loopback(1, &port));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
    get_url(f, url, &r);
    assert_proxy_error(&r, 502);
    assert_non_null(strstr(r.body, "cannot connect"));

    /* No answer: a listener whose accept queue is full drops new SYNs, so connect hangs. */
    int lfd = listen_loopback(0, &port);
    int fill[4];
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&sin, sizeof(sin));
    }
    usleep(20000);
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", port);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    request(f, req, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_proxy_error(&r, 504);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(secs >= 0.15 && secs < 2.0);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
    wait_connections(f, 0);
}

static void test_set_policy_closes(void **state)
{
    struct fx *f = *state;
    struct resp r;
    char auth[64], pol[128];
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}", NULL);
    snprintf(auth, sizeof(auth), "127.0.0.1:%d", f->origin.port);

    int fd = tunnel(f, auth);
    echo_roundtrip(fd, "ECHO one");
    /* Still allowed (this exact port now): the tunnel survives. */
    snprintf(pol, sizeof(pol), "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1:%d\"]}",
             f->origin.port);
    set_policy(f, pol);
    echo_roundtrip(fd, "ECHO two");
    /* Another port only: closed. */
    set_policy(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1:1\"]}");
    assert_closed(fd);
    close(fd);

    set_policy(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}");
    fd = tunnel(f, auth);
    echo_roundtrip(fd, "ECHO three");
    int idle = client_connect(f); /* a client that has not sent its head yet */
    assert_int_equal(write_all(idle, "CONN", 4), 0);
    wait_connections(f, 2);
    set_policy(f, "{\"mode\": \"none\"}");
    assert_closed(fd);
    assert_closed(idle);
    close(fd);
    close(idle);
    wait_connections(f, 0);

    /* New requests under mode none are denied. */
    char req[128];
    snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\n\r\n", auth);
    request(f, req, &r);
    assert_proxy_error(&r, 403);
    assert_non_null(strstr(r.body, "(network mode is none)"));
}

static void test_limits(void **state)
{
    struct fx *f = *state;
    struct resp r;
    struct start_opts so = {.max_connections = 2, .head_timeout_ms = 250};
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}", &so);

    int a = client_connect(f), b = client_connect(f);
    assert_int_equal(write_all(a, "GET", 3), 0);
    wait_connections(f, 2);
    request(f, "GET http://127.0.0.1/ HTTP/1.1\r\n\r\n", &r);
    assert_proxy_error(&r, 503);
    /* The silent clients are dropped after the head timeout, without an answer. */
    char buf[64];
    assert_int_equal(read(a, buf, sizeof(buf)), 0);
    assert_int_equal(read(b, buf, sizeof(buf)), 0);
    close(a);
    close(b);
    wait_connections(f, 0);
}

static void test_close_with_connections(void **state)
{
    struct fx *f = *state;
    struct resp r;
    char auth[64], req[256];
    struct start_opts so = {.connect_timeout_ms = 5000};
    proxy_start(f, "{\"mode\": \"allowlist\", \"allow\": [\"127.0.0.1\"]}", &so);
    snprintf(auth, sizeof(auth), "127.0.0.1:%d", f->origin.port);

    /* RELAY */
    int t1 = tunnel(f, auth);
    echo_roundtrip(t1, "ECHO x");
    int t2 = tunnel(f, auth);
    assert_int_equal(write_all(t2, "ECHO y", 6), 0); /* unread echo in flight */
    /* HEAD */
    int h = client_connect(f);
    assert_int_equal(write_all(h, "CONNECT 127.0.0.1:", 18), 0);
    /* RESPONDING (the client reads nothing and keeps its side open) */
    int d = client_connect(f);
    assert_int_equal(write_all(d, "GET http://x.test/ HTTP/1.1\r\n\r\n", 31), 0);
    /* CONNECTING (to a listener whose queue is full) */
    int port;
    int lfd = listen_loopback(0, &port);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&sin, sizeof(sin));
    }
    usleep(20000);
    int c = client_connect(f);
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", port);
    assert_int_equal(write_all(c, req, strlen(req)), 0);
    wait_decisions(f, 4);
    wait_connections(f, 5);

    close_proxy(f);
    assert_closed(t1);
    assert_closed(t2);
    assert_closed(h);
    assert_closed(c);
    ssize_t n = read_all(d, r.text, sizeof(r.text));
    assert_true(n > 0);
    assert_non_null(strstr(r.text, "403 Forbidden"));
    close(t1);
    close(t2);
    close(h);
    close(c);
    close(d);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
    /* The listener is gone too. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sin.sin_port = htons((uint16_t)f->pport);
    assert_int_equal(connect(s, (struct sockaddr *)&sin, sizeof(sin)), -1);
    close(s);
}

static void test_start_failure(void **state)
{
    uv_loop_t loop;
    struct egress_proxy *px = (struct egress_proxy *)1;
    assert_int_equal(uv_loop_init(&loop), 0);
    /* Not a socket: the fd and the policy are released, the proxy memory on the next turn. */
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    int rc = egress_proxy_start(&loop, fd, NULL, egress_policy_new(EGRESS_OPEN), &px);
    assert_true(rc < 0);
    assert_null(px);
    assert_int_equal(fcntl(fd, F_GETFD), -1); /* closed */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    egress_proxy_close(NULL);
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_local_addresses),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_hosts_file),
        cmocka_unit_test_setup_teardown(test_get_forwarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_relay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_denied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_policy_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_connections, setup, teardown),
        cmocka_unit_test(test_start_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
