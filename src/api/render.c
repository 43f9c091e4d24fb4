/*
 * render — the API's JSON for the session layer's objects (docs/API.md): sandboxes, detached
 * commands, shells, terminals, templates. Times are RFC 3339 UTC; absent values are null.
 */
#include "api/api.h"
#include "core/util.h"
#include "session/command.h"
#include "session/network.h"
#include "session/shell.h"
#include "session/templates.h"
#include "session/terminal.h"

json_t *api_sandbox_json(const struct sandbox *sb)
{
    char created[32], active[32], expires[32], restored[32];
    double expires_at = sandbox_expires_at(sb);
    util_format_time(sb->created_at, created, sizeof(created));
    util_format_time(sb->restored_at, restored, sizeof(restored));
    util_format_time(sb->last_active_at, active, sizeof(active));
    util_format_time(expires_at, expires, sizeof(expires));
    const struct sandbox_image *img = sb->image;
    return json_pack(
        "{s:s, s:s, s:s, s:s, s:o, s:o, s:{s:f, s:I, s:I, s:I}, s:o, s:O, s:O, s:O, "
        "s:o, s:s, s:s, s:s, s:f, s:f, s:o, s:o, s:o}",
        "id", sb->id, "name", sb->name, "state", sandbox_state_str(sb), "template",
        sb->template_name, "image", img && img->image[0] ? json_string(img->image) : json_null(),
        "image_digest", img && img->digest[0] ? json_string(img->digest) : json_null(), "resources",
        "cpus", sb->res.cpus, "memory_mib", (json_int_t)sb->res.memory_mib, "pids",
        (json_int_t)sb->res.pids, "disk_mib", (json_int_t)sb->res.disk_mib, "network",
        network_to_json(sb->network), "labels", sb->labels, "env", sb->env, "secrets", sb->secrets,
        "session_id", sb->session_id[0] ? json_string(sb->session_id) : json_null(), "created_at",
        created, "last_active_at", active, "node", sb->reg->node, "ttl_s", sb->ttl_s,
        "idle_timeout_s", sb->idle_timeout_s, "expires_at",
        expires_at > 0 ? json_string(expires) : json_null(), "restored_at",
        sb->restored_at > 0 ? json_string(restored) : json_null(), "volumes",
        sb->volumes ? json_incref(sb->volumes) : json_array());
}

json_t *api_released_json(const json_t *rec)
{
    char created[32], deleted[32];
    util_format_time(json_number_value(json_object_get(rec, "created_at_s")), created,
                     sizeof(created));
    util_format_time(json_number_value(json_object_get(rec, "deleted_at_s")), deleted,
                     sizeof(deleted));
    json_t *session = json_object_get(rec, "session_id");
    return json_pack("{s:O?, s:O?, s:s, s:O?, s:O?, s:O?, s:O?, s:s, s:s, s:O?}", "id",
                     json_object_get(rec, "id"), "name", json_object_get(rec, "name"), "state",
                     "deleted", "template", json_object_get(rec, "template"), "resources",
                     json_object_get(rec, "resources"), "labels", json_object_get(rec, "labels"),
                     "session_id", session ? session : json_null(), "created_at", created,
                     "deleted_at", deleted, "node", json_object_get(rec, "node"));
}

json_t *api_sandbox_json_usage(const struct sandbox *sb)
{
    json_t *o = api_sandbox_json(sb);
    struct sandbox_usage u;
    if (o && sandbox_usage(sb, &u) == 0) {
        json_t *usage = json_pack(
            "{s:I, s:I, s:f, s:I}", "memory_bytes", (json_int_t)u.memory_bytes, "pids",
            (json_int_t)u.pids, "cpu_seconds", u.cpu_seconds, "oom_kills", (json_int_t)u.oom_kills);
        if (usage && u.disk_bytes >= 0)
            json_object_set_new(usage, "disk_bytes", json_integer((json_int_t)u.disk_bytes));
        json_object_set_new(o, "usage", usage);
    }
    return o;
}

json_t *api_command_json(const struct command *c)
{
    struct command_info i;
    char started[32], ended[32];
    command_info(c, &i);
    util_format_time(i.started_at, started, sizeof(started));
    util_format_time(i.ended_at, ended, sizeof(ended));
    int running = i.state == CMD_RUNNING;
    json_t *o = json_pack("{s:s, s:i, s:s, s:o, s:o, s:b, s:s, s:o, s:I, s:I}", "command_id", i.id,
                          "pid", (int)i.pid, "state",
                          running                 ? "running"
                          : i.state == CMD_EXITED ? "exited"
                                                  : "failed",
                          "exit_code", running ? json_null() : json_integer(i.exit_code), "signal",
                          i.signal ? json_integer(i.signal) : json_null(), "timed_out", i.timed_out,
                          "started_at", started, "ended_at",
                          running ? json_null() : json_string(ended), "stdout_bytes",
                          (json_int_t)i.stdout_bytes, "stderr_bytes", (json_int_t)i.stderr_bytes);
    if (o)
        json_object_update(o, (json_t *)i.describe);
    if (o && i.error)
        json_object_set_new(o, "error", json_string(i.error));
    return o;
}

json_t *api_shell_json(const struct shell *sh)
{
    struct shell_info i;
    char created[32];
    shell_info(sh, &i);
    util_format_time(i.created_at, created, sizeof(created));
    return json_pack("{s:s, s:s, s:s, s:i}", "shell_id", i.id, "state", i.state, "created_at",
                     created, "queued", i.queued);
}

json_t *api_terminal_json(const struct terminal *t)
{
    struct terminal_info i;
    char created[32];
    terminal_info(t, &i);
    util_format_time(i.created_at, created, sizeof(created));
    return json_pack("{s:s, s:s, s:o, s:i, s:i, s:b, s:s}", "terminal_id", i.id, "state",
                     i.running ? "running" : "exited", "exit_code",
                     i.running ? json_null() : json_integer(i.exit_code), "cols", i.cols, "rows",
                     i.rows, "recording", i.recording, "created_at", created);
}

json_t *api_template_json(const struct template *tpl)
{
    if (!tpl)
        return json_pack("{s:s, s:n, s:n, s:s, s:I, s:i, s:n, s:n, s:n, s:n}", "name", "host",
                         "image", "digest", "state", "ready", "size_bytes", (json_int_t)0, "layers",
                         0, "progress", "error", "config", "created_at");
    char created[32];
    util_format_time(tpl->created_at, created, sizeof(created));
    int pulling = tpl->state == TEMPLATE_PULLING;
    return json_pack(
        "{s:s, s:o, s:o, s:s, s:I, s:i, s:o, s:o, s:o, s:s}", "name", tpl->name, "image",
        tpl->image[0] ? json_string(tpl->image) : json_null(), "digest",
        tpl->digest[0] ? json_string(tpl->digest) : json_null(), "state",
        template_state_name(tpl->state), "size_bytes", (json_int_t)tpl->size_bytes, "layers",
        (int)tpl->n_layers, "progress",
        json_pack("{s:I, s:I}", "bytes_done",
                  (json_int_t)(pulling ? atomic_load(&tpl->bytes_done) : tpl->size_bytes),
                  "bytes_total",
                  (json_int_t)(pulling ? atomic_load(&tpl->bytes_total) : tpl->size_bytes)),
        "error", tpl->state == TEMPLATE_FAILED ? json_string(tpl->error) : json_null(), "config",
        tpl->config ? json_incref(tpl->config) : json_null(), "created_at", created);
}
