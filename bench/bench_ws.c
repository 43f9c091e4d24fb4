/*
 * bench_ws — a minimal, fast WebSocket client for warren's exec/ws, for bench_stream.py.
 *
 * Connects to ws://127.0.0.1:PORT/v1/sandboxes/ID/exec/ws, sends one "execute" message, and
 * reads the server's messages until "exit", counting the bytes of the stdout stream. It does not
 * JSON-decode the messages: it checks that each one starts with {"type":"stdout", takes the
 * length of "data_b64" (or "data") and the "offset", and checks that the offsets are contiguous
 * (a gap message is an error). With --verify it also decodes the base64 and checks that every
 * byte is zero (for `head -c N /dev/zero`).
 *
 * Usage: bench_ws --port PORT --sandbox ID --execute JSON [--verify] [--expect BYTES]
 * Prints one JSON line: {"bytes":N,"seconds":S,"messages":M,"exit_code":C,"mb_per_s":X,
 *                        "cpu_user_s":U,"cpu_sys_s":Y}
 * Exit status 0 when the command exited 0, the offsets were contiguous and (with --expect) the
 * byte count matched.
 *
 * The framing is written here (RFC 6455, client side: masked frames out, unmasked frames in); it
 * does not use src/net/ws.h, which is the server side.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_CAP (8u << 20)

static __attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bench_ws: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("write: %s", strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Sends one masked text frame (mask key 0: masking is then the identity, which is allowed). */
static void send_text(int fd, const char *text)
{
    size_t n = strlen(text);
    unsigned char head[14];
    size_t h = 0;
    head[h++] = 0x81;
    if (n < 126) {
        head[h++] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = (unsigned char)(n >> 8);
        head[h++] = (unsigned char)n;
    } else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            head[h++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    memset(head + h, 0, 4);
    h += 4;
    write_all(fd, head, h);
    write_all(fd, text, n);
}

static const signed char *b64_table(void)
{
    static signed char t[256];
    static int init;
    if (!init) {
        const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        memset(t, -1, sizeof(t));
        for (int i = 0; a[i]; i++)
            t[(unsigned char)a[i]] = (signed char)i;
        init = 1;
    }
    return t;
}

/* Decodes base64 and checks that every byte is zero; returns the byte count or -1. */
static long long b64_zeros(const char *s, size_t len)
{
    const signed char *t = b64_table();
    long long out = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '=')
            break;
        int v = t[(unsigned char)s[i]];
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if ((acc >> bits) & 0xff)
                return -1;
            out++;
        }
    }
    return out;
}

struct state {
    long long bytes, messages;
    int exit_code, done, verify;
};

/* Handles one text message. */
static void on_message(struct state *st, const char *m, size_t len)
{
    static const char out_b64[] = "{\"type\":\"stdout\",\"data_b64\":\"";
    static const char out_txt[] = "{\"type\":\"stdout\",\"data\":\"";
    static const char exit_p[] = "{\"type\":\"exit\",\"exit_code\":";
    st->messages++;
    if (len > sizeof(out_b64) - 1 && memcmp(m, out_b64, sizeof(out_b64) - 1) == 0) {
        const char *d = m + sizeof(out_b64) - 1;
        const char *q = memchr(d, '"', len - (size_t)(d - m));
        if (!q)
            die("malformed stdout message");
        size_t n = (size_t)(q - d);
        long long dec = (long long)(n / 4 * 3);
        if (n >= 1 && d[n - 1] == '=')
            dec--;
        if (n >= 2 && d[n - 2] == '=')
            dec--;
        if (st->verify && b64_zeros(d, n) != dec)
            die("stdout chunk at %lld is not all zero bytes", st->bytes);
        const char *o = memmem(q, len - (size_t)(q - m), "\"offset\":", 9);
        if (!o || strtoll(o + 9, NULL, 10) != st->bytes)
            die("offset %s, expected %lld", o ? o + 9 : "(none)", st->bytes);
        st->bytes += dec;
    } else if (len > sizeof(out_txt) - 1 && memcmp(m, out_txt, sizeof(out_txt) - 1) == 0) {
        /* text mode: only exact for output without escapes (not used by the benchmark) */
        const char *d = m + sizeof(out_txt) - 1;
        const char *q = memchr(d, '"', len - (size_t)(d - m));
        if (!q)
            die("malformed stdout message");
        st->bytes += q - d;
    } else if (len > sizeof(exit_p) - 1 && memcmp(m, exit_p, sizeof(exit_p) - 1) == 0) {
        st->exit_code = atoi(m + sizeof(exit_p) - 1);
        st->done = 1;
    } else if (len > 15 && memcmp(m, "{\"type\":\"gap\"", 13) == 0) {
        die("gap: %.*s", (int)(len < 200 ? len : 200), m);
    } else if (len > 17 && memcmp(m, "{\"type\":\"error\"", 15) == 0) {
        die("error: %.*s", (int)(len < 400 ? len : 400), m);
    } else if (!(len > 17 && memcmp(m, "{\"type\":\"started\"", 17) == 0) &&
               !(len > 16 && memcmp(m, "{\"type\":\"stderr\"", 16) == 0)) {
        die("unexpected message: %.*s", (int)(len < 200 ? len : 200), m);
    }
}

int main(int argc, char **argv)
{
    int port = 0, verify = 0;
    const char *sandbox = NULL, *execute = NULL;
    long long expect = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sandbox") && i + 1 < argc)
            sandbox = argv[++i];
        else if (!strcmp(argv[i], "--execute") && i + 1 < argc)
            execute = argv[++i];
        else if (!strcmp(argv[i], "--expect") && i + 1 < argc)
            expect = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--verify"))
            verify = 1;
        else
            die("usage: bench_ws --port PORT --sandbox ID --execute JSON [--verify] "
                "[--expect BYTES]");
    }
    if (!port || !sandbox || !execute)
        die("--port, --sandbox and --execute are required");

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("connect: %s", strerror(errno));

    char req[1024];
    int rn = snprintf(req, sizeof(req),
                      "GET /v1/sandboxes/%s/exec/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n",
                      sandbox, port);
    write_all(fd, req, (size_t)rn);

    char *buf = malloc(BUF_CAP);
    if (!buf)
        die("out of memory");
    size_t len = 0, pos = 0;
    char *end;
    for (;;) { /* the 101 answer */
        ssize_t n = read(fd, buf + len, BUF_CAP - 1 - len);
        if (n <= 0)
            die("handshake: connection closed");
        len += (size_t)n;
        buf[len] = '\0';
        if ((end = strstr(buf, "\r\n\r\n")))
            break;
    }
    if (strncmp(buf, "HTTP/1.1 101", 12) != 0)
        die("handshake refused: %.*s", (int)(end - buf), buf);
    pos = (size_t)(end + 4 - buf);

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = now_s();
    send_text(fd, execute);

    struct state st = {.exit_code = -1, .verify = verify};
    while (!st.done) {
        /* parse every complete frame in buf[pos, len) */
        for (;;) {
            size_t avail = len - pos;
            if (avail < 2)
                break;
            unsigned char *h = (unsigned char *)buf + pos;
            int op = h[0] & 0x0f;
            uint64_t plen = h[1] & 0x7f;
            size_t hl = 2;
            if (h[1] & 0x80)
                die("masked frame from the server");
            if (plen == 126) {
                if (avail < 4)
                    break;
                plen = ((uint64_t)h[2] << 8) | h[3];
                hl = 4;
            } else if (plen == 127) {
                if (avail < 10)
                    break;
                plen = 0;
                for (int i = 0; i < 8; i++)
                    plen = (plen << 8) | h[2 + i];
                hl = 10;
            }
            if (plen > BUF_CAP - 16)
                die("frame of %llu bytes", (unsigned long long)plen);
            if (avail < hl + plen)
                break;
            if (!(h[0] & 0x80))
                die("fragmented message (not expected from warren)");
            if (op == 1)
                on_message(&st, (char *)h + hl, (size_t)plen);
            else if (op == 8)
                die("connection closed before the exit message");
            pos += hl + (size_t)plen;
            if (st.done)
                break;
        }
        if (st.done)
            break;
        if (pos > 0 && (len - pos < 65536 || pos > BUF_CAP / 2)) {
            memmove(buf, buf + pos, len - pos);
            len -= pos;
            pos = 0;
        }
        ssize_t n = read(fd, buf + len, BUF_CAP - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("connection closed (%s) after %lld bytes", n < 0 ? strerror(errno) : "EOF",
                st.bytes);
        len += (size_t)n;
    }
    double secs = now_s() - t0;
    getrusage(RUSAGE_SELF, &ru1);
    close(fd);
    free(buf);
    double user = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                  (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
    double sys = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    printf("{\"bytes\":%lld,\"seconds\":%.6f,\"messages\":%lld,\"exit_code\":%d,"
           "\"mb_per_s\":%.1f,\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f}\n",
           st.bytes, secs, st.messages, st.exit_code, (double)st.bytes / secs / 1e6, user, sys);
    if (st.exit_code != 0)
        return 1;
    if (expect >= 0 && st.bytes != expect) {
        fprintf(stderr, "bench_ws: got %lld bytes, expected %lld\n", st.bytes, expect);
        return 1;
    }
    return 0;
}
