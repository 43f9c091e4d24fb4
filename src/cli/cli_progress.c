/*
 * cli_progress — the progress bar of long transfers (cp, pull, import, build): one line on
 * stderr, redrawn at most 10 times a second, only when stderr is a terminal.
 */
#include "cli/cli_internal.h"

#include <time.h>

#define PROGRESS_INTERVAL 0.1 /* seconds between redraws */

static double progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void cli_human_bytes(char *out, size_t n, double v)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, n, "%.0f %s", v, units[u]);
    else
        snprintf(out, n, "%.1f %s", v, units[u]);
}

void cli_progress_start(struct cli_progress *p, uint64_t total)
{
    p->total = total;
    p->done = 0;
    p->start = progress_now();
    p->last = 0;
}

static void progress_draw(struct cli_progress *p, bool final)
{
    if (!p->enabled || (p->total ? p->total : p->done) <= p->min_bytes)
        return;
    double now = progress_now();
    if (!final && now - p->last < PROGRESS_INTERVAL)
        return;
    p->last = now;
    double elapsed = now - p->start;
    char done[32], total[32], rate[32];
    cli_human_bytes(done, sizeof(done), (double)p->done);
    cli_human_bytes(rate, sizeof(rate), elapsed > 0 ? (double)p->done / elapsed : 0);
    const char *label = p->label ? p->label : "";
    const char *sep = p->label ? "  " : "";
    if (p->total) {
        cli_human_bytes(total, sizeof(total), (double)p->total);
        unsigned pct = (unsigned)(p->done >= p->total ? 100 : p->done * 100 / p->total);
        fprintf(stderr, "\r%s%s%s / %s  %3u%%  %s/s\033[K", label, sep, done, total, pct, rate);
    } else {
        fprintf(stderr, "\r%s%s%s  %s/s\033[K", label, sep, done, rate);
    }
    fflush(stderr);
    p->shown = true;
}

void cli_progress_add(struct cli_progress *p, size_t n)
{
    p->done += n;
    progress_draw(p, false);
}

void cli_progress_set(struct cli_progress *p, uint64_t done, uint64_t total)
{
    p->done = done;
    p->total = total;
    progress_draw(p, false);
}

void cli_progress_finish(struct cli_progress *p, bool ok)
{
    if (ok)
        progress_draw(p, true);
    if (p->shown) {
        fputc('\n', stderr);
        fflush(stderr);
    }
    p->shown = false;
}
