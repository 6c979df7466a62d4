/* api.h — routing, authentication, validation, JSON errors (README "Endpoints", docs/openapi.json).
 * The one place that maps enum kz_err to HTTP. Knows nothing of libmicrohttpd: http.c fills a
 * struct kz_req.
 *
 * Threads: kz_api_handle runs on MHD worker threads, several at once. It may block on the store
 * (kz_store_exec) or on the callback handshake, except for publishes, which return
 * KZ_ERR_PENDING and finish on the store's writer thread by calling req->complete(req). */
#ifndef KZ_API_H
#define KZ_API_H

#include "buf.h"
#include "config.h"
#include "metrics.h"
#include "store.h"
#include "subidx.h"

struct kz_api_pending;

/** What the answer to a failed request needs beyond its enum kz_err (api-private). */
enum kz_req_flavor {
    KZ_FLAVOR_PLAIN = 0,
    KZ_FLAVOR_INTERNAL, /* a lower layer failed: 500, or 503 when the store is busy or down */
    KZ_FLAVOR_CALLBACK, /* KZ_ERR_INVALID: 400 CallbackValidationFailed */
    KZ_FLAVOR_TOKEN,    /* KZ_ERR_AUTH: 401 InvalidToken */
    KZ_FLAVOR_FANOUT,   /* KZ_ERR_TOOBIG: 413 FanoutTooLarge */
};

struct kz_req {
    /* set by the transport */
    const char *method;
    const char *path; /* decoded path, without the query */
    const char *body;
    size_t body_len;
    const char *(*header)(void *conn, const char *name); /* case-insensitive; NULL if absent */
    const char *(*query)(void *conn, const char *name);
    void *conn;
    char remote_ip[64];
    void (*complete)(struct kz_req *req); /* called once, from another thread, after PENDING */
    /* set by the api */
    int status;
    struct kz_buf out; /* response body */
    const char *content_type;
    char retry_after[24];           /* "" or seconds */
    const char *allow;              /* Allow header for 405 */
    const char *headers[16];        /* more headers: name, value, ..., NULL (static strings) */
    char app_id[40];                /* for the request log, "" when none */
    struct kz_api_pending *pending; /* api-private state of a PENDING request */
    struct {                        /* api-private: how a failed request is answered */
        char message[512];
        enum kz_req_flavor flavor;
        int retry_after_s; /* > 0: 429 Throttled with Retry-After */
    } err;
};

struct kz_api;

/** Hooks the api calls into the layers above it (set by main). */
struct kz_api_hooks {
    void (*wake_dispatch)(void *arg); /* deliveries became due (publish, replay, re-enable) */
    /* Hand-off of new deliveries to this node's dispatcher (dispatch.h kz_dispatch_reserve and
     * kz_dispatch_handoff; NULL: every delivery is inserted pending, to be claimed) */
    size_t (*reserve)(void *arg, const char *const *webhook_ids, const bool *eligible, bool *leased,
                      size_t n);
    void (*handoff)(void *arg, struct kz_claimed *rows, size_t n, size_t reserved, int64_t gen);
    void *arg;
};

/** Builds the api over borrowed `cfg`, `st`, `idx`, `m`; `admin_hash` is the SHA-256 hex of the
 * admin token. */
struct kz_api *kz_api_new(const struct kz_config *cfg, struct kz_store *st, struct kz_subidx *idx,
                          struct kz_metrics *m, const char *admin_hash,
                          const struct kz_api_hooks *hooks);
void kz_api_free(struct kz_api *api);

/** Initialises the response part of `req` (the transport sets the rest). */
void kz_req_init(struct kz_req *req);
/** Frees the response and any pending state. */
void kz_req_cleanup(struct kz_req *req);

/** Shutdown, step 1: from now on publishes are refused with 503 (nothing is accepted that the
 * process might not finish answering). Any thread. */
void kz_api_close(struct kz_api *api);
/** Publishes submitted and not yet answered. */
int kz_api_pending(struct kz_api *api);

/** Answers `req`: KZ_OK when the response is ready in req; KZ_ERR_PENDING when it will be
 * ready when req->complete(req) is called (exactly once, from another thread). */
enum kz_err kz_api_handle(struct kz_api *api, struct kz_req *req);

/** Shared by the CLI: publishes events given as a JSON body exactly as POST /v1/events does,
 * blocking until committed; fills status and body. */
void kz_api_publish_sync(struct kz_api *api, const char *body, size_t len, int *status,
                         struct kz_buf *out);
/** Creates an application (as POST /admin/v1/applications); fills status and body. */
void kz_api_app_create(struct kz_api *api, const char *body, size_t len, int *status,
                       struct kz_buf *out);
/** The operator's webhook commands (the CLI: any application's webhooks), JSON in `out`:
 * "list" (id: an application id or NULL for all) -> 200 {"webhooks": [...]}; "get" id -> 200
 * the webhook; "test" id, arg: the request body or NULL -> as POST /v1/webhook/{id}/test;
 * "retry" id, arg: deliveryId -> as POST .../deliveries/{deliveryId}/retry; "delivery" id, arg:
 * deliveryId -> as GET .../deliveries/{deliveryId}. */
void kz_api_cli_webhook(struct kz_api *api, const char *cmd, const char *id, const char *arg,
                        int *status, struct kz_buf *out);

#endif
