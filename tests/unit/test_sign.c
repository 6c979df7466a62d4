/* test_sign.c — SHA-256, constant-time comparison, base64, secrets and v1 signatures
 * (src/sign.h). Expected values come from RFC 4648, FIPS 180-2 and the Standard Webhooks
 * reference implementation. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "sign.h"

#define VEC_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define VEC_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define VEC_TS 1614265330
#define VEC_BODY "{\"test\": 2432232314}"
#define VEC_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

/* ==== kz_sha256_hex ==== */

static void test_sha256_vectors(void **state)
{
    char out[65];
    static const unsigned char bin[] = {0x00, 0xff, 0x00};

    (void)state;
    kz_sha256_hex("", 0, out);
    assert_string_equal(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    kz_sha256_hex(NULL, 0, out);
    assert_string_equal(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    kz_sha256_hex("abc", 3, out);
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    kz_sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, out);
    assert_string_equal(out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* Length, not NUL, bounds the input. */
    kz_sha256_hex("abcdef", 3, out);
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    kz_sha256_hex(bin, sizeof(bin), out);
    assert_int_equal(strlen(out), 64);
    assert_string_not_equal(out,
                            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* ==== kz_ct_equal / kz_ct_streq ==== */

static void test_ct_equal(void **state)
{
    (void)state;
    assert_true(kz_ct_equal("abcdef", "abcdef", 6));
    assert_false(kz_ct_equal("abcdef", "Abcdef", 6));
    assert_false(kz_ct_equal("abcdef", "abcdeF", 6));
    assert_true(kz_ct_equal("abcdef", "abcxyz", 3));
    assert_true(kz_ct_equal("a", "b", 0));
    assert_false(kz_ct_equal("a\0b", "a\0c", 3));
}

static void test_ct_streq(void **state)
{
    (void)state;
    assert_true(kz_ct_streq("token", "token"));
    assert_true(kz_ct_streq("", ""));
    assert_false(kz_ct_streq("token", "tokem"));
    assert_false(kz_ct_streq("token", "Token"));
    assert_false(kz_ct_streq("token", "token2"));
    assert_false(kz_ct_streq("token2", "token"));
    assert_false(kz_ct_streq("", "x"));
    assert_false(kz_ct_streq(NULL, "x"));
    assert_false(kz_ct_streq("x", NULL));
    assert_false(kz_ct_streq(NULL, NULL));
}

/* ==== base64 ==== */

static void test_base64_encode_rfc4648(void **state)
{
    static const struct {
        const char *in, *out;
    } v[] = {
        {"f", "Zg=="},        {"fo", "Zm8="},        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
    };
    size_t i;
    char out[16];

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(v); i++) {
        size_t n =
            kz_base64_encode((const unsigned char *)v[i].in, strlen(v[i].in), out, sizeof(out));

        assert_int_equal(n, strlen(v[i].out));
        assert_string_equal(out, v[i].out);
    }
    assert_int_equal(kz_base64_encode((const unsigned char *)"\xff\xfe\xfd", 3, out, sizeof(out)),
                     4);
    assert_string_equal(out, "//79");
    assert_int_equal(kz_base64_encode((const unsigned char *)"\xfb\xff", 2, out, sizeof(out)), 4);
    assert_string_equal(out, "+/8=");
}

static void test_base64_encode_bounds(void **state)
{
    char out[9];

    (void)state;
    /* "foobar" needs 8 + NUL. */
    assert_int_equal(kz_base64_encode((const unsigned char *)"foobar", 6, out, 9), 8);
    assert_string_equal(out, "Zm9vYmFy");
    memset(out, 'x', sizeof(out));
    assert_int_equal(kz_base64_encode((const unsigned char *)"foobar", 6, out, 8), 0);
    assert_string_equal(out, "");
    assert_int_equal(kz_base64_encode((const unsigned char *)"f", 1, out, 4), 0);
    assert_int_equal(kz_base64_encode((const unsigned char *)"f", 1, out, 5), 4);
    out[0] = 'x';
    assert_int_equal(kz_base64_encode((const unsigned char *)"", 0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    out[0] = 'q';
    assert_int_equal(kz_base64_encode((const unsigned char *)"f", 1, out, 0), 0);
    assert_int_equal(out[0], 'q');
}

static void test_base64_decode(void **state)
{
    unsigned char out[16];
    size_t n = 99;

    (void)state;
    assert_int_equal(kz_base64_decode("Zm9vYmFy", 8, out, sizeof(out), &n), KZ_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(out, "foobar", 6);
    assert_int_equal(kz_base64_decode("Zm9vYg==", 8, out, sizeof(out), &n), KZ_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "foob", 4);
    assert_int_equal(kz_base64_decode("Zm9vYmE=", 8, out, sizeof(out), &n), KZ_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(out, "fooba", 5);
    assert_int_equal(kz_base64_decode("+/8=", 4, out, sizeof(out), &n), KZ_OK);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "\xfb\xff", 2);
    assert_int_equal(kz_base64_decode("", 0, out, sizeof(out), &n), KZ_OK);
    assert_int_equal(n, 0);
    /* Exact output room, then one short. */
    assert_int_equal(kz_base64_decode("Zm9vYmFy", 8, out, 6, &n), KZ_OK);
    n = 99;
    assert_int_equal(kz_base64_decode("Zm9vYmFy", 8, out, 5, &n), KZ_ERR_TOOBIG);
    assert_int_equal(kz_base64_decode("Zg==", 4, out, 0, &n), KZ_ERR_TOOBIG);
    assert_int_equal(n, 99);
}

static void test_base64_decode_rejects(void **state)
{
    static const char *const bad[] = {
        "Zg",   "Zg=",  "Zm9",  "Zm9vY", "====", "Z===", "=Zm9",  "Zm=v", "Zg==Zg==",
        "Zh==", "Zm9=", "Zm-v", "Zm_v",  "Zm9 ", " Zm9", "Zm\n9", "Zm.v", "Zm9v\0AAA",
    };
    size_t i;
    unsigned char out[16];
    size_t n = 99;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(bad); i++) {
        size_t len = i == KZ_ARRAY_LEN(bad) - 1 ? 8 : strlen(bad[i]);

        if (kz_base64_decode(bad[i], len, out, sizeof(out), &n) != KZ_ERR_INVALID)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(n, 99);
}

static void test_base64_roundtrip_all_lengths(void **state)
{
    unsigned char in[64], back[64];
    char enc[100];
    size_t len, i, n;

    (void)state;
    for (i = 0; i < sizeof(in); i++)
        in[i] = (unsigned char)(i * 37 + 11);
    for (len = 1; len <= sizeof(in); len++) {
        size_t elen = kz_base64_encode(in, len, enc, sizeof(enc));

        assert_int_equal(elen, (len + 2) / 3 * 4);
        assert_int_equal(kz_base64_decode(enc, elen, back, sizeof(back), &n), KZ_OK);
        assert_int_equal(n, len);
        assert_memory_equal(back, in, len);
    }
}

/* ==== secrets ==== */

static void test_secret_new(void **state)
{
    char a[KZ_SIGN_SECRET_SIZE], b[KZ_SIGN_SECRET_SIZE];
    unsigned char key[64];
    size_t keylen = 0;

    (void)state;
    assert_int_equal(kz_sign_secret_new(a, sizeof(a)), KZ_OK);
    assert_int_equal(kz_sign_secret_new(b, sizeof(b)), KZ_OK);
    assert_int_equal(strlen(a), KZ_SIGN_SECRET_SIZE - 1);
    assert_int_equal(strncmp(a, "whsec_", 6), 0);
    assert_string_not_equal(a, b);
    assert_int_equal(kz_sign_key_decode(a, key, sizeof(key), &keylen), KZ_OK);
    assert_int_equal(keylen, KZ_SIGN_KEY_BYTES);
}

static void test_secret_new_buffer(void **state)
{
    char small[KZ_SIGN_SECRET_SIZE - 1];

    (void)state;
    memset(small, 'x', sizeof(small));
    assert_int_equal(kz_sign_secret_new(small, sizeof(small)), KZ_ERR_TOOBIG);
    assert_string_equal(small, "");
    assert_int_equal(kz_sign_secret_new(small, 0), KZ_ERR_TOOBIG);
}

static void test_key_decode(void **state)
{
    static const unsigned char want[24] = {0x31, 0xf2, 0x90, 0xf6, 0xbf, 0x06, 0x29, 0x8a,
                                           0xab, 0x4f, 0x08, 0xd4, 0x3c, 0x3f, 0x08, 0x2c,
                                           0xf6, 0x48, 0xa3, 0x62, 0xda, 0x2d, 0xa4, 0xb0};
    unsigned char key[24];
    size_t keylen = 0;

    (void)state;
    assert_int_equal(kz_sign_key_decode(VEC_SECRET, key, sizeof(key), &keylen), KZ_OK);
    assert_int_equal(keylen, 24);
    assert_memory_equal(key, want, 24);
    /* The prefix is optional. */
    keylen = 0;
    assert_int_equal(kz_sign_key_decode(&VEC_SECRET[6], key, sizeof(key), &keylen), KZ_OK);
    assert_int_equal(keylen, 24);
    assert_memory_equal(key, want, 24);
    keylen = 77;
    assert_int_equal(kz_sign_key_decode(VEC_SECRET, key, 23, &keylen), KZ_ERR_TOOBIG);
    assert_int_equal(keylen, 77);
}

static void test_key_decode_rejects(void **state)
{
    static const char *const bad[] = {
        "",           "whsec_",     "whsec_abc",  "whsec_A===", "whsec_AB=A",       "whsec_AB==",
        "whsec_@@@@", "whsec_ AAA", "whsec_AA-_", "WHSEC_AAAA", "whsec_whsec_AAAA",
    };
    size_t i, keylen = 77;
    unsigned char key[32];

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(bad); i++) {
        if (kz_sign_key_decode(bad[i], key, sizeof(key), &keylen) != KZ_ERR_INVALID)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(kz_sign_key_decode(NULL, key, sizeof(key), &keylen), KZ_ERR_INVALID);
    assert_int_equal(keylen, 77);
    /* Control: the smallest valid key. */
    assert_int_equal(kz_sign_key_decode("whsec_AA==", key, sizeof(key), &keylen), KZ_OK);
    assert_int_equal(keylen, 1);
    assert_int_equal(key[0], 0);
}

/* ==== kz_sign_v1 ==== */

static void sign_vec(const unsigned char *key, size_t keylen, const char *id, int64_t ts,
                     const char *body, size_t len, char out[KZ_SIGN_V1_SIZE])
{
    assert_int_equal(kz_sign_v1(key, keylen, id, ts, body, len, out, KZ_SIGN_V1_SIZE), KZ_OK);
}

static void test_sign_standard_webhooks_vector(void **state)
{
    unsigned char key[64];
    size_t keylen = 0;
    char sig[KZ_SIGN_V1_SIZE];

    (void)state;
    assert_int_equal(kz_sign_key_decode(VEC_SECRET, key, sizeof(key), &keylen), KZ_OK);
    sign_vec(key, keylen, VEC_ID, VEC_TS, VEC_BODY, strlen(VEC_BODY), sig);
    assert_string_equal(sig, VEC_SIG);
    assert_int_equal(strlen(sig), KZ_SIGN_V1_SIZE - 1);
}

static void test_sign_more_vectors(void **state)
{
    char sig[KZ_SIGN_V1_SIZE];

    (void)state;
    /* Empty body, timestamp 0; body NULL with length 0 is the same message. */
    sign_vec((const unsigned char *)"key", 3, "msg_1", 0, "", 0, sig);
    assert_string_equal(sig, "v1,Rv5fFKe8lYCGcM/51SMYtm85Ja3TIpzQ+yfO9NGNrqA=");
    sign_vec((const unsigned char *)"key", 3, "msg_1", 0, NULL, 0, sig);
    assert_string_equal(sig, "v1,Rv5fFKe8lYCGcM/51SMYtm85Ja3TIpzQ+yfO9NGNrqA=");
    /* Binary key, negative timestamp, a NUL inside the body (the length rules, not the NUL). */
    sign_vec((const unsigned char *)"\x00\x01\x02", 3, "id", -5, "a\0b", 3, sig);
    assert_string_equal(sig, "v1,Ol3grBLHedifD7rB4tlF1SrxgGfBRUB/tXArGG727zk=");
}

static void test_sign_every_input_matters(void **state)
{
    unsigned char key[64];
    size_t keylen = 0;
    char base[KZ_SIGN_V1_SIZE], sig[KZ_SIGN_V1_SIZE];
    const char *body = VEC_BODY;
    size_t blen = strlen(body);

    (void)state;
    assert_int_equal(kz_sign_key_decode(VEC_SECRET, key, sizeof(key), &keylen), KZ_OK);
    sign_vec(key, keylen, VEC_ID, VEC_TS, body, blen, base);
    sign_vec(key, keylen, "msg_p5jXN8AQM9LWM0D4loKWxJeK", VEC_TS, body, blen, sig);
    assert_string_not_equal(sig, base);
    sign_vec(key, keylen, VEC_ID, VEC_TS + 1, body, blen, sig);
    assert_string_not_equal(sig, base);
    sign_vec(key, keylen, VEC_ID, VEC_TS, "{\"test\": 2432232315}", blen, sig);
    assert_string_not_equal(sig, base);
    sign_vec(key, keylen, VEC_ID, VEC_TS, body, blen - 1, sig);
    assert_string_not_equal(sig, base);
    key[0] ^= 1;
    sign_vec(key, keylen, VEC_ID, VEC_TS, body, blen, sig);
    assert_string_not_equal(sig, base);
    key[0] ^= 1;
    sign_vec(key, keylen - 1, VEC_ID, VEC_TS, body, blen, sig);
    assert_string_not_equal(sig, base);
    /* Moving a byte across the id/timestamp boundary changes the message. */
    sign_vec(key, keylen, "msg_p5jXN8AQM9LWM0D4loKWxJek1", 614265330, body, blen, sig);
    assert_string_not_equal(sig, base);
    /* And the control: the same inputs give the same signature. */
    sign_vec(key, keylen, VEC_ID, VEC_TS, body, blen, sig);
    assert_string_equal(sig, base);
}

static void test_sign_errors(void **state)
{
    char sig[KZ_SIGN_V1_SIZE];

    (void)state;
    memset(sig, 'x', sizeof(sig));
    assert_int_equal(kz_sign_v1((const unsigned char *)"k", 0, "id", 1, "b", 1, sig, sizeof(sig)),
                     KZ_ERR_INVALID);
    assert_string_equal(sig, "");
    assert_int_equal(kz_sign_v1((const unsigned char *)"k", 1, NULL, 1, "b", 1, sig, sizeof(sig)),
                     KZ_ERR_INVALID);
    memset(sig, 'x', sizeof(sig));
    assert_int_equal(
        kz_sign_v1((const unsigned char *)"k", 1, "id", 1, "b", 1, sig, KZ_SIGN_V1_SIZE - 1),
        KZ_ERR_TOOBIG);
    assert_string_equal(sig, "");
    assert_int_equal(kz_sign_v1((const unsigned char *)"k", 1, "id", 1, "b", 1, sig, 0),
                     KZ_ERR_TOOBIG);
    assert_int_equal(
        kz_sign_v1((const unsigned char *)"k", 1, "id", INT64_MIN, "b", 1, sig, sizeof(sig)),
        KZ_OK);
    assert_int_equal(strncmp(sig, "v1,", 3), 0);
}

/* kz_sign_header: the current secret's signature, then the previous one's, space-separated. */
static void test_sign_header(void **state)
{
    static const char s1[] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    static const char s2[] = "whsec_c2VjcmV0";
    unsigned char key[64];
    size_t keylen;
    char a[KZ_SIGN_V1_SIZE], b[KZ_SIGN_V1_SIZE], both[2 * KZ_SIGN_V1_SIZE + 8];
    char out[KZ_SIGN_HEADER_SIZE];

    (void)state;
    assert_int_equal(kz_sign_key_decode(s1, key, sizeof(key), &keylen), KZ_OK);
    assert_int_equal(kz_sign_v1(key, keylen, "msg", 1700000000, "{}", 2, a, sizeof(a)), KZ_OK);
    assert_int_equal(kz_sign_key_decode(s2, key, sizeof(key), &keylen), KZ_OK);
    assert_int_equal(kz_sign_v1(key, keylen, "msg", 1700000000, "{}", 2, b, sizeof(b)), KZ_OK);
    assert_int_equal(kz_sign_header(s1, NULL, "msg", 1700000000, "{}", 2, out, sizeof(out)), KZ_OK);
    assert_string_equal(out, a);
    assert_int_equal(kz_sign_header(s1, s2, "msg", 1700000000, "{}", 2, out, sizeof(out)), KZ_OK);
    snprintf(both, sizeof(both), "%s %s", a, b);
    assert_string_equal(out, both);
    assert_int_equal(kz_sign_header(s2, s1, "msg", 1700000000, "{}", 2, out, sizeof(out)), KZ_OK);
    snprintf(both, sizeof(both), "%s %s", b, a);
    assert_string_equal(out, both);
    /* errors leave "" */
    assert_int_equal(kz_sign_header(s1, "whsec_!!", "msg", 1, "{}", 2, out, sizeof(out)),
                     KZ_ERR_INVALID);
    assert_string_equal(out, "");
    assert_int_equal(kz_sign_header(NULL, NULL, "msg", 1, "{}", 2, out, sizeof(out)),
                     KZ_ERR_INVALID);
    assert_int_equal(kz_sign_header(s1, NULL, NULL, 1, "{}", 2, out, sizeof(out)), KZ_ERR_INVALID);
    assert_string_equal(out, "");
    assert_int_equal(kz_sign_header(s1, NULL, "msg", 1, "{}", 2, out, sizeof(out) - 1),
                     KZ_ERR_TOOBIG);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_ct_streq),
        cmocka_unit_test(test_base64_encode_rfc4648),
        cmocka_unit_test(test_base64_encode_bounds),
        cmocka_unit_test(test_base64_decode),
        cmocka_unit_test(test_base64_decode_rejects),
        cmocka_unit_test(test_base64_roundtrip_all_lengths),
        cmocka_unit_test(test_secret_new),
        cmocka_unit_test(test_secret_new_buffer),
        cmocka_unit_test(test_key_decode),
        cmocka_unit_test(test_key_decode_rejects),
        cmocka_unit_test(test_sign_standard_webhooks_vector),
        cmocka_unit_test(test_sign_more_vectors),
        cmocka_unit_test(test_sign_every_input_matters),
        cmocka_unit_test(test_sign_errors),
        cmocka_unit_test(test_sign_header),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
