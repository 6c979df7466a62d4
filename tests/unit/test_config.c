/* Unit tests for config.c: defaults, environment, flags, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static void clear_env(void)
{
    unsetenv("KZHOOK_LISTEN");
    unsetenv("KZHOOK_RETRY_SCHEDULE");
    unsetenv("KZHOOK_RATE_LIMIT");
    unsetenv("KZHOOK_ALLOW_PRIVATE_TARGETS");
    unsetenv("KZHOOK_DB");
    unsetenv("KZHOOK_ADMIN_TOKEN");
    unsetenv("KZHOOK_ADMIN_TOKEN_FILE");
}

static void defaults(void **state)
{
    struct kz_config c;
    char err[256];
    char *argv[] = {"kzhook", "serve"};

    (void)state;
    clear_env();
    assert_int_equal(kz_config_load(&c, 2, argv, 2, NULL, err, sizeof(err)), KZ_OK);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    assert_string_equal(c.db, "./kzhook-data/kzhook.db");
    assert_int_equal(c.retry_count, 6);
    assert_int_equal(c.retry_schedule[0], 60000);
    assert_int_equal(c.retry_schedule[5], 24LL * 3600 * 1000);
    assert_int_equal(c.delivery_timeout_ms, 15000);
    assert_int_equal(c.validation_timeout_ms, 5000);
    assert_int_equal(c.token_ttl_ms, 86400000);
    assert_int_equal(c.rate_limit, 100);
    assert_int_equal(c.retention_ms, 7LL * 86400000);
    assert_false(c.allow_private_targets);
    assert_null(c.admin_token);
    kz_config_cleanup(&c);
}

static void env_then_flags(void **state)
{
    struct kz_config c;
    char err[256];
    char *argv[] = {"kzhook",
                    "serve",
                    "--rate-limit",
                    "7",
                    "--listen=[::1]:9000",
                    "--allow-http-callbacks",
                    "--retry-schedule",
                    "500ms, 2s,1m"};

    (void)state;
    clear_env();
    setenv("KZHOOK_RATE_LIMIT", "3", 1);
    setenv("KZHOOK_ALLOW_PRIVATE_TARGETS", "1", 1);
    setenv("KZHOOK_DB", "/tmp/x.db", 1);
    assert_int_equal(kz_config_load(&c, 8, argv, 2, NULL, err, sizeof(err)), KZ_OK);
    assert_int_equal(c.rate_limit, 7);
    assert_true(c.allow_private_targets);
    assert_true(c.allow_http_callbacks);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 9000);
    assert_string_equal(c.db, "/tmp/x.db");
    assert_int_equal(c.retry_count, 3);
    assert_int_equal(c.retry_schedule[0], 500);
    assert_int_equal(c.retry_schedule[2], 60000);
    kz_config_cleanup(&c);
    clear_env();
}

static void errors(void **state)
{
    struct kz_config c;
    char err[256];
    char *bad[][3] = {
        {"serve", "--retry-schedule", "5x"},    {"serve", "--listen", "nonsense"},
        {"serve", "--listen", "1.2.3.4:99999"}, {"serve", "--rate-limit", "-1"},
        {"serve", "--delivery-timeout", "0s"},  {"serve", "--bogus", "1"},
        {"serve", "--admin-token", "short"},    {"serve", "--tls-cert", "a.pem"},
        {"serve", "--token-ttl", "1ms"},        {"serve", "--threads", "abc"},
    };
    size_t i;

    (void)state;
    clear_env();
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(kz_config_load(&c, 3, bad[i], 1, NULL, err, sizeof(err)), KZ_ERR_INVALID);
        assert_true(strlen(err) > 0);
        kz_config_cleanup(&c);
    }
    {
        char *missing[] = {"serve", "--db"};

        assert_int_equal(kz_config_load(&c, 2, missing, 1, NULL, err, sizeof(err)), KZ_ERR_INVALID);
        kz_config_cleanup(&c);
    }
    setenv("KZHOOK_RATE_LIMIT", "many", 1);
    {
        char *none[] = {"serve"};

        assert_int_equal(kz_config_load(&c, 1, none, 1, NULL, err, sizeof(err)), KZ_ERR_INVALID);
        assert_non_null(strstr(err, "KZHOOK_RATE_LIMIT"));
        kz_config_cleanup(&c);
    }
    clear_env();
}

/* Writes `len` bytes to a fresh temporary file; returns its path in `path` (size >= 64). */
static void write_tmp(char *path, const char *data, size_t len)
{
    int fd;

    snprintf(path, 64, "/tmp/kz-test-token-XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* Loads `serve --admin-token-file PATH` (or the variable when `via_env`). */
static enum kz_err load_file(struct kz_config *c, const char *path, bool via_env, char *err)
{
    char *argv[] = {"serve", "--admin-token-file", (char *)path};

    if (via_env) {
        setenv("KZHOOK_ADMIN_TOKEN_FILE", path, 1);
        return kz_config_load(c, 1, argv, 1, NULL, err, 256);
    }
    return kz_config_load(c, 3, argv, 1, NULL, err, 256);
}

static void admin_token_file(void **state)
{
    static const struct {
        const char *data;
        const char *want; /* NULL: refused, with the message containing `why` */
        const char *why;
    } cases[] = {
        {"0123456789abcdef\n", "0123456789abcdef", NULL},
        {"0123456789abcdef", "0123456789abcdef", NULL},
        {"0123456789abcdef\r\n", "0123456789abcdef", NULL},
        {"", NULL, "empty"},
        {"\n", NULL, "empty"},
        {"0123456789abcdef\n\n", NULL, "printable"},
        {"0123456789 abcdef", NULL, "printable"},
        {"short-token\n", NULL, "16..256"},
    };
    struct kz_config c;
    char err[256], path[64], big[400];
    size_t i;
    int env;

    (void)state;
    for (env = 0; env < 2; env++) {
        for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            enum kz_err e;

            clear_env();
            err[0] = '\0';
            write_tmp(path, cases[i].data, strlen(cases[i].data));
            e = load_file(&c, path, env, err);
            unlink(path);
            if (cases[i].want) {
                if (e)
                    fail_msg("case %zu: %s", i, err);
                assert_string_equal(c.admin_token, cases[i].want);
            } else {
                assert_int_equal(e, KZ_ERR_INVALID);
                if (!strstr(err, cases[i].why) || !strstr(err, path))
                    fail_msg("case %zu: message \"%s\" lacks \"%s\" or the path", i, err,
                             cases[i].why);
            }
            kz_config_cleanup(&c);
        }
    }
    clear_env();
    /* 256 characters are the most a token has; one more is refused without reading it all. */
    memset(big, 'k', sizeof(big));
    big[256] = '\n';
    write_tmp(path, big, 257);
    assert_int_equal(load_file(&c, path, false, err), KZ_OK);
    assert_int_equal(strlen(c.admin_token), 256);
    kz_config_cleanup(&c);
    unlink(path);
    write_tmp(path, big, sizeof(big));
    assert_int_equal(load_file(&c, path, false, err), KZ_ERR_INVALID);
    assert_non_null(strstr(err, "longer than 256"));
    kz_config_cleanup(&c);
    unlink(path);
    /* Unreadable. */
    assert_int_equal(load_file(&c, "/nonexistent/kz-token", false, err), KZ_ERR_INVALID);
    assert_non_null(strstr(err, "cannot read"));
    kz_config_cleanup(&c);
    /* Mutually exclusive with the token itself, whichever way each is given. */
    write_tmp(path, "0123456789abcdef\n", 17);
    {
        char *both[] = {"serve", "--admin-token", "0123456789abcdefXX", "--admin-token-file", path};

        assert_int_equal(kz_config_load(&c, 5, both, 1, NULL, err, sizeof(err)), KZ_ERR_INVALID);
        assert_non_null(strstr(err, "mutually exclusive"));
        kz_config_cleanup(&c);
        setenv("KZHOOK_ADMIN_TOKEN", "0123456789abcdefXX", 1);
        assert_int_equal(load_file(&c, path, false, err), KZ_ERR_INVALID);
        assert_non_null(strstr(err, "mutually exclusive"));
        kz_config_cleanup(&c);
        assert_int_equal(load_file(&c, path, true, err), KZ_ERR_INVALID);
        kz_config_cleanup(&c);
    }
    unlink(path);
    clear_env();
}

static void listen_parsing(void **state)
{
    char host[64];
    int port;

    (void)state;
    assert_int_equal(kz_config_parse_listen("0.0.0.0:80", host, sizeof(host), &port), KZ_OK);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(port, 80);
    assert_int_equal(kz_config_parse_listen("[::]:8443", host, sizeof(host), &port), KZ_OK);
    assert_string_equal(host, "::");
    assert_int_equal(kz_config_parse_listen(":80", host, sizeof(host), &port), KZ_ERR_INVALID);
    assert_int_equal(kz_config_parse_listen("h:", host, sizeof(host), &port), KZ_ERR_INVALID);
    assert_int_equal(kz_config_parse_listen("[::1]80", host, sizeof(host), &port), KZ_ERR_INVALID);
    assert_int_equal(kz_config_parse_listen("h:8x", host, sizeof(host), &port), KZ_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults),         cmocka_unit_test(env_then_flags),
        cmocka_unit_test(errors),           cmocka_unit_test(listen_parsing),
        cmocka_unit_test(admin_token_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
