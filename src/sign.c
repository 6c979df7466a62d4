/* sign.c — SHA-256, constant-time comparison, secrets and v1 signatures (see sign.h). */
#include "sign.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#define SECRET_PREFIX "whsec_"

void kz_sha256_hex(const void *p, size_t n, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    unsigned int i;
    int ok;

    ok = EVP_Digest(n ? p : "", n, md, &mdlen, EVP_sha256(), NULL);
    KZ_ASSERT(ok && mdlen == 32);
    for (i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

bool kz_ct_equal(const void *a, const void *b, size_t n)
{
    if (!n)
        return true;
    return CRYPTO_memcmp(a, b, n) == 0;
}

bool kz_ct_streq(const char *a, const char *b)
{
    size_t alen, blen;

    if (!a || !b)
        return false;
    alen = strlen(a);
    blen = strlen(b);
    if (alen != blen)
        return false;
    return kz_ct_equal(a, b, alen);
}

/* ==== base64 ==== */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t kz_base64_encode(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    size_t need, i, o = 0;

    if (outlen)
        out[0] = '\0';
    if (!n || n > (SIZE_MAX - 1) / 4 * 3 - 2)
        return 0;
    need = (n + 2) / 3 * 4;
    if (outlen < need + 1)
        return 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;

        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

enum kz_err kz_base64_decode(const char *in, size_t n, unsigned char *out, size_t outmax,
                             size_t *outlen)
{
    size_t pad = 0, total, i, o = 0;

    if (n % 4)
        return KZ_ERR_INVALID;
    if (n && in[n - 1] == '=')
        pad = n >= 2 && in[n - 2] == '=' ? 2 : 1;
    total = n / 4 * 3 - pad;
    if (total > outmax)
        return KZ_ERR_TOOBIG;
    for (i = 0; i < n; i += 4) {
        int v[4];
        size_t k, chars = (i + 4 == n) ? 4 - pad : 4;
        uint32_t acc = 0;

        for (k = 0; k < 4; k++) {
            v[k] = k < chars ? b64_value(in[i + k]) : 0;
            if (v[k] < 0)
                return KZ_ERR_INVALID;
            acc = acc << 6 | (uint32_t)v[k];
        }
        /* Non-canonical encodings (non-zero bits under the padding) are rejected. */
        if ((chars == 2 && (acc & 0xffff)) || (chars == 3 && (acc & 0xff)))
            return KZ_ERR_INVALID;
        out[o++] = (unsigned char)(acc >> 16);
        if (chars > 2)
            out[o++] = (unsigned char)(acc >> 8);
        if (chars > 3)
            out[o++] = (unsigned char)acc;
    }
    *outlen = o;
    return KZ_OK;
}

/* ==== secrets and signatures ==== */

enum kz_err kz_sign_secret_new(char *out, size_t outlen)
{
    unsigned char raw[KZ_SIGN_KEY_BYTES];
    enum kz_err result = KZ_ERR_TOOBIG;
    size_t plen = sizeof(SECRET_PREFIX) - 1;

    if (outlen)
        out[0] = '\0';
    if (outlen < KZ_SIGN_SECRET_SIZE)
        goto out;
    result = KZ_ERR_IO;
    if (RAND_bytes(raw, (int)sizeof(raw)) != 1)
        goto out;
    memcpy(out, SECRET_PREFIX, plen);
    kz_base64_encode(raw, sizeof(raw), out + plen, outlen - plen);
    result = KZ_OK;
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    return result;
}

enum kz_err kz_sign_key_decode(const char *whsec, unsigned char *key, size_t keymax, size_t *keylen)
{
    size_t plen = sizeof(SECRET_PREFIX) - 1;
    size_t n;
    enum kz_err result;

    if (!whsec)
        return KZ_ERR_INVALID;
    if (!strncmp(whsec, SECRET_PREFIX, plen))
        whsec += plen;
    n = strlen(whsec);
    if (!n)
        return KZ_ERR_INVALID;
    result = kz_base64_decode(whsec, n, key, keymax, keylen);
    if (!result && !*keylen)
        result = KZ_ERR_INVALID;
    return result;
}

enum kz_err kz_sign_v1(const unsigned char *key, size_t keylen, const char *msg_id, int64_t ts,
                       const char *body, size_t len, char *out, size_t outlen)
{
    enum kz_err result = KZ_ERR_INVALID;
    EVP_MAC *mac = NULL;
    EVP_MAC_CTX *ctx = NULL;
    char digest_name[] = "SHA256";
    OSSL_PARAM params[2];
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    char tsbuf[24];
    int tslen;

    if (outlen)
        out[0] = '\0';
    if (!keylen || !msg_id)
        goto out;
    result = KZ_ERR_TOOBIG;
    if (outlen < KZ_SIGN_V1_SIZE)
        goto out;
    tslen = snprintf(tsbuf, sizeof(tsbuf), ".%" PRId64 ".", ts);
    KZ_ASSERT(tslen > 0 && (size_t)tslen < sizeof(tsbuf));
    result = KZ_ERR_IO;
    mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
    if (!mac)
        goto out;
    ctx = EVP_MAC_CTX_new(mac);
    if (!ctx)
        goto out;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0);
    params[1] = OSSL_PARAM_construct_end();
    if (!EVP_MAC_init(ctx, key, keylen, params) ||
        !EVP_MAC_update(ctx, (const unsigned char *)msg_id, strlen(msg_id)) ||
        !EVP_MAC_update(ctx, (const unsigned char *)tsbuf, (size_t)tslen) ||
        (len && !EVP_MAC_update(ctx, (const unsigned char *)body, len)) ||
        !EVP_MAC_final(ctx, md, &mdlen, sizeof(md)) || mdlen != 32)
        goto out;
    memcpy(out, "v1,", 3);
    kz_base64_encode(md, mdlen, out + 3, outlen - 3);
    result = KZ_OK;
out:
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return result;
}

/* Signs with one secret into out (KZ_SIGN_V1_SIZE bytes); the decoded key is wiped after. */
static enum kz_err sign_with(const char *secret, const char *msg_id, int64_t ts, const char *body,
                             size_t len, char *out)
{
    unsigned char key[128];
    size_t keylen = 0;
    enum kz_err result = kz_sign_key_decode(secret, key, sizeof(key), &keylen);

    if (!result)
        result = kz_sign_v1(key, keylen, msg_id, ts, body, len, out, KZ_SIGN_V1_SIZE);
    OPENSSL_cleanse(key, sizeof(key));
    return result;
}

enum kz_err kz_sign_header(const char *secret, const char *prev_secret, const char *msg_id,
                           int64_t ts, const char *body, size_t len, char *out, size_t outlen)
{
    enum kz_err result = KZ_ERR_TOOBIG;
    size_t n;

    if (outlen)
        out[0] = '\0';
    if (outlen < KZ_SIGN_HEADER_SIZE)
        return result;
    result = sign_with(secret, msg_id, ts, body, len, out);
    if (result || !prev_secret)
        goto out;
    n = strlen(out);
    out[n] = ' ';
    result = sign_with(prev_secret, msg_id, ts, body, len, out + n + 1);
out:
    if (result)
        out[0] = '\0';
    return result;
}
