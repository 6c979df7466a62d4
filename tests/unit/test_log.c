/* test_log.c — every line kz_log writes is one valid JSON object with unique keys (src/log.h).
 * stderr is captured through a pipe (dup2) and each line is parsed with jansson. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "log.h"

#include <jansson.h>

static int saved_stderr = -1;
static int pipe_rd = -1;

static int capture(void **state)
{
    int p[2];

    (void)state;
    assert_int_equal(pipe(p), 0);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    saved_stderr = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    pipe_rd = p[0];
    return 0;
}

static int release(void **state)
{
    (void)state;
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    close(pipe_rd);
    return 0;
}

/* Reads what kz_log wrote since the last call: exactly one line, parsed with duplicate keys
 * refused. Fails the test when it is not one valid JSON object. The caller decrefs. */
static json_t *one_line(size_t *len_out)
{
    static char buf[1 << 16];
    ssize_t n = read(pipe_rd, buf, sizeof(buf));
    json_error_t jerr;
    json_t *doc;

    assert_true(n > 0);
    assert_int_equal(buf[n - 1], '\n');
    assert_null(memchr(buf, '\n', (size_t)n - 1));
    doc = json_loadb(buf, (size_t)n - 1, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc || !json_is_object(doc))
        fail_msg("not one JSON object (%s): %.300s", jerr.text, buf);
    if (len_out)
        *len_out = (size_t)n - 1;
    return doc;
}

static void test_plain_line(void **state)
{
    json_t *doc;

    (void)state;
    kz_log("info", "request", "\"status\":%d,\"durationMs\":%.3f,\"path\":\"%s\"", 200, 1.5, "/x");
    doc = one_line(NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(doc, "msg")), "request");
    assert_int_equal(json_integer_value(json_object_get(doc, "status")), 200);
    assert_string_equal(json_string_value(json_object_get(doc, "path")), "/x");
    assert_true(json_is_integer(json_object_get(doc, "ts")));
    assert_null(json_object_get(doc, "truncated"));
    json_decref(doc);
    kz_log("warn", "no fields", NULL);
    doc = one_line(NULL);
    assert_int_equal(json_object_size(doc), 3);
    json_decref(doc);
}

/* A long value is never cut inside its string: it is written whole when the line has room,
 * and the fields are dropped with "truncated":true when it has not. */
static void test_long_values(void **state)
{
    static char val[20000], esc[40000];
    static const size_t lens[] = {1000, 2030, 2100, 4000, 8000, 8150, 8200, 19999};
    size_t i, len;
    json_t *doc;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(lens); i++) {
        memset(val, 'v', lens[i]);
        val[lens[i]] = '\0';
        val[lens[i] / 2] = '"'; /* an escape in the middle */
        kz_log("warn", "long", "\"before\":1,\"detail\":\"%s\",\"after\":2",
               kz_log_esc(val, esc, sizeof(esc)));
        doc = one_line(&len);
        assert_true(len <= KZ_LOG_LINE_MAX);
        if (json_object_get(doc, "truncated")) {
            assert_true(json_is_true(json_object_get(doc, "truncated")));
            assert_null(json_object_get(doc, "detail"));
            assert_null(json_object_get(doc, "before"));
            assert_true(lens[i] > 8000);
        } else {
            assert_int_equal(strlen(json_string_value(json_object_get(doc, "detail"))), lens[i]);
            assert_int_equal(json_integer_value(json_object_get(doc, "after")), 2);
        }
        json_decref(doc);
    }
}

/* kz_log's own keys are never repeated by a caller's field (a PostgreSQL notice once logged two
 * "msg"), and a caller's repeated key does not make it to the line either. */
static void test_no_duplicate_keys(void **state)
{
    json_t *doc;

    (void)state;
    kz_log("warn", "store: postgresql notice", "\"msg\":\"%s\",\"level\":3,\"ts\":[1]", "WARNING");
    doc = one_line(NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "msg")), "store: postgresql notice");
    assert_string_equal(json_string_value(json_object_get(doc, "field.msg")), "WARNING");
    assert_int_equal(json_integer_value(json_object_get(doc, "field.level")), 3);
    assert_true(json_is_array(json_object_get(doc, "field.ts")));
    json_decref(doc);
    kz_log("warn", "dup", "\"a\":1,\"a\":2");
    doc = one_line(NULL);
    assert_null(json_object_get(doc, "a"));
    assert_string_equal(json_string_value(json_object_get(doc, "fields")), "\"a\":1,\"a\":2");
    json_decref(doc);
}

/* What a careless caller or a client sends still gives a valid line: an unescaped quote,
 * control bytes, bytes that are not UTF-8, a lone key. */
static void test_hostile_fields(void **state)
{
    char esc[64];
    json_t *doc;

    (void)state;
    kz_log("info", "raw", "\"path\":\"%s\"", "/a\"b\\c\x01\n");
    doc = one_line(NULL);
    assert_null(json_object_get(doc, "path"));
    assert_non_null(json_object_get(doc, "fields"));
    json_decref(doc);
    kz_log("info", "escaped", "\"path\":\"%s\"",
           kz_log_esc("/\xff\xc3(\x01\xe2\x82\xac", esc, sizeof(esc)));
    doc = one_line(NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "path")),
                        "/\xef\xbf\xbd\xef\xbf\xbd(\x01\xe2\x82\xac");
    json_decref(doc);
    kz_log("info", "lone", "\"k\"");
    doc = one_line(NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "fields")), "\"k\"");
    json_decref(doc);
    kz_log("info", "bad level \xff", "%s", "");
    doc = one_line(NULL);
    json_decref(doc);
}

/* kz_log_esc cuts between characters: never inside an escape or a UTF-8 sequence. */
static void test_esc_truncation(void **state)
{
    char out[32];
    size_t n;
    json_t *doc;

    (void)state;
    for (n = 1; n <= sizeof(out); n++) {
        kz_log("info", "cut", "\"v\":\"%s\"",
               kz_log_esc("\"\"\"\xe2\x82\xac\xe2\x82\xac\x01\x02\\\\\xf0\x9f\x98\x80xyz", out, n));
        doc = one_line(NULL);
        assert_non_null(json_object_get(doc, "v"));
        json_decref(doc);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_line),        cmocka_unit_test(test_long_values),
        cmocka_unit_test(test_no_duplicate_keys), cmocka_unit_test(test_hostile_fields),
        cmocka_unit_test(test_esc_truncation),
    };
    int rc = cmocka_run_group_tests(tests, capture, release);

    return rc;
}
