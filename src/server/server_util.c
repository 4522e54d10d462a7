/*
 * server_util.c: small pure pieces of the server: a growable buffer, UTF-8
 * repair for output text, server-sent event framing and stop-string search.
 *
 * Stop strings and streaming: text is sent as soon as it cannot become part
 * of a stop string. At every step the answer's tail that equals the start of
 * some stop string is held back; if the next tokens complete the stop string
 * the answer is cut at its start (the stop string is never sent), otherwise
 * the held bytes go out with the next chunk. So the streamed text always
 * equals the non-streamed text.
 */
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- buffer ---- */

static int buf_reserve(struct server_buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len) return TT_ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return TT_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int server_buf_append(struct server_buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n)) return TT_ENOMEM;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int server_buf_printf(struct server_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n)) return TT_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void server_buf_free(struct server_buf *b)
{
    free(b->data);
    *b = (struct server_buf){0};
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 character at s[0..n), or 0 if it is not one
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    const unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

int server_utf8_append(struct server_buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid bytes */
    while (i < n) {
        size_t l = utf8_char_len(u + i, n - i);
        if (l) {
            i += l;
            continue;
        }
        if (server_buf_append(b, s + run, i - run) || server_buf_append(b, "\xEF\xBF\xBD", 3))
            return TT_ENOMEM;
        run = ++i;
    }
    return server_buf_append(b, s + run, n - run);
}

/* ---- server-sent events ---- */

int server_sse_append(struct server_buf *b, const char *payload)
{
    TT_ASSERT(!strchr(payload, '\n'));
    if (server_buf_append(b, "data: ", 6) || server_buf_append(b, payload, strlen(payload)) ||
        server_buf_append(b, "\n\n", 2))
        return TT_ENOMEM;
    return 0;
}

/* ---- stop strings ---- */

/* Longest k < slen with text's last k bytes equal to stop's first k. */
static size_t stop_partial(const char *text, size_t len, const char *stop, size_t slen)
{
    for (size_t k = TT_MIN(len, slen - 1); k > 0; k--)
        if (memcmp(text + len - k, stop, k) == 0) return k;
    return 0;
}

long server_stop_find(const char *text, size_t len, size_t checked, const char *const *stops,
                      int n_stop, size_t *safe_len)
{
    long found = -1;
    size_t hold = 0;
    for (int i = 0; i < n_stop; i++) {
        const size_t slen = strlen(stops[i]);
        if (slen == 0 || slen > len) {
            if (slen) hold = TT_MAX(hold, stop_partial(text, len, stops[i], slen));
            continue;
        }
        /* a new match ends after `checked`, so it starts after checked - slen */
        size_t from = checked >= slen ? checked - slen + 1 : 0;
        const char *hit = from < len ? memmem(text + from, len - from, stops[i], slen) : NULL;
        if (hit && (found < 0 || hit - text < found)) found = hit - text;
        hold = TT_MAX(hold, stop_partial(text, len, stops[i], slen));
    }
    *safe_len = found >= 0 ? (size_t)found : len - hold;
    return found;
}
