/* log.c — JSON-lines logger. */
#include "log.h"
#include "alloc.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The keys kz_log writes itself: a caller's field of the same name would make a duplicate key. */
static bool reserved_key(const char *k)
{
    return !strcmp(k, "ts") || !strcmp(k, "level") || !strcmp(k, "msg") || !strcmp(k, "truncated");
}

/* Appends s[0..len) as a JSON string: bytes that are not UTF-8 become U+FFFD (kz_buf_text). */
static void json_text(struct kz_buf *b, const char *s, size_t len)
{
    struct kz_buf clean;

    /* kz_log's own strings (level, msg, keys) are short; a runaway one is cut between
     * characters here, never inside the JSON string. */
    kz_buf_init(&clean, 3 * len + 1 < 1024 ? 3 * len + 1 : 1024);
    kz_buf_text(&clean, s, len);
    kz_buf_json_str(b, clean.data ? clean.data : "", clean.len);
    kz_buf_cleanup(&clean);
}

static int dump_cb(const char *p, size_t n, void *data)
{
    return kz_buf_append(data, p, n) ? -1 : 0;
}

/* Appends `,` and the caller's fields to `line`. The fragment is checked to be JSON members
 * (valid UTF-8, no duplicate keys) by parsing it as an object; then it is copied as written, so
 * numbers keep their spelling. A member named like one of kz_log's own keys is renamed
 * "field.<name>". A fragment that is not valid JSON members is kept whole as the string value
 * of "fields", so the line stays one valid JSON object whatever the caller passed. */
static void append_fields(struct kz_buf *line, const char *frag, size_t len)
{
    struct kz_buf obj;
    json_t *doc;
    bool clash = false;
    const char *k;
    json_t *v;

    kz_buf_init(&obj, len + 3);
    kz_buf_puts(&obj, "{");
    kz_buf_append(&obj, frag, len);
    kz_buf_puts(&obj, "}");
    doc = json_loadb(obj.data, obj.len, JSON_REJECT_DUPLICATES, NULL);
    kz_buf_cleanup(&obj);
    if (!doc || !json_is_object(doc)) {
        json_decref(doc);
        kz_buf_puts(line, ",\"fields\":");
        json_text(line, frag, len);
        return;
    }
    json_object_foreach(doc, k, v)
    {
        if (reserved_key(k))
            clash = true;
    }
    if (!clash) {
        if (json_object_size(doc)) {
            kz_buf_puts(line, ",");
            kz_buf_append(line, frag, len);
        }
        json_decref(doc);
        return;
    }
    json_object_foreach(doc, k, v)
    {
        struct kz_buf key;

        kz_buf_init(&key, strlen(k) + 8);
        kz_buf_puts(&key, reserved_key(k) ? "field." : "");
        kz_buf_puts(&key, k);
        kz_buf_puts(line, ",");
        json_text(line, key.data, key.len);
        kz_buf_puts(line, ":");
        json_dump_callback(v, dump_cb, line, JSON_COMPACT | JSON_ENCODE_ANY);
        kz_buf_cleanup(&key);
    }
    json_decref(doc);
}

void kz_log(const char *level, const char *msg, const char *fields, ...)
{
    struct kz_buf line, frag;
    bool truncated = false;
    va_list ap;

    kz_buf_init(&line, KZ_LOG_LINE_MAX + 2);
    kz_buf_printf(&line, "{\"ts\":%lld,\"level\":", (long long)kz_now_ms());
    json_text(&line, level ? level : "", level ? strlen(level) : 0);
    kz_buf_puts(&line, ",\"msg\":");
    json_text(&line, msg ? msg : "", msg ? strlen(msg) : 0);
    if (fields) {
        /* The fields get what is left of the cap after the head and `,"truncated":true}`. */
        size_t room = line.len + 20 < KZ_LOG_LINE_MAX ? KZ_LOG_LINE_MAX - line.len - 20 : 0;

        kz_buf_init(&frag, room);
        va_start(ap, fields);
        /* kz_buf_printf would be the natural call, but it takes `...`: format once here. */
        {
            char small[1024];
            int k = vsnprintf(small, sizeof(small), fields, ap);

            va_end(ap);
            if (k < 0) {
                truncated = true;
            } else if ((size_t)k < sizeof(small)) {
                truncated = kz_buf_append(&frag, small, (size_t)k) != KZ_OK;
            } else if ((size_t)k > room) {
                truncated = true;
            } else {
                char *big = kz_malloc((size_t)k + 1);

                va_start(ap, fields);
                vsnprintf(big, (size_t)k + 1, fields, ap);
                va_end(ap);
                kz_buf_append(&frag, big, (size_t)k);
                kz_free(big);
            }
        }
        if (!truncated && frag.len) {
            size_t before = line.len;

            append_fields(&line, frag.data, frag.len);
            /* A renamed or quoted fragment can be longer than the fragment itself. */
            if (line.len > KZ_LOG_LINE_MAX - 20) {
                line.len = before;
                line.data[before] = '\0';
                truncated = true;
            }
        }
        kz_buf_cleanup(&frag);
    }
    if (truncated)
        kz_buf_puts(&line, ",\"truncated\":true");
    kz_buf_puts(&line, "}\n");
    if (line.len && write(STDERR_FILENO, line.data, line.len) < 0) {
        /* nowhere left to report a logging failure */
    }
    kz_buf_cleanup(&line);
}

const char *kz_log_esc(const char *s, char *out, size_t n)
{
    size_t o = 0, len;

    if (!s)
        s = "";
    len = strlen(s);
    /* Room for the longest escape (6 bytes, or 4 for a UTF-8 sequence) plus the NUL. */
    while (*s && o + 7 < n) {
        unsigned char c = (unsigned char)*s;
        size_t q;

        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
            s++;
            len--;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, n - o, "\\u%04x", c);
            s++;
            len--;
        } else if (c < 0x80) {
            out[o++] = (char)c;
            s++;
            len--;
        } else {
            q = kz_utf8_seq((const unsigned char *)s, len);
            if (q) {
                memcpy(out + o, s, q);
                o += q;
                s += q;
                len -= q;
            } else {
                memcpy(out + o, "\\ufffd", 6); /* not UTF-8: the line must stay valid JSON */
                o += 6;
                s++;
                len--;
            }
        }
    }
    out[o] = '\0';
    return out;
}
