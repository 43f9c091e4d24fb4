/*
 * keys — tmux-style key names to terminal bytes. See keys.h.
 */
#include "session/keys.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define MOD_SHIFT 1
#define MOD_META 2
#define MOD_CTRL 4

/* How a named key is encoded. */
enum key_kind {
    KEY_BYTES, /* fixed bytes, modifiers handled like those of a character */
    KEY_CSI,   /* ESC [ <final>, or ESC [ 1 ; <mod> <final> with modifiers */
    KEY_SS3,   /* ESC O <final>, or ESC [ 1 ; <mod> <final> with modifiers */
    KEY_TILDE, /* ESC [ <num> ~, or ESC [ <num> ; <mod> ~ with modifiers */
};

struct key {
    const char *name;
    enum key_kind kind;
    const char *bytes; /* KEY_BYTES */
    int num;           /* KEY_CSI/KEY_SS3: final character; KEY_TILDE: number */
};

static const struct key keys[] = {
    {"Enter", KEY_BYTES, "\r", 0},    {"Tab", KEY_BYTES, "\t", 0},
    {"BTab", KEY_BYTES, "\x1b[Z", 0}, {"Escape", KEY_BYTES, "\x1b", 0},
    {"BSpace", KEY_BYTES, "\x7f", 0}, {"Space", KEY_BYTES, " ", 0},
    {"Up", KEY_CSI, NULL, 'A'},       {"Down", KEY_CSI, NULL, 'B'},
    {"Right", KEY_CSI, NULL, 'C'},    {"Left", KEY_CSI, NULL, 'D'},
    {"Home", KEY_CSI, NULL, 'H'},     {"End", KEY_CSI, NULL, 'F'},
    {"IC", KEY_TILDE, NULL, 2},       {"Insert", KEY_TILDE, NULL, 2},
    {"DC", KEY_TILDE, NULL, 3},       {"Delete", KEY_TILDE, NULL, 3},
    {"PageUp", KEY_TILDE, NULL, 5},   {"PgUp", KEY_TILDE, NULL, 5},
    {"PPage", KEY_TILDE, NULL, 5},    {"PageDown", KEY_TILDE, NULL, 6},
    {"PgDn", KEY_TILDE, NULL, 6},     {"NPage", KEY_TILDE, NULL, 6},
    {"F1", KEY_SS3, NULL, 'P'},       {"F2", KEY_SS3, NULL, 'Q'},
    {"F3", KEY_SS3, NULL, 'R'},       {"F4", KEY_SS3, NULL, 'S'},
    {"F5", KEY_TILDE, NULL, 15},      {"F6", KEY_TILDE, NULL, 17},
    {"F7", KEY_TILDE, NULL, 18},      {"F8", KEY_TILDE, NULL, 19},
    {"F9", KEY_TILDE, NULL, 20},      {"F10", KEY_TILDE, NULL, 21},
    {"F11", KEY_TILDE, NULL, 23},     {"F12", KEY_TILDE, NULL, 24},
};

static const struct key *find_key(const char *name)
{
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

/* Length of the single UTF-8 character that makes up all of s, or 0 if s is not exactly one
 * (well-formed lead byte followed by the right number of continuation bytes). */
static size_t single_char(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n;
    if (u[0] == 0)
        return 0;
    if (u[0] < 0x80)
        n = 1;
    else if (u[0] >= 0xC2 && u[0] <= 0xDF)
        n = 2;
    else if (u[0] >= 0xE0 && u[0] <= 0xEF)
        n = 3;
    else if (u[0] >= 0xF0 && u[0] <= 0xF4)
        n = 4;
    else
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((u[i] & 0xC0) != 0x80)
            return 0;
    return u[n] == 0 ? n : 0;
}

/* The control code for C-<c>, or -1 if there is none. */
static int ctrl_code(unsigned char c)
{
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 1;
    if (c >= '@' && c <= '_') /* @ A-Z [ \ ] ^ _ */
        return c - '@';
    if (c == ' ')
        return 0;
    if (c == '?')
        return 0x7f;
    return -1;
}

/* Strips one modifier prefix from *s into *mods; returns 0 when there is none. A "^" or "C-"
 * with nothing after it is not a prefix but the text itself ("^" stays a literal caret). */
static int strip_modifier(const char **s, int *mods)
{
    const char *p = *s;
    if (p[0] == '^' && p[1] != '\0') {
        *mods |= MOD_CTRL;
        *s = p + 1;
        return 1;
    }
    if (p[0] == '\0' || p[1] != '-' || p[2] == '\0')
        return 0;
    switch (p[0]) {
    case 'C':
    case 'c':
        *mods |= MOD_CTRL;
        break;
    case 'M':
    case 'm':
        *mods |= MOD_META;
        break;
    case 'S':
    case 's':
        *mods |= MOD_SHIFT;
        break;
    default:
        return 0;
    }
    *s = p + 2;
    return 1;
}

/* Named keys with parameters (arrows, Home/End, editing keys, function keys). */
static size_t encode_param_key(const struct key *k, int mods, char *out, size_t cap)
{
    if (mods == 0 && k->kind == KEY_CSI)
        return (size_t)snprintf(out, cap, "\x1b[%c", k->num);
    if (mods == 0 && k->kind == KEY_SS3)
        return (size_t)snprintf(out, cap, "\x1bO%c", k->num);
    if (mods == 0)
        return (size_t)snprintf(out, cap, "\x1b[%d~", k->num);
    if (k->kind == KEY_TILDE)
        return (size_t)snprintf(out, cap, "\x1b[%d;%d~", k->num, 1 + mods);
    return (size_t)snprintf(out, cap, "\x1b[1;%d%c", 1 + mods, k->num);
}

/* Builds the bytes for a key (named, or the character ch of chlen bytes when k is NULL) with
 * modifiers into out (at least 32 bytes). Returns the length, or 0 when the combination has no
 * encoding in a plain terminal. */
static size_t encode(const struct key *k, const char *ch, size_t chlen, int mods, char *out)
{
    if (k && k->kind != KEY_BYTES)
        return encode_param_key(k, mods, out, 32);
    size_t n = 0;
    if (mods & MOD_META)
        out[n++] = '\x1b';
    if (k && strcmp(k->name, "Space") == 0) {
        ch = " ";
        chlen = 1;
    } else if (k) {
        /* Enter, Tab, BTab, Escape, BSpace. C- would need the extended key protocols. */
        if (mods & MOD_CTRL)
            return 0;
        const char *bytes = (mods & MOD_SHIFT) && strcmp(k->name, "Tab") == 0 ? "\x1b[Z" : k->bytes;
        size_t len = strlen(bytes);
        memcpy(out + n, bytes, len);
        return n + len;
    }
    if (chlen > 1) {
        if (mods & (MOD_CTRL | MOD_SHIFT))
            return 0;
        memcpy(out + n, ch, chlen);
        return n + chlen;
    }
    unsigned char c = (unsigned char)ch[0];
    if (mods & MOD_SHIFT) {
        if (c >= 'a' && c <= 'z')
            c = (unsigned char)(c - 'a' + 'A');
        else if (!(c >= 'A' && c <= 'Z') && c != ' ')
            return 0;
    }
    if (mods & MOD_CTRL) {
        int code = ctrl_code(c);
        if (code < 0)
            return 0;
        c = (unsigned char)code;
    }
    out[n++] = (char)c;
    return n;
}

int keys_append(buf_t *out, const char *name)
{
    const char *rest = name;
    int mods = 0;
    while (strip_modifier(&rest, &mods))
        ;
    const struct key *k = find_key(rest);
    size_t chlen = 0;
    if (!k) {
        chlen = single_char(rest);
        if (chlen == 0 || mods == 0)
            return 0; /* not a name; a lone character is its own literal text */
    }
    char bytes[32];
    size_t n = encode(k, rest, chlen, mods, bytes);
    if (n == 0)
        return 0;
    if (buf_append(out, bytes, n) < 0)
        return -ENOMEM;
    return 1;
}
