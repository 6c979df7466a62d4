/* config.h — the immutable run configuration: every README "Configuration" option as a flag and an
 * environment variable. Built once in main(), read-only afterwards (any thread may read). */
#ifndef KZ_CONFIG_H
#define KZ_CONFIG_H

#include "kz.h"

#define KZ_RETRY_MAX 32
#define KZ_ADMIN_TOKEN_FILE_MAX 256 /* longest token; a bigger file is refused unread */

struct kz_trust;

struct kz_config {
    char listen_host[256];
    int listen_port;
    char *db;               /* path or postgresql:// URL */
    char *admin_token;      /* NULL: generated at first start; filled from the file when set */
    char *admin_token_file; /* --admin-token-file: the token's file (read at load) */
    char *public_url;       /* NULL: derived from listen */
    char *ca_file;
    bool allow_private_targets;
    bool allow_http_callbacks;
    int64_t retry_schedule[KZ_RETRY_MAX];
    size_t retry_count;
    int64_t delivery_timeout_ms;
    int64_t lease_margin_ms; /* a claim's lease = delivery timeout + this */
    int64_t validation_timeout_ms;
    int64_t token_ttl_ms;
    int rate_limit;           /* calls/min/app on /v1/webhook*, 0 = off */
    char *tls_cert, *tls_key; /* paths; both or neither */
    int64_t retention_ms;
    int threads; /* MHD worker threads */
    int max_connections;
    int max_connections_per_ip;   /* 0: three quarters of max_connections */
    int per_endpoint_concurrency; /* in-flight deliveries per webhook */
    int max_webhooks_per_app;     /* one more is 403 QuotaExceeded */
    int max_fanout;               /* deliveries one publish request may create (413) */
    char *node_id;                /* --node-id: NULL: "<hostname>/<listen host>:<port>" (main.c) */
    struct kz_trust *trust;       /* outbound TLS trust store, set by main at start (outbound.h) */
};

/** Fills defaults, then the environment, then argv[first..argc) flags (flags win). On error
 * writes a one-line message to `err` and returns KZ_ERR_INVALID. Unknown flags are errors.
 * Positional (non-flag) arguments are returned in `rest` (borrowed from argv, NULL-terminated,
 * caller provides room for argc - first + 1 entries) when rest is not NULL; otherwise they
 * are errors. */
/* --admin-token-file PATH / KZHOOK_ADMIN_TOKEN_FILE fills admin_token from the file's contents
 * (one trailing newline removed); an unreadable, empty, too short, too long or non-printable
 * token, or the option given together with --admin-token / KZHOOK_ADMIN_TOKEN, is an error. */
enum kz_err kz_config_load(struct kz_config *cfg, int argc, char **argv, int first,
                           const char **rest, char *err, size_t errlen);
void kz_config_cleanup(struct kz_config *cfg);
/** Parses "HOST:PORT" ("[v6]:PORT" too). */
enum kz_err kz_config_parse_listen(const char *s, char *host, size_t hostlen, int *port);

#endif
