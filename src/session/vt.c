/*
 * vt — a terminal screen model on libvterm. See vt.h.
 */
#include "session/vt.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vterm.h>

#include "core/buf.h"
#include "core/util.h"

/* libvterm marks the right half of a wide character with this value in chars[0]. */
#define VT_WIDE_TAIL ((uint32_t)-1)
/* Longest UTF-8 text of one cell: VTERM_MAX_CHARS_PER_CELL code points of 4 bytes. */
#define VT_CELL_TEXT_MAX (VTERM_MAX_CHARS_PER_CELL * 4)

/*
 * One scrollback line, in a single allocation. `text` is the line's UTF-8 text with trailing blanks
 * trimmed. To rebuild cells when the line moves back onto the screen, `lens` (right after the
 * text's NUL) gives each of the `ncells` cells' byte count in `text`: 0 for the right half of a
 * wide character. Lines made only of single-byte cells (most of them) need no `lens`: it is NULL.
 */
struct sb_line {
    uint32_t ncells;
    uint32_t len;
    unsigned char *lens;
    char text[];
};

/*
 * The input filter. libvterm 0.1.4 (Debian 12) has bugs that program output can trigger, and a
 * sandboxed program must not be able to crash, hang or corrupt the daemon through its terminal:
 *   - a CSI with more than 16 parameters writes past its argument array (heap overflow);
 *   - REP (CSI Pn b) loops forever when the last glyph had width 0 or -1 (e.g. "ESC[b" first);
 *   - U+0080..U+009F encoded in UTF-8 print as glyphs of width -1, moving the cursor backwards
 *     and off-screen;
 *   - parameters overflow its `long` arithmetic, giving negative counts.
 * So the output goes through a byte-level copy of libvterm's own parser state machine (parser.c)
 * that passes everything through unchanged except: CSI sequences are held until complete and
 * then dropped if they have too many parameters, have numbers clamped, and REP is replaced by the
 * repeated character itself (as xterm's REP behaves); text is re-validated as UTF-8 (invalid
 * bytes become U+FFFD, C1 code points are dropped, and an incomplete character at the end of a
 * write is held for the next one). Because the state machine is the same, the filter always knows
 * what state libvterm is in; to abandon a held CSI it sends CAN, which returns libvterm to its
 * ground state. (State that goes stale on a resize is repaired in vt_resize.)
 */
enum filter_state { F_NORMAL, F_ESC, F_CSI, F_OSC, F_DCS, F_OSC_ESC, F_DCS_ESC };
enum csi_phase { CSI_LEADER, CSI_ARGS, CSI_INTERMED };

/* Longest CSI body (between "ESC [" and the final byte) passed on; longer ones are dropped. */
#define VT_CSI_MAX 128
/* Most parameter separators passed on (libvterm has room for 16 parameters). */
#define VT_CSI_MAX_SEPS 12
/* Numeric parameters are clamped to this: more than any screen size, and no overflow. */
#define VT_CSI_MAX_NUM 65535
#define CAN "\x18"

struct vt_filter {
    enum filter_state state;
    /* F_ESC: the intermediates seen (already passed on), for re-entering the state after an
     * injection. */
    char esc_inter[8];
    size_t n_esc_inter;
    /* F_CSI: the held body. libvterm has seen only the ESC. */
    char csi[VT_CSI_MAX];
    size_t n_csi;
    enum csi_phase phase;
    int csi_overflow, csi_leader, csi_inter, csi_seps;
    /* An incomplete UTF-8 character at the end of the previous write (F_NORMAL only). */
    unsigned char pend[4];
    size_t n_pend;
    /* The last graphic character passed on, for REP. */
    char last[4];
    size_t n_last;
};

struct vt {
    VTerm *term;
    VTermScreen *screen;
    VTermScreenCallbacks callbacks; /* libvterm keeps a pointer to it */
    /* Scrollback: a circular array of `history` slots holding `sb_count` lines; sb_head is the
     * oldest. */
    struct sb_line **sb;
    size_t history;
    size_t sb_head;
    size_t sb_count;
    buf_t replies;
    VTermScreenCell *row_cells; /* scratch row for reading the screen, `row_cells_n` long */
    int row_cells_n;
    struct vt_filter filter;
};

static int valid_size(int rows, int cols)
{
    /* libvterm 0.1.4 writes through a NULL pointer when a wide character is printed in a
     * one-column terminal, hence the minimum of two columns. */
    return rows >= 1 && cols >= VT_MIN_COLS && rows <= VT_MAX_DIM && cols <= VT_MAX_DIM;
}

/* Encodes one code point; anything that is not a Unicode scalar value becomes U+FFFD. */
static size_t utf8_put(uint32_t c, char *out)
{
    if (c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        c = 0xFFFD;
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | c >> 12);
        out[1] = (char)(0x80 | (c >> 6 & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | c >> 18);
    out[1] = (char)(0x80 | (c >> 12 & 0x3F));
    out[2] = (char)(0x80 | (c >> 6 & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* Decodes one code point of text we encoded ourselves (so known to be valid). */
static size_t utf8_get(const unsigned char *s, uint32_t *c)
{
    if (s[0] < 0x80) {
        *c = s[0];
        return 1;
    }
    if (s[0] < 0xE0) {
        *c = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
        return 2;
    }
    if (s[0] < 0xF0) {
        *c = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        return 3;
    }
    *c = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
         (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    return 4;
}

/* The text of one cell into out (VT_CELL_TEXT_MAX bytes); `tail` says the cell is the right half of
 * a wide character, which has no text of its own. An erased cell reads as a space. */
static size_t cell_text(const VTermScreenCell *cell, int tail, char *out)
{
    if (tail || cell->chars[0] == VT_WIDE_TAIL)
        return 0;
    if (cell->chars[0] == 0) {
        out[0] = ' ';
        return 1;
    }
    size_t n = 0;
    for (int i = 0; i < VTERM_MAX_CHARS_PER_CELL && cell->chars[i]; i++)
        n += utf8_put(cell->chars[i], out + n);
    return n;
}

static int cell_blank(const VTermScreenCell *cell)
{
    return cell->chars[0] == 0 || (cell->chars[0] == ' ' && cell->chars[1] == 0);
}

/* Number of cells up to and including the last non-blank one. */
static int trimmed_cells(const VTermScreenCell *cells, int cols)
{
    /* The right half of a wide character belongs to it, whatever it holds. */
    while (cols > 0 && cell_blank(&cells[cols - 1]) && !(cols >= 2 && cells[cols - 2].width == 2))
        cols--;
    return cols;
}

/* Appends the trimmed text of a row of cells. */
static int append_row_text(buf_t *out, const VTermScreenCell *cells, int cols)
{
    int n = trimmed_cells(cells, cols);
    int tail = 0;
    int rc = buf_reserve(out, 0); /* an empty row still yields a valid (empty) string */
    for (int i = 0; i < n && rc == 0; i++) {
        char t[VT_CELL_TEXT_MAX];
        size_t len = cell_text(&cells[i], tail, t);
        tail = cells[i].width == 2;
        rc = buf_append(out, t, len);
    }
    return rc;
}

static struct sb_line *sb_line_new(const VTermScreenCell *cells, int cols)
{
    int n = trimmed_cells(cells, cols);
    char(*texts)[VT_CELL_TEXT_MAX] = malloc((size_t)(n ? n : 1) * VT_CELL_TEXT_MAX);
    unsigned char *lens = malloc((size_t)(n ? n : 1));
    struct sb_line *line = NULL;
    if (!texts || !lens)
        goto out;
    size_t total = 0;
    int simple = 1;
    int tail = 0;
    for (int i = 0; i < n; i++) {
        lens[i] = (unsigned char)cell_text(&cells[i], tail, texts[i]);
        tail = cells[i].width == 2;
        total += lens[i];
        if (lens[i] != 1)
            simple = 0;
    }
    line = malloc(sizeof(*line) + total + 1 + (simple ? 0 : (size_t)n));
    if (!line)
        goto out;
    line->ncells = (uint32_t)n;
    line->len = (uint32_t)total;
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        memcpy(line->text + pos, texts[i], lens[i]);
        pos += lens[i];
    }
    line->text[pos] = '\0';
    line->lens = NULL;
    if (!simple) {
        line->lens = (unsigned char *)line->text + total + 1;
        memcpy(line->lens, lens, (size_t)n);
    }
out:
    free(texts);
    free(lens);
    return line;
}

/* Rebuilds `cols` cells from a scrollback line (the terminal may be narrower or wider than when
 * the line was pushed: it is cut or padded with blanks). */
static void sb_line_to_cells(const struct sb_line *line, VTermScreenCell *cells, int cols,
                             VTermColor fg, VTermColor bg)
{
    for (int i = 0; i < cols; i++) {
        memset(&cells[i], 0, sizeof(cells[i]));
        cells[i].width = 1;
        cells[i].fg = fg;
        cells[i].bg = bg;
    }
    const unsigned char *p = (const unsigned char *)line->text;
    for (uint32_t i = 0; i < line->ncells; i++) {
        size_t len = line->lens ? line->lens[i] : 1;
        const unsigned char *end = p + len;
        int wide = line->lens && i + 1 < line->ncells && line->lens[i + 1] == 0;
        if (len > 0 && (int)i < cols && (!wide || (int)i + 1 < cols)) {
            /* Keep one slot for the terminator: some libvterm versions copy chars until a 0. */
            for (int k = 0; p < end && k < VTERM_MAX_CHARS_PER_CELL - 1; k++)
                p += utf8_get(p, &cells[i].chars[k]);
            cells[i].width = wide ? 2 : 1;
        }
        p = end;
    }
}

static void sb_clear(struct vt *vt)
{
    for (size_t i = 0; i < vt->sb_count; i++)
        free(vt->sb[(vt->sb_head + i) % vt->history]);
    vt->sb_head = 0;
    vt->sb_count = 0;
}

static int on_sb_pushline(int cols, const VTermScreenCell *cells, void *user)
{
    struct vt *vt = user;
    if (vt->history == 0)
        return 0;
    struct sb_line *line = sb_line_new(cells, cols);
    if (!line)
        return 0; /* the line is lost; the screen itself is unaffected */
    if (vt->sb_count == vt->history) {
        free(vt->sb[vt->sb_head]);
        vt->sb[vt->sb_head] = line;
        vt->sb_head = (vt->sb_head + 1) % vt->history;
    } else {
        vt->sb[(vt->sb_head + vt->sb_count) % vt->history] = line;
        vt->sb_count++;
    }
    return 1;
}

static int on_sb_popline(int cols, VTermScreenCell *cells, void *user)
{
    struct vt *vt = user;
    if (vt->sb_count == 0)
        return 0;
    size_t idx = (vt->sb_head + vt->sb_count - 1) % vt->history;
    VTermColor fg, bg;
    vterm_state_get_default_colors(vterm_obtain_state(vt->term), &fg, &bg);
    sb_line_to_cells(vt->sb[idx], cells, cols, fg, bg);
    free(vt->sb[idx]);
    vt->sb[idx] = NULL;
    vt->sb_count--;
    return 1;
}

static void on_output(const char *s, size_t len, void *user)
{
    struct vt *vt = user;
    if (vt->replies.len > VT_MAX_REPLIES || len > VT_MAX_REPLIES - vt->replies.len)
        return;
    (void)buf_append(&vt->replies, s, len); /* on ENOMEM the reply is lost, as on a full buffer */
}

struct vt *vt_new(int rows, int cols, size_t history)
{
    if (!valid_size(rows, cols)) {
        errno = EINVAL;
        return NULL;
    }
    struct vt *vt = calloc(1, sizeof(*vt));
    if (!vt)
        goto fail;
    buf_init(&vt->replies);
    vt->history = history;
    if (history > 0) {
        vt->sb = calloc(history, sizeof(*vt->sb));
        if (!vt->sb)
            goto fail;
    }
    vt->term = vterm_new(rows, cols);
    if (!vt->term)
        goto fail;
    vterm_set_utf8(vt->term, 1);
    vterm_output_set_callback(vt->term, on_output, vt);
    vt->screen = vterm_obtain_screen(vt->term);
    if (!vt->screen)
        goto fail;
    vterm_screen_enable_altscreen(vt->screen, 1);
    vt->callbacks.sb_pushline = on_sb_pushline;
    vt->callbacks.sb_popline = on_sb_popline;
    vterm_screen_set_callbacks(vt->screen, &vt->callbacks, vt);
    vterm_screen_reset(vt->screen, 1);
    return vt;
fail:
    vt_free(vt);
    errno = ENOMEM;
    return NULL;
}

void vt_free(struct vt *vt)
{
    if (!vt)
        return;
    if (vt->term)
        vterm_free(vt->term);
    if (vt->sb) {
        sb_clear(vt);
        free(vt->sb);
    }
    buf_free(&vt->replies);
    free(vt->row_cells);
    free(vt);
}

/* Output to libvterm goes through a small staging buffer; units (a character, a sequence) are
 * never split across writes. */
struct out {
    struct vt *vt;
    size_t n;
    char buf[4096];
};

static void out_write(struct vt *vt, const char *p, size_t n)
{
    /* libvterm consumes everything it is given (partial sequences wait in its parser). */
    while (n > 0) {
        size_t k = vterm_input_write(vt->term, p, n);
        if (k == 0)
            break;
        p += k;
        n -= k;
    }
}

static void out_flush(struct out *o)
{
    out_write(o->vt, o->buf, o->n);
    o->n = 0;
}

static void out_put(struct out *o, const void *p, size_t n)
{
    if (o->n + n > sizeof(o->buf))
        out_flush(o);
    if (n > sizeof(o->buf)) {
        out_write(o->vt, p, n);
        return;
    }
    memcpy(o->buf + o->n, p, n);
    o->n += n;
}

/* Passes on one graphic character (valid UTF-8, n <= 4 bytes). */
static void put_char(struct vt_filter *f, struct out *o, const void *p, size_t n)
{
    const unsigned char *u = p;
    if (n == 2 && u[0] == 0xC2 && u[1] < 0xA0)
        return; /* C1 control as a code point: libvterm would print it with width -1 */
    out_put(o, p, n);
    memcpy(f->last, p, n);
    f->n_last = n;
}

static void put_replacement(struct vt_filter *f, struct out *o)
{
    put_char(f, o, "\xef\xbf\xbd", 3);
}

/* REP: the last graphic character `count` times, at most a screenful. */
static void emulate_rep(struct vt *vt, struct out *o, long count)
{
    int rows, cols;
    vterm_get_size(vt->term, &rows, &cols);
    if (count < 1)
        count = 1;
    if (count > (long)rows * cols)
        count = (long)rows * cols;
    for (long i = 0; i < count && vt->filter.n_last > 0; i++)
        out_put(o, vt->filter.last, vt->filter.n_last);
}

/* A complete CSI with final byte `final`: pass it on (numbers clamped), drop it or emulate it. */
static void csi_dispatch(struct vt *vt, struct out *o, char final)
{
    struct vt_filter *f = &vt->filter;
    if (f->csi_overflow || f->csi_seps > VT_CSI_MAX_SEPS) {
        out_put(o, CAN, 1);
        return;
    }
    if (final == 'b' && !f->csi_leader && !f->csi_inter) {
        long count = 0;
        for (size_t i = 0; i < f->n_csi && f->csi[i] >= '0' && f->csi[i] <= '9'; i++)
            count = count < VT_CSI_MAX_NUM ? count * 10 + (f->csi[i] - '0') : count;
        out_put(o, CAN, 1);
        emulate_rep(vt, o, count);
        return;
    }
    /* Rebuild "[" body final with every run of digits clamped. */
    char seq[VT_CSI_MAX + 2];
    size_t n = 0;
    seq[n++] = '[';
    for (size_t i = 0; i < f->n_csi;) {
        if (f->csi[i] < '0' || f->csi[i] > '9') {
            seq[n++] = f->csi[i++];
            continue;
        }
        size_t j = i;
        long v = 0;
        while (j < f->n_csi && f->csi[j] >= '0' && f->csi[j] <= '9') {
            if (v <= VT_CSI_MAX_NUM)
                v = v * 10 + (f->csi[j] - '0');
            j++;
        }
        if (v > VT_CSI_MAX_NUM) {
            /* "65535" is never longer than the run it replaces (which has at least 5 digits). */
            memcpy(seq + n, "65535", 5);
            n += 5;
        } else {
            memcpy(seq + n, f->csi + i, j - i);
            n += j - i;
        }
        i = j;
    }
    seq[n++] = final;
    out_put(o, seq, n);
}

static void csi_append(struct vt_filter *f, unsigned char c)
{
    if (f->n_csi < VT_CSI_MAX)
        f->csi[f->n_csi++] = (char)c;
    else
        f->csi_overflow = 1;
}

/* One byte inside a CSI (after the top-level checks), following libvterm's CSI_* states. */
static void csi_byte(struct vt *vt, struct out *o, unsigned char c)
{
    struct vt_filter *f = &vt->filter;
    if (f->phase == CSI_LEADER) {
        if (c >= 0x3c && c <= 0x3f) {
            f->csi_leader = 1;
            csi_append(f, c);
            return;
        }
        f->phase = CSI_ARGS;
    }
    if (f->phase == CSI_ARGS) {
        if ((c >= '0' && c <= '9') || c == ':' || c == ';') {
            if (c == ':' || c == ';')
                f->csi_seps++;
            csi_append(f, c);
            return;
        }
        f->phase = CSI_INTERMED;
    }
    if (c >= 0x20 && c <= 0x2f) {
        f->csi_inter = 1;
        csi_append(f, c);
        return;
    }
    f->state = F_NORMAL;
    if (c >= 0x40 && c <= 0x7e)
        csi_dispatch(vt, o, (char)c);
    else
        out_put(o, CAN, 1); /* an invalid CSI: libvterm swallows it, byte included */
}

/* One byte that is not text in the ground state, mirroring vterm_input_write(). */
static void filter_byte(struct vt *vt, struct out *o, unsigned char c)
{
    struct vt_filter *f = &vt->filter;
    int in_string =
        f->state == F_OSC || f->state == F_DCS || f->state == F_OSC_ESC || f->state == F_DCS_ESC;
    char b = (char)c;
    if (c == 0x00 || c == 0x7f) { /* ignored by libvterm, also inside text */
        if (in_string)
            out_put(o, &b, 1);
        return;
    }
    if (c == 0x18 || c == 0x1a) { /* CAN, SUB: back to the ground state */
        if (f->state != F_NORMAL)
            out_put(o, CAN, 1);
        f->state = F_NORMAL;
        return;
    }
    if (c == 0x1b) {
        out_put(o, &b, 1);
        if (f->state == F_OSC)
            f->state = F_OSC_ESC;
        else if (f->state == F_DCS)
            f->state = F_DCS_ESC;
        else
            f->state = F_ESC; /* a held CSI is abandoned: libvterm has only seen its ESC */
        f->n_esc_inter = 0;
        return;
    }
    if (c == 0x07 && (f->state == F_OSC || f->state == F_DCS)) {
        out_put(o, &b, 1); /* BEL ends the string */
        f->state = F_NORMAL;
        return;
    }
    if (c < 0x20) {
        out_put(o, &b, 1); /* other C0 controls act in every state without changing it */
        return;
    }
    switch (f->state) {
    case F_OSC_ESC:
    case F_DCS_ESC:
        if (c == '\\') {
            out_put(o, &b, 1);
            f->state = F_NORMAL;
            return;
        }
        f->state = F_ESC;
        /* fallthrough */
    case F_ESC:
        if (c == '[') {
            f->state = F_CSI;
            f->phase = CSI_LEADER;
            f->n_csi = 0;
            f->csi_overflow = f->csi_leader = f->csi_inter = f->csi_seps = 0;
            return; /* held back with the body */
        }
        if (c == 'P' || c == ']') {
            out_put(o, &b, 1);
            f->state = c == 'P' ? F_DCS : F_OSC;
        } else if (c <= 0x2f) {
            out_put(o, &b, 1);
            if (f->n_esc_inter < sizeof(f->esc_inter))
                f->esc_inter[f->n_esc_inter++] = b;
        } else if (c < 0x7f) {
            out_put(o, &b, 1); /* final byte: an escape sequence, or a 7-bit C1 control */
            f->state = F_NORMAL;
        }
        /* else ignored by libvterm, which stays in the escape state */
        return;
    case F_CSI:
        csi_byte(vt, o, c);
        return;
    case F_OSC:
    case F_DCS:
        out_put(o, &b, 1);
        return;
    case F_NORMAL:
        put_char(f, o, &b, 1); /* printable ASCII */
        return;
    }
}

void vt_feed(struct vt *vt, const char *data, size_t len)
{
    struct vt_filter *f = &vt->filter;
    const unsigned char *s = (const unsigned char *)data;
    struct out o;
    o.vt = vt;
    o.n = 0;
    size_t i = 0;
    while (i < len) {
        if (f->n_pend > 0) {
            /* Continue the character the previous write ended in. */
            unsigned char tmp[5];
            size_t n;
            memcpy(tmp, f->pend, f->n_pend);
            tmp[f->n_pend] = s[i];
            enum util_utf8_seq st = util_utf8_seq(tmp, f->n_pend + 1, &n);
            if (st != UTIL_UTF8_INVALID) {
                f->pend[f->n_pend++] = s[i++];
                if (st == UTIL_UTF8_VALID) {
                    put_char(f, &o, f->pend, f->n_pend);
                    f->n_pend = 0;
                }
                continue;
            }
            put_replacement(f, &o); /* the byte is not a continuation: process it afresh */
            f->n_pend = 0;
        }
        if (f->state == F_NORMAL && s[i] >= 0x80) {
            size_t n;
            enum util_utf8_seq st = util_utf8_seq(s + i, len - i, &n);
            if (st == UTIL_UTF8_VALID) {
                put_char(f, &o, s + i, n);
            } else if (st == UTIL_UTF8_INVALID) {
                put_replacement(f, &o);
            } else {
                memcpy(f->pend, s + i, n);
                f->n_pend = n;
            }
            i += n;
            continue;
        }
        if (f->state == F_NORMAL && s[i] >= 0x20 && s[i] < 0x7f) {
            /* A run of printable ASCII, the common case, in one piece. */
            size_t j = i;
            while (j < len && s[j] >= 0x20 && s[j] < 0x7f)
                j++;
            out_put(&o, s + i, j - i);
            f->last[0] = (char)s[j - 1];
            f->n_last = 1;
            i = j;
            continue;
        }
        filter_byte(vt, &o, s[i++]);
    }
    out_flush(&o);
}

/*
 * Our own sequences (see vt_resize) must not land inside one of the program's: cancel whatever
 * libvterm is in the middle of, send them, then put libvterm back into the same state. A string
 * (OSC/DCS) in progress loses its beginning, which costs at most a window title.
 */
static void inject_begin(struct vt *vt)
{
    if (vt->filter.state != F_NORMAL)
        out_write(vt, CAN, 1);
}

static void inject(struct vt *vt, const char *s)
{
    out_write(vt, s, strlen(s));
}

static void inject_end(struct vt *vt)
{
    struct vt_filter *f = &vt->filter;
    switch (f->state) {
    case F_NORMAL:
        break;
    case F_ESC:
        inject(vt, "\x1b");
        out_write(vt, f->esc_inter, f->n_esc_inter);
        break;
    case F_CSI:
        inject(vt, "\x1b"); /* the body is still held */
        break;
    case F_OSC:
        inject(vt, "\x1b]");
        break;
    case F_DCS:
        inject(vt, "\x1bP");
        break;
    case F_OSC_ESC:
        inject(vt, "\x1b]\x1b");
        break;
    case F_DCS_ESC:
        inject(vt, "\x1bP\x1b");
        break;
    }
}

static void inject_cursor(struct vt *vt, VTermPos pos, int rows, int cols)
{
    char cup[32];
    snprintf(cup, sizeof(cup), "\x1b[%d;%dH", (pos.row < rows ? pos.row : rows - 1) + 1,
             (pos.col < cols ? pos.col : cols - 1) + 1);
    inject(vt, cup);
}

int vt_resize(struct vt *vt, int rows, int cols)
{
    if (!valid_size(rows, cols))
        return -EINVAL;
    VTermState *state = vterm_obtain_state(vt->term);
    vterm_set_size(vt->term, rows, cols);
    /*
     * libvterm 0.1.4 clamps the cursor to the new size but neither the scroll margins (a top margin
     * left below the new bottom makes the next scroll memmove a negative length) nor the cursor
     * saved by DECSC / mode 1049 (restoring it puts the cursor off-screen, and the next DECDHL
     * writes out of bounds). Repair both, like xterm's resize does: margins reset, origin mode
     * off, cursor kept. The saved cursor is clamped by restoring it, moving it on-screen and
     * saving it again; that also makes the saved pen the current one, which only affects colours.
     */
    VTermPos cursor, saved;
    vterm_state_get_cursorpos(state, &cursor);
    inject_begin(vt);
    inject(vt, "\x1b[?6l\x1b[r\x1b[s\x1b"
               "8");
    vterm_state_get_cursorpos(state, &saved);
    inject_cursor(vt, saved, rows, cols);
    inject(vt, "\x1b"
               "7");
    inject_cursor(vt, cursor, rows, cols);
    inject_end(vt);
    return 0;
}

char *vt_screen_text(struct vt *vt, int with_history)
{
    int rows, cols;
    vterm_get_size(vt->term, &rows, &cols);
    if (vt->row_cells_n < cols) {
        VTermScreenCell *c = realloc(vt->row_cells, (size_t)cols * sizeof(*c));
        if (!c)
            return NULL;
        vt->row_cells = c;
        vt->row_cells_n = cols;
    }
    buf_t out = BUF_INIT;
    int rc = buf_reserve(&out, (size_t)rows * ((size_t)cols + 1));
    for (size_t i = 0; with_history && rc == 0 && i < vt->sb_count; i++) {
        const struct sb_line *line = vt->sb[(vt->sb_head + i) % vt->history];
        rc = buf_append(&out, line->text, line->len);
        if (rc == 0)
            rc = buf_append(&out, "\n", 1);
    }
    for (int r = 0; r < rows && rc == 0; r++) {
        for (int c = 0; c < cols; c++) {
            VTermPos pos = {.row = r, .col = c};
            if (!vterm_screen_get_cell(vt->screen, pos, &vt->row_cells[c]))
                memset(&vt->row_cells[c], 0, sizeof(vt->row_cells[c]));
        }
        rc = append_row_text(&out, vt->row_cells, cols);
        if (rc == 0 && r + 1 < rows)
            rc = buf_append(&out, "\n", 1);
    }
    if (rc != 0) {
        buf_free(&out);
        return NULL;
    }
    return buf_steal(&out);
}

void vt_cursor(struct vt *vt, int *row, int *col)
{
    VTermPos pos;
    vterm_state_get_cursorpos(vterm_obtain_state(vt->term), &pos);
    *row = pos.row;
    *col = pos.col;
}

void vt_size(struct vt *vt, int *rows, int *cols)
{
    vterm_get_size(vt->term, rows, cols);
}

size_t vt_history_lines(struct vt *vt)
{
    return vt->sb_count;
}

char *vt_take_replies(struct vt *vt, size_t *len)
{
    *len = 0;
    if (vt->replies.len == 0)
        return NULL;
    size_t n = vt->replies.len;
    char *s = buf_steal(&vt->replies);
    if (s)
        *len = n;
    return s;
}
