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
};

static int valid_size(int rows, int cols)
{
    /* libvterm 0.1.4 writes through a NULL pointer when a wide character is printed in a
     * one-column terminal, hence the minimum of two columns. */
    return rows >= 1 && cols >= 2 && rows <= VT_MAX_DIM && cols <= VT_MAX_DIM;
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
    if (len > VT_MAX_REPLIES - vt->replies.len || vt->replies.len > VT_MAX_REPLIES)
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

void vt_feed(struct vt *vt, const char *data, size_t len)
{
    /* libvterm consumes everything it is given (partial sequences are kept in its parser). */
    while (len > 0) {
        size_t n = vterm_input_write(vt->term, data, len);
        if (n == 0)
            break;
        data += n;
        len -= n;
    }
}

static void feed_str(struct vt *vt, const char *s)
{
    vt_feed(vt, s, strlen(s));
}

static void move_cursor(struct vt *vt, VTermPos pos, int rows, int cols)
{
    char cup[32];
    snprintf(cup, sizeof(cup), "\x1b[%d;%dH", (pos.row < rows ? pos.row : rows - 1) + 1,
             (pos.col < cols ? pos.col : cols - 1) + 1);
    feed_str(vt, cup);
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
     * writes out of bounds). Program output must not be able to corrupt the daemon, so repair
     * both here. Like xterm's resize: margins reset, origin mode off, cursor kept. The saved
     * cursor is clamped by restoring it, moving it on-screen and saving it again; this also makes
     * the saved pen the current one, which only affects colours, not text.
     */
    VTermPos cursor, saved;
    vterm_state_get_cursorpos(state, &cursor);
    feed_str(vt, "\x1b[?6l\x1b[r\x1b[s\x1b"
                 "8");
    vterm_state_get_cursorpos(state, &saved);
    move_cursor(vt, saved, rows, cols);
    feed_str(vt, "\x1b"
                 "7");
    move_cursor(vt, cursor, rows, cols);
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
