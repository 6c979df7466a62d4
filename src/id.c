/* id.c — random identifiers (see id.h). */
#include "id.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

static void random_bytes(unsigned char *p, size_t n)
{
    int ok;

    KZ_ASSERT(n <= 256);
    ok = RAND_bytes(p, (int)n);
    KZ_ASSERT(ok == 1);
}

void kz_id_uuid4(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    size_t i, o = 0;

    random_bytes(b, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    for (i = 0; i < sizeof(b); i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

void kz_id_token(char *out, size_t nchars)
{
    /* Exactly 64 symbols, so the low 6 bits of a uniform byte pick one without bias. */
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char b[64];
    size_t done = 0;

    _Static_assert(sizeof(alphabet) - 1 == 64, "token alphabet must have 64 symbols");
    while (done < nchars) {
        size_t k, chunk = nchars - done < sizeof(b) ? nchars - done : sizeof(b);

        random_bytes(b, chunk);
        for (k = 0; k < chunk; k++)
            out[done + k] = alphabet[b[k] & 63];
        done += chunk;
    }
    out[nchars] = '\0';
    OPENSSL_cleanse(b, sizeof(b));
}

static bool safe_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '@' || c == '+' || c == '=' || c == '~' || c == '-';
}

bool kz_id_is_safe(const char *s, size_t maxlen)
{
    size_t i;

    if (!s)
        return false;
    for (i = 0; s[i]; i++) {
        if (i == maxlen || !safe_char(s[i]))
            return false;
    }
    if (!i)
        return false;
    return strcmp(s, ".") && strcmp(s, "..");
}
