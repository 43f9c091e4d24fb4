/*
 * cli_stream — a command's output streamed live over WebSocket (see docs/API.md, "Streaming"):
 *   exec mode:   GET /v1/sandboxes/{id}/exec/ws, first message {"type":"execute",...}
 *   attach mode: GET
 * /v1/sandboxes/{id}/commands/{cid}/stream?stdout_offset=&stderr_offset=&binary=1
 *
 * Output is asked for in binary form (data_b64: the exact bytes) and written to fd 1 and fd 2 as
 * it arrives. Every chunk carries its absolute offset, and the offsets written so far are kept,
 * so after a dropped connection the stream resumes exactly where it stopped (exec mode:
 * {"type":"reconnect","command_id","stdout_offset","stderr_offset"}; attach mode: the offsets in
 * the query) and nothing is lost or written twice. That is only possible because exec mode asks
 * for kill_on_disconnect=false: the command survives a dropped connection, and the CLI kills it
 * explicitly (a "kill" message, or POST .../kill) when it gives up on its own (a signal, a closed
 * stdout). In both modes the daemon delivers losslessly to an attached client: a slow reader
 * slows the command down instead of losing output, as with a local pipe.
 *
 * One loop multiplexes the socket, fd 0 (exec with forward_stdin: "input" messages, "eof" at
 * the end) and the signals (ppoll with the installed signal mask).
 */
#include "cli/cli_internal.h"
#include "core/util.h"
#include "cli/wsclient.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLI_STREAM_ATTEMPTS 5           /* reconnections in a row without receiving anything */
#define CLI_STREAM_BACKOFF_MS 100       /* first wait before reconnecting; doubles each time */
#define CLI_STREAM_SILENCE_MS 500       /* attach mode without follow: stop after this silence */
#define CLI_STREAM_STDIN_CHUNK 65536    /* bytes of stdin per input message */
#define CLI_STREAM_OUT_HIGH (256 << 10) /* stop reading stdin while this much is queued */
#define CLI_STREAM_CLOSE_MS 2000

static const char *const cli_stream_names[2] = {"stdout", "stderr"};

static int64_t cli_stream_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- output ------------------------------------------------------------------------------ */

/* Write the part of [offset, offset+n) of stream `s` that is past what was written. */
static int cli_output_data(struct cli_output *o, int s, uint64_t offset, const char *data, size_t n)
{
    uint64_t cur = o->off[s];
    if (offset + n <= cur)
        return 1; /* seen before (a reconnection resent it) */
    if (offset > cur) {
        fprintf(stderr, "warren: %llu bytes of %s were lost\n", (unsigned long long)(offset - cur),
                cli_stream_names[s]);
        cur = offset;
    }
    size_t skip = (size_t)(cur - offset);
    if (o->write_error == 0) {
        int r = util_write_all(s == 0 ? 1 : 2, data + skip, n - skip);
        if (r < 0) {
            o->write_error = r;
            return r;
        }
    }
    o->off[s] = offset + n;
    return 1;
}

int cli_output_handle(struct cli_output *o, json_t *msg, const char *type)
{
    int s;
    if (strcmp(type, "stdout") == 0) {
        s = 0;
    } else if (strcmp(type, "stderr") == 0) {
        s = 1;
    } else if (strcmp(type, "gap") == 0) {
        const char *name = json_string_value(json_object_get(msg, "stream"));
        json_t *joff = json_object_get(msg, "offset"), *jlost = json_object_get(msg, "lost");
        s = name && strcmp(name, "stderr") == 0 ? 1 : 0;
        if (!json_is_integer(joff) || !json_is_integer(jlost) || json_integer_value(joff) < 0 ||
            json_integer_value(jlost) < 0) {
            fprintf(stderr, "warren: malformed gap message from the daemon\n");
            return -EPROTO;
        }
        uint64_t end = (uint64_t)json_integer_value(joff) + (uint64_t)json_integer_value(jlost);
        if (end > o->off[s]) {
            fprintf(stderr,
                    "warren: %llu bytes of %s were lost (overwritten in the daemon's buffer "
                    "before they could be read)\n",
                    (unsigned long long)(end - o->off[s]), cli_stream_names[s]);
            o->off[s] = end;
        }
        return 1;
    } else {
        return 0;
    }
    json_t *joff = json_object_get(msg, "offset");
    json_t *b64 = json_object_get(msg, "data_b64"), *text = json_object_get(msg, "data");
    if (!json_is_integer(joff) || json_integer_value(joff) < 0 ||
        (!json_is_string(b64) && !json_is_string(text))) {
        fprintf(stderr, "warren: malformed %s message from the daemon\n", type);
        return -EPROTO;
    }
    uint64_t offset = (uint64_t)json_integer_value(joff);
    if (json_is_string(b64)) {
        buf_t bytes = BUF_INIT;
        int r = cli_b64_decode(&bytes, json_string_value(b64), json_string_length(b64));
        if (r < 0) {
            buf_free(&bytes);
            fprintf(stderr, "warren: malformed base64 in a %s message from the daemon\n", type);
            return -EPROTO;
        }
        r = cli_output_data(o, s, offset, bytes.data ? bytes.data : "", bytes.len);
        buf_free(&bytes);
        return r;
    }
    return cli_output_data(o, s, offset, json_string_value(text), json_string_length(text));
}

/* ---- the stream -------------------------------------------------------------------------- */

struct cli_stream {
    struct client *c;
    const struct cli_stream_req *req;
    const sigset_t *wait_mask; /* NULL: plain poll */
    struct wsc ws;
    struct wsc_msg msg;
    struct cli_output out;
    char *command_id; /* owned */
    bool started;     /* the command runs and command_id is known */
    bool stdin_open;  /* fd 0 is still to be read */
    bool abort;       /* we give up on our own: kill the command (kill_on_abort) */
    int result;       /* the exit status once decided, -1 before */
};

/* The exit status of a failure of ours. */
static int cli_stream_fail_status(const struct cli_stream *s)
{
    return s->req->execute ? CLI_EXIT_API : CLI_EXIT_FAIL;
}

static bool cli_stream_interrupted(const struct cli_stream *s)
{
    return s->req->sig && cli_signal_caught;
}

/* Sleep `ms` unless a signal arrives. */
static void cli_stream_sleep(const struct cli_stream *s, int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    if (s->wait_mask)
        ppoll(NULL, 0, &ts, s->wait_mask);
    else
        nanosleep(&ts, NULL);
}

static int cli_stream_send_json(struct cli_stream *s, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text)
        return -ENOMEM;
    int r = wsc_send(&s->ws, WSC_TEXT, text, strlen(text));
    free(text);
    return r;
}

static int cli_stream_send_eof(struct cli_stream *s)
{
    static const char eof[] = "{\"type\":\"eof\"}";
    return wsc_send(&s->ws, WSC_TEXT, eof, sizeof(eof) - 1);
}

enum { CLI_CONN_OK = 0, CLI_CONN_RETRY = -1 };

/* (Re)connect and send the opening messages. Returns CLI_CONN_OK, CLI_CONN_RETRY (a failure
 * worth another attempt; nothing printed) or an exit status > 0 (reported). */
static int cli_stream_connect(struct cli_stream *s, bool again)
{
    const struct cli_stream_req *req = s->req;
    struct client_response resp;
    buf_t path = BUF_INIT;
    int ret = CLI_CONN_OK;

    wsc_free(&s->ws);
    if (cli_path_sandbox(&path, req->sandbox) < 0)
        goto oom;
    if (req->execute) {
        if (buf_append_str(&path, "/exec/ws") < 0)
            goto oom;
    } else if (buf_append_str(&path, "/commands/") < 0 ||
               client_append_escaped(&path, req->command_id, 0) < 0 ||
               buf_appendf(&path, "/stream?stdout_offset=%llu&stderr_offset=%llu&binary=1",
                           (unsigned long long)s->out.off[0],
                           (unsigned long long)s->out.off[1]) < 0) {
        goto oom;
    }

    if (req->sig)
        s->c->cancel = &cli_signal_caught;
    int r = wsc_connect(&s->ws, s->c, path.data, &resp);
    s->c->cancel = NULL;
    s->ws.cancel = NULL; /* our own loop watches the signals */
    if (r == -EINTR) {
        ret = 128 + (cli_signal_caught ? cli_signal_caught : SIGINT);
    } else if (r == -EREMOTEIO) {
        cli_report_api_error(&resp, NULL);
        ret = cli_stream_fail_status(s);
    } else if (r < 0) {
        if (again) {
            ret = CLI_CONN_RETRY;
        } else if (s->c->connect_failed) {
            bool hint = r == -ECONNREFUSED || r == -ENOENT;
            fprintf(stderr, "warren: cannot reach the daemon at %s: %s%s\n", s->c->url, s->ws.error,
                    hint ? " (is 'warren serve' running?)" : "");
            ret = CLI_EXIT_FAIL;
        } else {
            fprintf(stderr, "warren: GET %s at %s: %s\n", path.data, s->c->url, s->ws.error);
            ret = cli_stream_fail_status(s);
        }
    }
    client_response_free(&resp);
    buf_free(&path);
    if (ret != CLI_CONN_OK || !req->execute)
        return ret;

    /* The opening messages of exec/ws. */
    json_t *first;
    if (!again) {
        first = json_copy(req->execute);
        if (first)
            json_object_set_new(first, "type", json_string("execute"));
    } else {
        first = json_pack("{s:s, s:s, s:I, s:I}", "type", "reconnect", "command_id", s->command_id,
                          "stdout_offset", (json_int_t)s->out.off[0], "stderr_offset",
                          (json_int_t)s->out.off[1]);
    }
    if (!first)
        goto oom_nobuf;
    json_object_set_new(first, "binary", json_true());
    json_object_set_new(first, "kill_on_disconnect", json_false());
    r = cli_stream_send_json(s, first);
    /* Without stdin forwarding the command reads an empty stdin. The eof is sent again after a
     * reconnection (it may have been lost; closing twice does nothing). */
    if (r == 0 && !s->stdin_open)
        r = cli_stream_send_eof(s);
    if (r == -ENOMEM)
        goto oom_nobuf;
    /* A send failure shows up as a lost connection in the loop. */
    return CLI_CONN_OK;
oom:
    buf_free(&path);
oom_nobuf:
    fprintf(stderr, "warren: out of memory\n");
    return cli_stream_fail_status(s);
}

/* The exit status of an exit message. */
static int cli_stream_exit_status(const struct cli_stream *s, json_t *msg)
{
    json_t *jcode = json_object_get(msg, "exit_code");
    json_t *jsig = json_object_get(msg, "signal");
    int code;
    if (json_is_integer(jcode))
        code = (int)json_integer_value(jcode);
    else if (json_is_integer(jsig))
        code = 128 + (int)json_integer_value(jsig);
    else
        code = CLI_EXIT_API;
    if (code < 0 || code > 255)
        code = CLI_EXIT_API;
    if (json_is_true(json_object_get(msg, "timed_out"))) {
        if (s->req->timeout > 0)
            fprintf(stderr, "warren: command timed out after %g seconds\n", s->req->timeout);
        else
            fprintf(stderr, "warren: command timed out\n");
        code = CLI_EXIT_TIMEOUT;
    }
    return code;
}

/* Handle one text message. Sets s->result when the stream is over. */
static void cli_stream_on_text(struct cli_stream *s, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *msg = json_loadb(data, len, 0, &jerr);
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!json_is_object(msg) || !type) {
        fprintf(stderr, "warren: malformed message from the daemon\n");
        json_decref(msg);
        return;
    }
    int r = cli_output_handle(&s->out, msg, type);
    if (r < 0 && r != -EPROTO) {
        if (r != -EPIPE)
            fprintf(stderr, "warren: cannot write the output: %s\n", strerror(-r));
        s->result = r == -EPIPE ? 128 + SIGPIPE : cli_stream_fail_status(s);
        s->abort = true;
    } else if (r != 0) {
        /* output handled */
    } else if (strcmp(type, "started") == 0) {
        const char *cid = json_string_value(json_object_get(msg, "command_id"));
        if (cid && !s->command_id)
            s->command_id = strdup(cid);
        s->started = s->command_id != NULL;
    } else if (strcmp(type, "exit") == 0) {
        s->result = s->req->execute ? cli_stream_exit_status(s, msg) : 0;
    } else if (strcmp(type, "error") == 0) {
        const char *etype = json_string_value(json_object_get(msg, "error_type"));
        const char *emsg = json_string_value(json_object_get(msg, "message"));
        if (!etype)
            etype = "error";
        if (strcmp(etype, "conflict") == 0 && s->started) {
            /* Input after the command closed its stdin: dropped, as with a closed pipe. */
        } else if ((s->req->execute && !s->started) || strcmp(etype, "command_failed") == 0 ||
                   strcmp(etype, "not_found") == 0) {
            fprintf(stderr, "warren: %s\n", emsg ? emsg : etype);
            s->result = cli_stream_fail_status(s);
        } else {
            fprintf(stderr, "warren: the daemon said: %s\n", emsg ? emsg : etype);
        }
    }
    json_decref(msg);
}

/* Read a piece of fd 0 and send it (or the eof). */
static void cli_stream_pump_stdin(struct cli_stream *s, short revents)
{
    char chunk[CLI_STREAM_STDIN_CHUNK];
    ssize_t n = 0;
    if (!(revents & POLLNVAL)) {
        n = read(0, chunk, sizeof(chunk));
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            return;
        if (n < 0 && errno != EBADF)
            fprintf(stderr, "warren: cannot read stdin: %s\n", strerror(errno));
    }
    if (n <= 0) {
        s->stdin_open = false;
        cli_stream_send_eof(s);
        return;
    }
    buf_t m = BUF_INIT;
    if (buf_append_str(&m, "{\"type\":\"input\",\"data_b64\":\"") < 0 ||
        cli_b64_encode(&m, chunk, (size_t)n) < 0 || buf_append_str(&m, "\"}") < 0) {
        fprintf(stderr, "warren: out of memory\n");
        s->result = cli_stream_fail_status(s);
        s->abort = true;
    } else {
        wsc_send(&s->ws, WSC_TEXT, m.data, m.len);
    }
    buf_free(&m);
}

/* We give up: make sure the command does not outlive us. */
static void cli_stream_kill(struct cli_stream *s)
{
    static const char kill_msg[] = "{\"type\":\"kill\"}";
    if (s->ws.fd >= 0 && !s->ws.close_sent &&
        wsc_send(&s->ws, WSC_TEXT, kill_msg, sizeof(kill_msg) - 1) == 0 &&
        wsc_flush(&s->ws, 1000) == 0)
        return;
    if (!s->command_id)
        return;
    buf_t path = BUF_INIT;
    struct client_response resp;
    if (cli_path_sandbox(&path, s->req->sandbox) == 0 && buf_append_str(&path, "/commands/") == 0 &&
        client_append_escaped(&path, s->command_id, 0) == 0 &&
        buf_append_str(&path, "/kill") == 0) {
        s->c->cancel = NULL;
        client_request(s->c, "POST", path.data, "application/json", "{}", 2, &resp);
        client_response_free(&resp);
    }
    buf_free(&path);
}

static bool cli_stream_reached(const struct cli_stream *s)
{
    return !s->req->execute && !s->req->follow && s->out.off[0] >= s->req->until[0] &&
           s->out.off[1] >= s->req->until[1];
}

int cli_stream_run(struct client *c, const struct cli_stream_req *req)
{
    struct cli_stream s = {
        .c = c,
        .req = req,
        .wait_mask = req->sig ? &req->sig->wait_mask : NULL,
        .stdin_open = req->execute && req->forward_stdin,
        .result = -1,
    };
    int failures = 0;
    int64_t last_msg;

    wsc_init(&s.ws);
    wsc_msg_init(&s.msg);
    if (cli_stream_reached(&s))
        return 0;
    if (cli_stream_interrupted(&s))
        return 128 + cli_signal_caught;
    int r = cli_stream_connect(&s, false);
    if (r != CLI_CONN_OK) {
        s.result = r;
        goto done;
    }
    last_msg = cli_stream_now_ms();

    for (;;) {
        bool lost = false;

        /* Everything that has arrived. */
        for (;;) {
            r = wsc_recv(&s.ws, &s.msg, 0);
            if (r == -ETIMEDOUT)
                break;
            if (r < 0 || s.msg.opcode == WSC_CLOSE) {
                lost = true;
                break;
            }
            failures = 0;
            last_msg = cli_stream_now_ms();
            if (s.msg.opcode == WSC_TEXT)
                cli_stream_on_text(&s, s.msg.data.data, s.msg.data.len);
            if (s.result >= 0)
                goto done;
            if (cli_stream_reached(&s)) {
                s.result = 0;
                goto done;
            }
        }
        if (cli_stream_interrupted(&s)) {
            s.result = 128 + cli_signal_caught;
            s.abort = true;
            goto done;
        }
        if (lost || s.ws.fd < 0) {
            if (req->execute && !s.started) {
                fprintf(stderr,
                        "warren: lost the connection to the daemon before the command "
                        "started: %s\n",
                        s.ws.error[0] ? s.ws.error : "connection closed");
                s.result = CLI_EXIT_API;
                goto done;
            }
            for (;;) {
                if (++failures > CLI_STREAM_ATTEMPTS) {
                    fprintf(stderr,
                            "warren: lost the connection to the daemon (gave up after %d "
                            "attempts to reconnect)\n",
                            CLI_STREAM_ATTEMPTS);
                    s.result = cli_stream_fail_status(&s);
                    goto done;
                }
                cli_stream_sleep(&s, CLI_STREAM_BACKOFF_MS << (failures - 1));
                if (cli_stream_interrupted(&s)) {
                    s.result = 128 + cli_signal_caught;
                    s.abort = true;
                    goto done;
                }
                r = cli_stream_connect(&s, true);
                if (r == CLI_CONN_OK)
                    break;
                if (r > 0) {
                    s.result = r;
                    goto done;
                }
            }
            last_msg = cli_stream_now_ms();
            continue;
        }

        /* Wait for the socket, stdin or a signal. */
        struct pollfd pfd[2] = {
            {.fd = s.ws.fd, .events = (short)(POLLIN | (wsc_pending_out(&s.ws) ? POLLOUT : 0))},
            {.fd = 0, .events = POLLIN},
        };
        nfds_t n = s.stdin_open && wsc_pending_out(&s.ws) < CLI_STREAM_OUT_HIGH ? 2 : 1;
        struct timespec ts, *tsp = NULL;
        if (!req->execute && !req->follow) {
            int64_t left = last_msg + CLI_STREAM_SILENCE_MS - cli_stream_now_ms();
            if (left <= 0) {
                s.result = 0;
                goto done;
            }
            ts.tv_sec = left / 1000;
            ts.tv_nsec = (long)(left % 1000) * 1000000;
            tsp = &ts;
        }
        int pr = ppoll(pfd, n, tsp, s.wait_mask);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "warren: poll: %s\n", strerror(errno));
            s.result = cli_stream_fail_status(&s);
            s.abort = true;
            goto done;
        }
        if (pr == 0)
            continue; /* the silence is checked above */
        if (pfd[0].revents & POLLOUT)
            wsc_flush(&s.ws, 0); /* a failure shows up in wsc_recv */
        if (n == 2 && pfd[1].revents)
            cli_stream_pump_stdin(&s, pfd[1].revents);
        if (s.result >= 0)
            goto done;
    }

done:
    if (s.abort && req->kill_on_abort)
        cli_stream_kill(&s);
    wsc_close(&s.ws, 1000, NULL, CLI_STREAM_CLOSE_MS);
    wsc_free(&s.ws);
    wsc_msg_free(&s.msg);
    free(s.command_id);
    return s.result;
}
