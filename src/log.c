/* log.c — JSON-lines logger. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void kz_log(const char *level, const char *msg, const char *fields, ...)
{
    char line[2048];
    char emsg[512];
    size_t n;
    int k;
    va_list ap;

    k = snprintf(line, sizeof(line), "{\"ts\":%lld,\"level\":\"%s\",\"msg\":\"%s\"",
                 (long long)kz_now_ms(), level, kz_log_esc(msg, emsg, sizeof(emsg)));
    n = k < 0 ? 0 : (size_t)k;
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    if (fields && n < sizeof(line) - 3) {
        line[n++] = ',';
        va_start(ap, fields);
        k = vsnprintf(line + n, sizeof(line) - n - 2, fields, ap);
        va_end(ap);
        if (k > 0)
            n += (size_t)k < sizeof(line) - n - 2 ? (size_t)k : sizeof(line) - n - 3;
    }
    line[n++] = '}';
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, n) < 0) {
        /* nowhere left to report a logging failure */
    }
}

const char *kz_log_esc(const char *s, char *out, size_t n)
{
    size_t o = 0;

    if (!s)
        s = "";
    for (; *s && o + 7 < n; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, n - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return out;
}
