/* config.c — flags and environment into struct kz_config (README "Configuration"). */
#include "config.h"
#include "alloc.h"
#include "dur.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum opt_kind { OPT_STR, OPT_LISTEN, OPT_BOOL, OPT_DUR, OPT_SCHEDULE, OPT_INT };

struct opt {
    const char *flag;
    const char *env;
    enum opt_kind kind;
    size_t off;       /* offset of the field in struct kz_config */
    int64_t min, max; /* OPT_INT bounds */
};

#define OFF(f) offsetof(struct kz_config, f)

static const struct opt opts[] = {
    {"--listen", "KZHOOK_LISTEN", OPT_LISTEN, 0, 0, 0},
    {"--db", "KZHOOK_DB", OPT_STR, OFF(db), 0, 0},
    {"--admin-token", "KZHOOK_ADMIN_TOKEN", OPT_STR, OFF(admin_token), 0, 0},
    {"--admin-token-file", "KZHOOK_ADMIN_TOKEN_FILE", OPT_STR, OFF(admin_token_file), 0, 0},
    {"--public-url", "KZHOOK_PUBLIC_URL", OPT_STR, OFF(public_url), 0, 0},
    {"--ca-file", "KZHOOK_CA_FILE", OPT_STR, OFF(ca_file), 0, 0},
    {"--allow-private-targets", "KZHOOK_ALLOW_PRIVATE_TARGETS", OPT_BOOL,
     OFF(allow_private_targets), 0, 0},
    {"--allow-http-callbacks", "KZHOOK_ALLOW_HTTP_CALLBACKS", OPT_BOOL, OFF(allow_http_callbacks),
     0, 0},
    {"--retry-schedule", "KZHOOK_RETRY_SCHEDULE", OPT_SCHEDULE, 0, 0, 0},
    {"--delivery-timeout", "KZHOOK_DELIVERY_TIMEOUT", OPT_DUR, OFF(delivery_timeout_ms), 1,
     3600000},
    {"--lease-margin", "KZHOOK_LEASE_MARGIN", OPT_DUR, OFF(lease_margin_ms), 1000, 86400000},
    {"--validation-timeout", "KZHOOK_VALIDATION_TIMEOUT", OPT_DUR, OFF(validation_timeout_ms), 1,
     600000},
    {"--token-ttl", "KZHOOK_TOKEN_TTL", OPT_DUR, OFF(token_ttl_ms), 1000, INT64_C(3153600000000)},
    {"--rate-limit", "KZHOOK_RATE_LIMIT", OPT_INT, OFF(rate_limit), 0, 100000000},
    {"--tls-cert", "KZHOOK_TLS_CERT", OPT_STR, OFF(tls_cert), 0, 0},
    {"--tls-key", "KZHOOK_TLS_KEY", OPT_STR, OFF(tls_key), 0, 0},
    {"--retention", "KZHOOK_RETENTION", OPT_DUR, OFF(retention_ms), 1000, INT64_C(3153600000000)},
    {"--threads", "KZHOOK_THREADS", OPT_INT, OFF(threads), 1, 256},
    {"--max-connections", "KZHOOK_MAX_CONNECTIONS", OPT_INT, OFF(max_connections), 16, 1000000},
    {"--max-connections-per-ip", "KZHOOK_MAX_CONNECTIONS_PER_IP", OPT_INT,
     OFF(max_connections_per_ip), 0, 1000000},
    {"--per-endpoint-concurrency", "KZHOOK_PER_ENDPOINT_CONCURRENCY", OPT_INT,
     OFF(per_endpoint_concurrency), 1, 1024},
    {"--max-webhooks-per-app", "KZHOOK_MAX_WEBHOOKS_PER_APP", OPT_INT, OFF(max_webhooks_per_app), 1,
     1000000},
    {"--max-fanout", "KZHOOK_MAX_FANOUT", OPT_INT, OFF(max_fanout), 1, 100000000},
    {"--node-id", "KZHOOK_NODE_ID", OPT_STR, OFF(node_id), 0, 0},
};

enum kz_err kz_config_parse_listen(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon;
    size_t hl;
    char *end;
    long p;

    if (!s || !*s)
        return KZ_ERR_INVALID;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');

        if (!rb || rb[1] != ':')
            return KZ_ERR_INVALID;
        hl = (size_t)(rb - s - 1);
        s++;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return KZ_ERR_INVALID;
        hl = (size_t)(colon - s);
    }
    if (!hl || hl >= hostlen)
        return KZ_ERR_INVALID;
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 0 || p > 65535)
        return KZ_ERR_INVALID;
    memcpy(host, s, hl);
    host[hl] = '\0';
    *port = (int)p;
    return KZ_OK;
}

static bool parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on")) {
        *out = true;
        return true;
    }
    if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") || !*v) {
        *out = false;
        return true;
    }
    return false;
}

/* Applies one option value; `src` names the flag or variable for the error message. */
static enum kz_err apply(struct kz_config *cfg, const struct opt *o, const char *v, const char *src,
                         char *err, size_t errlen)
{
    char *base = (char *)cfg;
    int64_t ms;
    long long n;
    char *end;

    switch (o->kind) {
    case OPT_STR: {
        char **field = (char **)(base + o->off);

        if (strlen(v) > 4096) {
            snprintf(err, errlen, "%s: value too long", src);
            return KZ_ERR_INVALID;
        }
        kz_free(*field);
        *field = *v ? kz_strdup(v) : NULL;
        return KZ_OK;
    }
    case OPT_LISTEN:
        if (kz_config_parse_listen(v, cfg->listen_host, sizeof(cfg->listen_host),
                                   &cfg->listen_port)) {
            snprintf(err, errlen, "%s: expected HOST:PORT, got \"%.100s\"", src, v);
            return KZ_ERR_INVALID;
        }
        return KZ_OK;
    case OPT_BOOL:
        if (!parse_bool(v, (bool *)(base + o->off))) {
            snprintf(err, errlen, "%s: expected 1/0/true/false, got \"%.100s\"", src, v);
            return KZ_ERR_INVALID;
        }
        return KZ_OK;
    case OPT_DUR:
        if (kz_dur_parse(v, &ms) || ms < o->min || ms > o->max) {
            snprintf(err, errlen, "%s: invalid duration \"%.100s\" (e.g. 500ms, 15s, 1m, 1h, 7d)",
                     src, v);
            return KZ_ERR_INVALID;
        }
        *(int64_t *)(base + o->off) = ms;
        return KZ_OK;
    case OPT_SCHEDULE:
        if (kz_dur_list_parse(v, cfg->retry_schedule, KZ_RETRY_MAX, &cfg->retry_count)) {
            snprintf(err, errlen, "%s: invalid retry schedule \"%.100s\" (e.g. 1m,10m,1h)", src, v);
            return KZ_ERR_INVALID;
        }
        return KZ_OK;
    case OPT_INT:
        errno = 0;
        n = strtoll(v, &end, 10);
        if (errno || *end || end == v || n < o->min || n > o->max) {
            snprintf(err, errlen, "%s: expected an integer in %lld..%lld, got \"%.100s\"", src,
                     (long long)o->min, (long long)o->max, v);
            return KZ_ERR_INVALID;
        }
        *(int *)(base + o->off) = (int)n;
        return KZ_OK;
    }
    return KZ_ERR_INVALID;
}

/* Reads the admin token from cfg->admin_token_file: the whole file, less one trailing newline
 * ("\n" or "\r\n"), so that `echo token > file` and editors that end files with a newline both
 * work. The token must be 16..256 printable ASCII characters; anything longer than a token can
 * be is refused before it is read whole (a wrong path such as a log file must not be loaded). */
static enum kz_err read_token_file(struct kz_config *cfg, char *err, size_t errlen)
{
    char tok[KZ_ADMIN_TOKEN_FILE_MAX + 2];
    const char *path = cfg->admin_token_file;
    FILE *f = fopen(path, "rb");
    size_t n, i;

    if (!f) {
        snprintf(err, errlen, "--admin-token-file %.200s: cannot read: %s", path, strerror(errno));
        return KZ_ERR_INVALID;
    }
    n = fread(tok, 1, sizeof(tok), f);
    if (ferror(f)) {
        snprintf(err, errlen, "--admin-token-file %.200s: cannot read: %s", path, strerror(errno));
        fclose(f);
        return KZ_ERR_INVALID;
    }
    fclose(f);
    if (n && tok[n - 1] == '\n') {
        n--;
        if (n && tok[n - 1] == '\r')
            n--;
    }
    if (n > KZ_ADMIN_TOKEN_FILE_MAX) {
        snprintf(err, errlen, "--admin-token-file %.200s: longer than %d bytes: not a token file?",
                 path, KZ_ADMIN_TOKEN_FILE_MAX);
        return KZ_ERR_INVALID;
    }
    if (!n) {
        snprintf(err, errlen, "--admin-token-file %.200s is empty", path);
        return KZ_ERR_INVALID;
    }
    for (i = 0; i < n; i++) {
        if (tok[i] < 0x21 || tok[i] > 0x7e) {
            snprintf(err, errlen,
                     "--admin-token-file %.200s: the token must be printable ASCII without "
                     "spaces (byte %zu is not)",
                     path, i + 1);
            return KZ_ERR_INVALID;
        }
    }
    if (n < 16) {
        snprintf(err, errlen, "--admin-token-file %.200s: the token must be 16..256 characters",
                 path);
        return KZ_ERR_INVALID;
    }
    tok[n] = '\0';
    cfg->admin_token = kz_strdup(tok);
    explicit_bzero(tok, sizeof(tok));
    return KZ_OK;
}

enum kz_err kz_config_load(struct kz_config *cfg, int argc, char **argv, int first,
                           const char **rest, char *err, size_t errlen)
{
    size_t i, nrest = 0;
    int a;
    enum kz_err result;

    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->listen_host, sizeof(cfg->listen_host), "127.0.0.1");
    cfg->listen_port = 8080;
    cfg->db = kz_strdup("./kzhook-data/kzhook.db");
    result = kz_dur_list_parse("1m,10m,1h,4h,12h,24h", cfg->retry_schedule, KZ_RETRY_MAX,
                               &cfg->retry_count);
    KZ_ASSERT(!result);
    cfg->delivery_timeout_ms = 15000;
    cfg->lease_margin_ms = 60000;
    cfg->validation_timeout_ms = 5000;
    cfg->token_ttl_ms = 24LL * 3600 * 1000;
    cfg->rate_limit = 100;
    cfg->retention_ms = 7LL * 24 * 3600 * 1000;
    cfg->threads = 4;
    cfg->max_connections = 4096;
    cfg->per_endpoint_concurrency = 8;
    cfg->max_webhooks_per_app = 1000;
    cfg->max_fanout = 100000;

    for (i = 0; i < KZ_ARRAY_LEN(opts); i++) {
        const char *v = getenv(opts[i].env);

        if (!v)
            continue;
        result = apply(cfg, &opts[i], v, opts[i].env, err, errlen);
        if (result)
            return result;
    }
    for (a = first; a < argc; a++) {
        const char *arg = argv[a];
        const char *eq = strchr(arg, '=');
        size_t flen = eq ? (size_t)(eq - arg) : strlen(arg);
        const struct opt *o = NULL;

        if (strncmp(arg, "--", 2)) {
            if (!rest) {
                snprintf(err, errlen, "unexpected argument \"%.100s\"", arg);
                return KZ_ERR_INVALID;
            }
            rest[nrest++] = arg;
            continue;
        }
        for (i = 0; i < KZ_ARRAY_LEN(opts); i++) {
            if (strlen(opts[i].flag) == flen && !strncmp(opts[i].flag, arg, flen))
                o = &opts[i];
        }
        if (!o) {
            snprintf(err, errlen, "unknown option \"%.*s\"", (int)(flen > 100 ? 100 : flen), arg);
            return KZ_ERR_INVALID;
        }
        if (o->kind == OPT_BOOL && !eq) {
            *(bool *)((char *)cfg + o->off) = true;
            continue;
        }
        if (!eq && a + 1 >= argc) {
            snprintf(err, errlen, "%s needs a value", o->flag);
            return KZ_ERR_INVALID;
        }
        result = apply(cfg, o, eq ? eq + 1 : argv[++a], o->flag, err, errlen);
        if (result)
            return result;
    }
    if (rest)
        rest[nrest] = NULL;
    if (!cfg->db) {
        snprintf(err, errlen, "--db must not be empty");
        return KZ_ERR_INVALID;
    }
    if (cfg->ca_file && access(cfg->ca_file, R_OK)) {
        snprintf(err, errlen, "--ca-file %.200s is not readable", cfg->ca_file);
        return KZ_ERR_INVALID;
    }
    if (cfg->tls_cert && cfg->tls_key &&
        (access(cfg->tls_cert, R_OK) || access(cfg->tls_key, R_OK))) {
        snprintf(err, errlen, "--tls-cert/--tls-key files are not readable");
        return KZ_ERR_INVALID;
    }
    if (!cfg->tls_cert != !cfg->tls_key) {
        snprintf(err, errlen, "--tls-cert and --tls-key go together");
        return KZ_ERR_INVALID;
    }
    if (cfg->admin_token_file) {
        if (cfg->admin_token) {
            snprintf(err, errlen,
                     "--admin-token and --admin-token-file (or KZHOOK_ADMIN_TOKEN and "
                     "KZHOOK_ADMIN_TOKEN_FILE) are mutually exclusive");
            return KZ_ERR_INVALID;
        }
        result = read_token_file(cfg, err, errlen);
        if (result)
            return result;
    }
    if (cfg->admin_token && (strlen(cfg->admin_token) < 16 || strlen(cfg->admin_token) > 256)) {
        snprintf(err, errlen, "--admin-token must be 16..256 characters");
        return KZ_ERR_INVALID;
    }
    return KZ_OK;
}

void kz_config_cleanup(struct kz_config *cfg)
{
    kz_free(cfg->db);
    if (cfg->admin_token)
        explicit_bzero(cfg->admin_token, strlen(cfg->admin_token));
    kz_free(cfg->admin_token);
    kz_free(cfg->admin_token_file);
    kz_free(cfg->public_url);
    kz_free(cfg->ca_file);
    kz_free(cfg->tls_cert);
    kz_free(cfg->tls_key);
    kz_free(cfg->node_id);
    memset(cfg, 0, sizeof(*cfg));
}
