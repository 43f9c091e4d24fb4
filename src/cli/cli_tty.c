/*
 * cli_tty — interactive terminals (`exec -t`, `run -t`, `attach`) over
 * GET /v1/sandboxes/{id}/terminals/{tid}/attach: binary frames carry the raw terminal bytes both
 * ways; the CLI sends {"type":"resize","cols","rows"} text frames (at the start and on SIGWINCH);
 * the daemon sends {"type":"exit","exit_code"} when the program ends, then closes. An attach
 * starts with a redraw of the current screen (so a dropped connection is simply re-attached, up
 * to 5 times in a row).
 *
 * While input is forwarded from a local terminal, that terminal is in raw mode (cfmakeraw): every
 * key, Ctrl-C included, goes to the program. Ctrl-] then 'd' detaches (when allowed); Ctrl-]
 * twice sends one Ctrl-]; Ctrl-] and any other key sends both.
 *
 * Global state: the terminal mode saved before entering raw mode, and whether raw mode is on. It
 * has to be global: it is restored from atexit() and from signal handlers (termination signals
 * in cli_signal.c, fatal ones here), which cannot be given arguments.
 */
#include "cli/cli_internal.h"
#include "core/util.h"
#include "cli/wsclient.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define CLI_TTY_ATTEMPTS 5
#define CLI_TTY_BACKOFF_MS 100
#define CLI_TTY_CHUNK 65536
#define CLI_TTY_OUT_HIGH (256 << 10)
#define CLI_TTY_CLOSE_MS 1000
#define CLI_TTY_ESCAPE 0x1d /* Ctrl-] */

/* Same bounds as the daemon (session/terminal.h). */
#define CLI_TTY_MIN_COLS 20
#define CLI_TTY_MAX_COLS 500
#define CLI_TTY_MIN_ROWS 10
#define CLI_TTY_MAX_ROWS 200

static struct termios cli_tty_saved;         /* fd 0's mode before raw mode */
static volatile sig_atomic_t cli_tty_is_raw; /* 1 while fd 0 is in raw mode */
static volatile sig_atomic_t cli_tty_hooks;  /* atexit and fatal-signal handlers installed */

static const int cli_tty_fatal_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

void cli_tty_restore(void)
{
    if (cli_tty_is_raw) {
        tcsetattr(0, TCSANOW, &cli_tty_saved);
        cli_tty_is_raw = 0;
    }
}

static void cli_tty_atexit(void)
{
    cli_tty_restore();
}

/* A crash: restore the terminal, then die of the same signal (SA_RESETHAND put the default
 * action back). */
static void cli_tty_on_fatal(int sig)
{
    cli_tty_restore();
    raise(sig);
}

static int cli_tty_raw_enter(void)
{
    struct termios raw;
    if (tcgetattr(0, &cli_tty_saved) < 0)
        return -errno;
    if (!cli_tty_hooks) {
        cli_tty_hooks = 1;
        atexit(cli_tty_atexit);
        for (size_t i = 0; i < sizeof(cli_tty_fatal_signals) / sizeof(int); i++) {
            struct sigaction old,
                sa = {.sa_handler = cli_tty_on_fatal, .sa_flags = SA_RESETHAND | SA_NODEFER};
            sigemptyset(&sa.sa_mask);
            /* Keep a handler someone else installed. */
            if (sigaction(cli_tty_fatal_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_DFL)
                sigaction(cli_tty_fatal_signals[i], &sa, NULL);
        }
    }
    raw = cli_tty_saved;
    cfmakeraw(&raw);
    cli_tty_is_raw = 1; /* before the change: a signal in between restores */
    if (tcsetattr(0, TCSADRAIN, &raw) < 0) {
        int e = errno;
        cli_tty_is_raw = 0;
        return -e;
    }
    return 0;
}

/* A message on stderr, with "\r\n" line ends while the terminal is raw. */
static void cli_tty_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void cli_tty_warn(const char *fmt, ...)
{
    va_list ap;
    fputs("warren: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(cli_tty_is_raw ? "\r\n" : "\n", stderr);
}

void cli_tty_winsize(int *cols, int *rows)
{
    struct winsize ws;
    *cols = 80;
    *rows = 24;
    for (int fd = 0; fd <= 2; fd++) {
        if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
            *cols = ws.ws_col;
            *rows = ws.ws_row;
            break;
        }
    }
    *cols = *cols < CLI_TTY_MIN_COLS   ? CLI_TTY_MIN_COLS
            : *cols > CLI_TTY_MAX_COLS ? CLI_TTY_MAX_COLS
                                       : *cols;
    *rows = *rows < CLI_TTY_MIN_ROWS   ? CLI_TTY_MIN_ROWS
            : *rows > CLI_TTY_MAX_ROWS ? CLI_TTY_MAX_ROWS
                                       : *rows;
}

static int cli_tty_path(buf_t *b, const char *sandbox, const char *tid, const char *suffix)
{
    if (cli_path_sandbox(b, sandbox) < 0 || buf_append_str(b, "/terminals") < 0)
        return -ENOMEM;
    if (tid && (buf_append_str(b, "/") < 0 || client_append_escaped(b, tid, 0) < 0))
        return -ENOMEM;
    return suffix ? buf_append_str(b, suffix) : 0;
}

enum cli_result cli_tty_create(struct client *c, const char *sandbox, json_t *argv, json_t *env,
                               const char *cwd, char **tid)
{
    buf_t path = BUF_INIT;
    json_t *body = NULL, *res = NULL;
    enum cli_result r = CLI_ETRANSPORT;
    int cols, rows;

    *tid = NULL;
    cli_tty_winsize(&cols, &rows);
    body = json_pack("{s:i, s:i}", "cols", cols, "rows", rows);
    if (!body || cli_tty_path(&path, sandbox, NULL, NULL) < 0)
        goto oom;
    if (argv && json_array_size(argv) > 0)
        json_object_set(body, "argv", argv);
    if (env && json_object_size(env) > 0)
        json_object_set(body, "env", env);
    if (cwd) {
        json_t *s = json_string(cwd);
        if (!s) {
            fprintf(stderr, "warren: --cwd: not valid UTF-8\n");
            goto out;
        }
        json_object_set_new(body, "cwd", s);
    }
    r = cli_api_call(c, "POST", path.data, body, &res, NULL);
    if (r == CLI_OK) {
        const char *id = json_string_value(json_object_get(res, "terminal_id"));
        if (!id || !(*tid = strdup(id))) {
            fprintf(stderr, "warren: the daemon's answer has no terminal id\n");
            r = CLI_ETRANSPORT;
        }
    }
    goto out;
oom:
    fprintf(stderr, "warren: out of memory\n");
out:
    buf_free(&path);
    json_decref(body);
    json_decref(res);
    return r;
}

void cli_tty_delete(struct client *c, const char *sandbox, const char *tid)
{
    buf_t path = BUF_INIT;
    struct client_response resp;
    c->cancel = NULL;
    if (cli_tty_path(&path, sandbox, tid, NULL) == 0) {
        client_request(c, "DELETE", path.data, NULL, NULL, 0, &resp);
        client_response_free(&resp);
    }
    buf_free(&path);
}

struct cli_tty {
    struct client *c;
    const struct cli_tty_req *req;
    struct wsc ws;
    struct wsc_msg msg;
    bool stdin_open;
    bool escape_pending; /* the last input byte was Ctrl-] */
    bool detached;
    int result; /* -1 until decided */
};

/* Connect. Returns 0, -1 (retry) or an exit status > 0 (reported). */
static int cli_tty_connect(struct cli_tty *t, bool again)
{
    buf_t path = BUF_INIT;
    struct client_response resp;
    int ret = 0;

    wsc_free(&t->ws);
    if (cli_tty_path(&path, t->req->sandbox, t->req->terminal_id, "/attach") < 0) {
        cli_tty_warn("out of memory");
        return CLI_EXIT_API;
    }
    t->c->cancel = &cli_signal_caught;
    int r = wsc_connect(&t->ws, t->c, path.data, &resp);
    t->c->cancel = NULL;
    t->ws.cancel = NULL;
    if (r == -EINTR) {
        ret = 128 + (cli_signal_caught ? cli_signal_caught : SIGINT);
    } else if (r == -EREMOTEIO) {
        if (cli_tty_is_raw)
            cli_tty_restore();
        cli_report_api_error(&resp, NULL);
        ret = CLI_EXIT_API;
    } else if (r < 0) {
        if (again) {
            ret = -1;
        } else if (t->c->connect_failed) {
            cli_tty_warn("cannot reach the daemon at %s: %s", t->c->url, t->ws.error);
            ret = CLI_EXIT_FAIL;
        } else {
            cli_tty_warn("GET %s at %s: %s", path.data, t->c->url, t->ws.error);
            ret = CLI_EXIT_API;
        }
    }
    client_response_free(&resp);
    buf_free(&path);
    return ret;
}

static void cli_tty_send_size(struct cli_tty *t)
{
    char m[96];
    int cols, rows;
    cli_tty_winsize(&cols, &rows);
    int n = snprintf(m, sizeof(m), "{\"type\":\"resize\",\"cols\":%d,\"rows\":%d}", cols, rows);
    wsc_send(&t->ws, WSC_TEXT, m, (size_t)n);
}

static void cli_tty_on_text(struct cli_tty *t, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *msg = json_loadb(data, len, 0, &jerr);
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (type && strcmp(type, "exit") == 0) {
        json_t *code = json_object_get(msg, "exit_code");
        json_int_t v = json_is_integer(code) ? json_integer_value(code) : -1;
        t->result = v >= 0 && v <= 255 ? (int)v : CLI_EXIT_API;
    } else if (type && strcmp(type, "error") == 0) {
        const char *m = json_string_value(json_object_get(msg, "message"));
        cli_tty_warn("the daemon said: %s", m ? m : "error");
    }
    json_decref(msg);
}

/* Read fd 0 and send it, handling the detach sequence. */
static void cli_tty_pump_stdin(struct cli_tty *t, short revents)
{
    char in[CLI_TTY_CHUNK], out[2 * CLI_TTY_CHUNK];
    ssize_t n = 0;
    size_t o = 0;

    if (!(revents & POLLNVAL)) {
        n = read(0, in, sizeof(in));
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            return;
    }
    if (n <= 0) {
        t->stdin_open = false;
        if (t->escape_pending) {
            t->escape_pending = false;
            out[o++] = CLI_TTY_ESCAPE;
        }
    }
    for (ssize_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)in[i];
        if (!t->req->detach_keys) {
            out[o++] = (char)b;
        } else if (t->escape_pending) {
            t->escape_pending = false;
            if (b == 'd') {
                t->detached = true;
                break;
            }
            out[o++] = CLI_TTY_ESCAPE;
            if (b != CLI_TTY_ESCAPE)
                out[o++] = (char)b;
        } else if (b == CLI_TTY_ESCAPE) {
            t->escape_pending = true;
        } else {
            out[o++] = (char)b;
        }
    }
    if (o > 0)
        wsc_send(&t->ws, WSC_BINARY, out, o);
}

int cli_tty_session(struct client *c, const struct cli_tty_req *req, bool *detached)
{
    struct cli_tty t = {.c = c, .req = req, .stdin_open = req->forward_stdin, .result = -1};
    const sigset_t *mask = req->sig ? &req->sig->wait_mask : NULL;
    int failures = 0, r;

    *detached = false;
    wsc_init(&t.ws);
    wsc_msg_init(&t.msg);
    r = cli_tty_connect(&t, false);
    if (r != 0) {
        t.result = r;
        goto done;
    }
    if (req->forward_stdin && isatty(0)) {
        r = cli_tty_raw_enter();
        if (r < 0)
            cli_tty_warn("cannot put the terminal in raw mode: %s", strerror(-r));
    }
    cli_winch_caught = 0;
    cli_tty_send_size(&t);

    for (;;) {
        bool lost = false;
        for (;;) {
            r = wsc_recv(&t.ws, &t.msg, 0);
            if (r == -ETIMEDOUT)
                break;
            if (r < 0 || t.msg.opcode == WSC_CLOSE) {
                lost = true;
                break;
            }
            failures = 0;
            if (t.msg.opcode == WSC_BINARY) {
                r = util_write_all(1, t.msg.data.data, t.msg.data.len);
                if (r < 0) { /* the local terminal is gone */
                    t.result = r == -EPIPE ? 128 + SIGPIPE : 128 + SIGHUP;
                    goto done;
                }
            } else {
                cli_tty_on_text(&t, t.msg.data.data, t.msg.data.len);
            }
            if (t.result >= 0)
                goto done;
        }
        if (cli_signal_caught) {
            t.result = 128 + cli_signal_caught;
            goto done;
        }
        if (lost || t.ws.fd < 0) {
            for (;;) {
                if (++failures > CLI_TTY_ATTEMPTS) {
                    cli_tty_warn("lost the connection to the daemon (gave up after %d attempts "
                                 "to reconnect)",
                                 CLI_TTY_ATTEMPTS);
                    t.result = CLI_EXIT_API;
                    goto done;
                }
                struct timespec ts = {
                    .tv_sec = 0, .tv_nsec = (long)(CLI_TTY_BACKOFF_MS << (failures - 1)) * 1000000};
                while (ts.tv_nsec >= 1000000000) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000;
                }
                ppoll(NULL, 0, &ts, mask);
                if (cli_signal_caught) {
                    t.result = 128 + cli_signal_caught;
                    goto done;
                }
                r = cli_tty_connect(&t, true);
                if (r == 0)
                    break;
                if (r > 0) {
                    t.result = r;
                    goto done;
                }
            }
            cli_tty_send_size(&t);
            continue;
        }
        if (cli_winch_caught) {
            cli_winch_caught = 0;
            cli_tty_send_size(&t);
        }

        struct pollfd pfd[2] = {
            {.fd = t.ws.fd, .events = (short)(POLLIN | (wsc_pending_out(&t.ws) ? POLLOUT : 0))},
            {.fd = 0, .events = POLLIN},
        };
        nfds_t n = t.stdin_open && wsc_pending_out(&t.ws) < CLI_TTY_OUT_HIGH ? 2 : 1;
        int pr = ppoll(pfd, n, NULL, mask);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            cli_tty_warn("poll: %s", strerror(errno));
            t.result = CLI_EXIT_API;
            goto done;
        }
        if (pfd[0].revents & POLLOUT)
            wsc_flush(&t.ws, 0);
        if (n == 2 && pfd[1].revents) {
            cli_tty_pump_stdin(&t, pfd[1].revents);
            if (t.detached) {
                t.result = 0;
                goto done;
            }
        }
    }

done:
    cli_tty_restore();
    if (t.detached) {
        *detached = true;
        wsc_flush(&t.ws, CLI_TTY_CLOSE_MS);
    }
    wsc_close(&t.ws, 1000, NULL, CLI_TTY_CLOSE_MS);
    wsc_free(&t.ws);
    wsc_msg_free(&t.msg);
    return t.result;
}
