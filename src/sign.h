/* sign.h — hashing, constant-time comparison, signing secrets and Standard Webhooks signatures
 * (https://www.standardwebhooks.com/): "webhook-signature: v1,<base64 HMAC-SHA256>".
 *
 * Pure functions over OpenSSL (libcrypto): no I/O and no clock; the caller passes the timestamp.
 * kz_sign_secret_new() draws from OpenSSL's CSPRNG. Any thread may call any function here.
 */
#ifndef KZ_SIGN_H
#define KZ_SIGN_H

#include "kz.h"

/** Bytes of a generated signing key (before base64). */
#define KZ_SIGN_KEY_BYTES 24
/** Size of a buffer for a generated secret: "whsec_" + base64(24 bytes) + NUL = 39. */
#define KZ_SIGN_SECRET_SIZE 39
/** Size of a buffer for a v1 signature: "v1," + base64(32 bytes) + NUL = 48. */
#define KZ_SIGN_V1_SIZE 48

/** Lower-case hex SHA-256 of the `n` bytes at `p` (`p` may be NULL when `n` is 0), 64 digits
 * plus NUL, into `out`. Aborts only if libcrypto itself fails. */
void kz_sha256_hex(const void *p, size_t n, char out[65]);

/** True when the `n` bytes at `a` and `b` are equal, in time independent of their contents
 * (CRYPTO_memcmp). True when `n` is 0. */
bool kz_ct_equal(const void *a, const void *b, size_t n);

/** True when the NUL-terminated strings are equal. Runs in time independent of the contents
 * when the lengths are equal; strings of different lengths (the length is not secret) and NULL
 * arguments compare unequal. */
bool kz_ct_streq(const char *a, const char *b);

/**
 * Writes a new signing secret "whsec_" + standard base64 (with padding) of 24 random bytes
 * into `out`. Returns KZ_OK; KZ_ERR_TOOBIG when `outlen` < KZ_SIGN_SECRET_SIZE; KZ_ERR_IO when
 * the random generator fails. `out` is "" on error when `outlen` > 0.
 */
enum kz_err kz_sign_secret_new(char *out, size_t outlen);

/**
 * Decodes a signing secret into the raw HMAC key: strips a leading "whsec_" when present and
 * base64-decodes the rest (standard alphabet, padding required, no whitespace, unused bits
 * zero). Stores the key in `key[0..*keylen-1]`. Returns KZ_OK; KZ_ERR_INVALID for NULL, an
 * empty key or invalid base64; KZ_ERR_TOOBIG when the key is longer than `keymax`.
 */
enum kz_err kz_sign_key_decode(const char *whsec, unsigned char *key, size_t keymax,
                               size_t *keylen);

/**
 * Writes "v1,<base64 HMAC-SHA256(key, msg_id + "." + ts + "." + body)>" into `out`, where ts is
 * the decimal form of `ts` (unix seconds). The body is fed to the MAC in place, never copied.
 * `body` may be NULL when `len` is 0. Returns KZ_OK; KZ_ERR_INVALID when `keylen` is 0 or
 * `msg_id` is NULL; KZ_ERR_TOOBIG when `outlen` < KZ_SIGN_V1_SIZE; KZ_ERR_IO when libcrypto
 * fails. `out` is "" on error when `outlen` > 0.
 */
enum kz_err kz_sign_v1(const unsigned char *key, size_t keylen, const char *msg_id, int64_t ts,
                       const char *body, size_t len, char *out, size_t outlen);

/** Size of a buffer for a webhook-signature header value: two v1 signatures and a space. */
#define KZ_SIGN_HEADER_SIZE (2 * KZ_SIGN_V1_SIZE)

/**
 * The value of a webhook-signature header: "v1,<sig with secret>", followed by
 * " v1,<sig with prev_secret>" when `prev_secret` is not NULL (a rotation's overlap: a receiver
 * holding either secret verifies, the current one comes first). Both secrets are "whsec_..."
 * strings as kz_sign_key_decode() reads them. Returns KZ_OK; KZ_ERR_INVALID when a secret
 * does not decode or `msg_id` is NULL; KZ_ERR_TOOBIG when `outlen` < KZ_SIGN_HEADER_SIZE;
 * KZ_ERR_IO when libcrypto fails. `out` is "" on error when `outlen` > 0.
 */
enum kz_err kz_sign_header(const char *secret, const char *prev_secret, const char *msg_id,
                           int64_t ts, const char *body, size_t len, char *out, size_t outlen);

/**
 * Standard base64 (RFC 4648 section 4, with '=' padding) of the `n` bytes at `in`, NUL-terminated
 * into `out`. Returns the length written, not counting the NUL; returns 0 and writes "" (when
 * `outlen` > 0) when `out` cannot hold 4 * ceil(n / 3) + 1 bytes, and also when `n` is 0.
 */
size_t kz_base64_encode(const unsigned char *in, size_t n, char *out, size_t outlen);

/**
 * Strict standard base64 decoding of the `n` characters at `in`: length a multiple of 4, only
 * the standard alphabet, '=' only as the last one or two characters, unused bits zero.
 * Stores the bytes in `out[0..*outlen-1]`. Returns KZ_OK (an empty input decodes to 0 bytes);
 * KZ_ERR_INVALID for malformed input; KZ_ERR_TOOBIG when the result exceeds `outmax`.
 */
enum kz_err kz_base64_decode(const char *in, size_t n, unsigned char *out, size_t outmax,
                             size_t *outlen);

#endif
