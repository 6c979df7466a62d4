/* fuzz_config.c — the operator's command line (src/config.h), as `kzhook serve ARGS...`.
 *
 * Input: the arguments, separated by NUL bytes when the input has any, else by spaces (at most
 * 64). They follow argv[0] = "kzhook", argv[1] = "serve", with first = 2, as main() calls it. The
 * environment is left as the process has it.
 * Each input is loaded twice: with rest = NULL (positional arguments are errors, as for serve)
 * and with a `rest` array of exactly argc entries (heap, so ASan sees an overrun).
 * Checked:
 *  - an accepted configuration is in range: port 0..65535, 1..KZ_RETRY_MAX schedule entries all
 *    > 0, the duration and integer options within their documented bounds, a non-empty db,
 *    --tls-cert and --tls-key together, an admin token of 16..256 characters when given;
 *  - a rejection writes a NUL-terminated message; rest = NULL fails when a positional argument
 *    is present and otherwise agrees with the rest != NULL load;
 *  - kz_config_cleanup() frees everything, after success and after failure alike. */
#include "fuzz_common.h"

#include "alloc.h"
#include "config.h"
#include "dur.h"

#include <inttypes.h>

#define MAX_ARGS 64

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static void check_cfg(const struct kz_config *c)
{
    size_t i;

    FUZZ_CHECK(c->listen_port >= 0 && c->listen_port <= 65535, "port %d", c->listen_port);
    FUZZ_CHECK(memchr(c->listen_host, '\0', sizeof(c->listen_host)) && c->listen_host[0], "%s",
               "listen host empty or unterminated");
    FUZZ_CHECK(c->db && *c->db, "%s", "db empty");
    FUZZ_CHECK(c->retry_count >= 1 && c->retry_count <= KZ_RETRY_MAX, "retry_count %zu",
               c->retry_count);
    for (i = 0; i < c->retry_count; i++)
        FUZZ_CHECK(c->retry_schedule[i] > 0 && c->retry_schedule[i] <= KZ_DUR_MAX_MS,
                   "schedule[%zu] = %" PRId64, i, c->retry_schedule[i]);
    FUZZ_CHECK(c->delivery_timeout_ms >= 1 && c->delivery_timeout_ms <= 3600000, "%" PRId64,
               c->delivery_timeout_ms);
    FUZZ_CHECK(c->validation_timeout_ms >= 1 && c->validation_timeout_ms <= 600000, "%" PRId64,
               c->validation_timeout_ms);
    FUZZ_CHECK(c->token_ttl_ms >= 1000 && c->token_ttl_ms <= INT64_C(3153600000000), "%" PRId64,
               c->token_ttl_ms);
    FUZZ_CHECK(c->retention_ms >= 1000 && c->retention_ms <= INT64_C(3153600000000), "%" PRId64,
               c->retention_ms);
    FUZZ_CHECK(c->rate_limit >= 0 && c->rate_limit <= 100000000, "rate %d", c->rate_limit);
    FUZZ_CHECK(c->threads >= 1 && c->threads <= 256, "threads %d", c->threads);
    FUZZ_CHECK(c->max_connections >= 16 && c->max_connections <= 1000000, "maxconn %d",
               c->max_connections);
    FUZZ_CHECK(c->per_endpoint_concurrency >= 1 && c->per_endpoint_concurrency <= 1024, "pec %d",
               c->per_endpoint_concurrency);
    FUZZ_CHECK(!c->tls_cert == !c->tls_key, "%s", "tls cert without key");
    if (c->admin_token)
        FUZZ_CHECK(strlen(c->admin_token) >= 16 && strlen(c->admin_token) <= 256,
                   "admin token of %zu", strlen(c->admin_token));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = fuzz_cstr(data, size), *argv[MAX_ARGS + 3];
    const char **rest;
    int argc = 2, r, n_pos = 0;
    char sep = memchr(data, '\0', size) ? '\0' : ' ';
    size_t i, start = 0;
    struct kz_config c1, c2;
    char err1[256], err2[256];
    enum kz_err e1, e2;
    int64_t live = kz_alloc_live();

    argv[0] = "kzhook";
    argv[1] = "serve";
    for (i = 0; i <= size && argc < MAX_ARGS + 2; i++) {
        if (i == size || buf[i] == sep) {
            buf[i] = '\0';
            /* Spaces separate; runs of them make no empty arguments. NULs keep empty ones. */
            if (sep == '\0' || i > start) {
                argv[argc++] = buf + start;
                if (strncmp(buf + start, "--", 2))
                    n_pos++;
            }
            start = i + 1;
        }
    }
    argv[argc] = NULL;

    memset(err1, 'Z', sizeof(err1));
    e1 = kz_config_load(&c1, argc, argv, 2, NULL, err1, sizeof(err1));
    if (!e1)
        check_cfg(&c1);
    else
        FUZZ_CHECK(memchr(err1, '\0', sizeof(err1)) && err1[0] != 'Z', "%s", "no error message");

    rest = malloc((size_t)argc * sizeof(*rest));
    if (!rest)
        abort();
    memset(err2, 'Z', sizeof(err2));
    e2 = kz_config_load(&c2, argc, argv, 2, rest, err2, sizeof(err2));
    if (!e2) {
        check_cfg(&c2);
        for (r = 0; rest[r]; r++)
            FUZZ_CHECK(r < argc && strncmp(rest[r], "--", 2), "rest[%d] = \"%.60s\"", r, rest[r]);
    } else {
        FUZZ_CHECK(memchr(err2, '\0', sizeof(err2)) && err2[0] != 'Z', "%s", "no error message");
    }
    if (!e2 && n_pos == 0) {
        FUZZ_CHECK(!e1, "rest=NULL rejected what rest accepted: %s", err1);
        FUZZ_CHECK(c1.listen_port == c2.listen_port && c1.retry_count == c2.retry_count &&
                       !memcmp(c1.retry_schedule, c2.retry_schedule, sizeof(c1.retry_schedule)),
                   "%s", "the two loads disagree");
    }
    if (!e2 && rest[0])
        FUZZ_CHECK(e1, "rest=NULL accepted the positional \"%.60s\"", rest[0]);
    if (!e1)
        FUZZ_CHECK(!e2, "rest rejected what rest=NULL accepted: %s", err2);

    kz_config_cleanup(&c1);
    kz_config_cleanup(&c2);
    free(rest);
    free(buf);
    FUZZ_CHECK(kz_alloc_live() == live, "kz_config_cleanup left %" PRId64 " allocations",
               kz_alloc_live() - live);
    return 0;
}
