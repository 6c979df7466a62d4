/* api_internal.h — what the api files share (api.c: routing, auth, errors; api_webhook.c;
 * api_publish.c; api_admin.c). Not for other modules: they use api.h.
 *
 * How a handler answers. It returns enum kz_err:
 *  - KZ_OK: the answer is in req (kz_api_reply wrote it);
 *  - KZ_ERR_PENDING: the answer comes later, through kz_api_finish on another thread;
 *  - any other error: kz_api_error_answer() (api.c, the one place that maps an error to HTTP)
 *    writes the contract's error body. A handler names the field at fault by returning
 *    kz_api_reject(req, KZ_ERR_INVALID, "callBackUrl: ...") instead of the bare error; the
 *    variants below pick the special answers (CallbackValidationFailed, InvalidToken,
 *    Throttled with Retry-After, FanoutTooLarge).
 *
 * Threads: as api.h. The completion paths (publish_done, the handshake's continuation) run on
 * the store writer or the handshake thread and end with kz_api_finish. */
#ifndef KZ_API_INTERNAL_H
#define KZ_API_INTERNAL_H

#include "api.h"
#include "callback.h"
#include "ratelimit.h"

#include <jansson.h>
#include <stdatomic.h>

/* The message of every 401 InvalidToken starts with the text Kaizala's servers send: published
 * client libraries fetch a new token only when they find it (README, "Migrating a Kaizala
 * connector"). kzhook's own reason follows in parentheses. */
#define KZ_API_TOKEN_MSG                                                                           \
    "Invalid token. Failure reason:Token validation failed due to unknown reason!"

#define KZ_API_SECRET_CHARS 43 /* 258 bits of [A-Za-z0-9_-] */
#define KZ_API_PUBLISH_MAX 1000
/* No response is built whole beyond this: a longer page is cut and carries a nextCursor. */
#define KZ_API_PAGE_MAX (4u * 1024 * 1024)
/* At most this many callback handshakes per application at once; one more is 429. */
#define KZ_API_HANDSHAKES_PER_APP 4

struct kz_api {
    const struct kz_config *cfg;
    struct kz_store *st;
    struct kz_subidx *idx;
    struct kz_metrics *m;
    char admin_hash[65];
    struct kz_api_hooks hooks;
    struct kz_ratelimit *rl;
    struct kz_handshaker *hs; /* callback handshakes, off the API workers; NULL if it failed */
    atomic_bool closing;
    atomic_int pending; /* PENDING requests not yet answered (publishes, handshakes) */
};

/* ==== errors: api.c ==== */

/** Stores the message (printf-style; may quote client bytes, made valid UTF-8 when written) for
 * kz_api_error_answer and returns `e`, so a handler can `return kz_api_reject(...)`. */
enum kz_err kz_api_reject(struct kz_req *req, enum kz_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** KZ_ERR_INVALID answered 400 CallbackValidationFailed (the handshake failed). */
enum kz_err kz_api_reject_callback(struct kz_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/** KZ_ERR_AUTH answered 401 InvalidToken with the text Kaizala clients look for. */
enum kz_err kz_api_reject_token(struct kz_req *req, const char *reason);
/** KZ_ERR_QUOTA answered 429 Throttled with Retry-After: `wait_s` (>= 1). */
enum kz_err kz_api_throttle(struct kz_req *req, int wait_s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** KZ_ERR_TOOBIG answered 413 FanoutTooLarge. */
enum kz_err kz_api_reject_fanout(struct kz_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/** KZ_ERR_NOTFOUND answered 405 MethodNotAllowed with the Allow header. */
enum kz_err kz_api_method_not_allowed(struct kz_req *req, const char *allow);
/** A lower layer failed with `e` (the store, the allocator): 503 Unavailable when the store is
 * busy or down, else 500 InternalError. Returns `e`. */
enum kz_err kz_api_internal(struct kz_req *req, enum kz_err e);
/** Writes the answer to a request that failed with `e` (not KZ_OK, not KZ_ERR_PENDING). */
void kz_api_error_answer(struct kz_req *req, enum kz_err e);

/** Answers `status` with `v` serialised (takes `v`); KZ_OK, or KZ_ERR_NOMEM when it cannot be
 * serialised (the caller returns it, as for any error). */
enum kz_err kz_api_reply(struct kz_req *req, int status, json_t *v);
/** Ends a PENDING request from another thread: the error answer when `e`, then req->complete. */
void kz_api_finish(struct kz_req *req, enum kz_err e);

/* ==== a page of items written straight into req->out, cut at KZ_API_PAGE_MAX ==== */

struct kz_api_page {
    struct kz_req *req;
    size_t n;  /* items written */
    bool cut;  /* an item did not fit: the page ends before it */
    bool fail; /* an item could not be serialised */
};

/** Starts `{"<name>":[` in req->out. */
void kz_api_page_begin(struct kz_api_page *pg, struct kz_req *req, const char *name);
/** Appends `item` (takes it) unless the page is cut; false when it did not fit (then the page
 * is cut and every later item is dropped). */
bool kz_api_page_add(struct kz_api_page *pg, json_t *item);
/** Closes the array, adds `"nextCursor": cursor` (JSON null when NULL; omitted when
 * `omit_null`), closes the object and sets status 200. */
enum kz_err kz_api_page_end(struct kz_api_page *pg, const char *cursor, bool omit_null);

/* ==== requests answered later: api.c ==== */

/** Api-private state of a PENDING request (req->pending points at one). `release` is called by
 * kz_req_cleanup when the transport is done with req: it frees the state, or when the work is
 * still running, marks req gone so the work frees it when it ends. */
struct kz_api_pending {
    void (*release)(struct kz_api_pending *p);
};

/* ==== shared helpers: api.c ==== */

/** Parses the body as a JSON object (or array when `allow_array`); NULL with the error stored
 * in req (KZ_ERR_INVALID) on failure. */
json_t *kz_api_parse_body(struct kz_req *req, bool allow_array, bool any_numbers);
/** Printable ASCII only: the value may end up in an HTTP header, so no CR/LF or controls. */
bool kz_api_header_safe(const char *s, size_t len);
/** Optional string field: absent/null -> *out NULL; present -> copy (1..max bytes); KZ_ERR_INVALID
 * naming the field on a wrong type or size. `empty_ok` turns "" into NULL. */
enum kz_err kz_api_opt_str(struct kz_req *req, const json_t *obj, const char *name, size_t max,
                           bool empty_ok, char **out, bool *present);
/** Whether `app` may subscribe to `object_id`. */
bool kz_api_app_grants(const struct kz_app *app, const char *object_id);

/* ==== handlers ==== */

/* api_admin.c */
enum kz_err kz_api_healthz(struct kz_api *api, struct kz_req *req);
enum kz_err kz_api_metrics(struct kz_api *api, struct kz_req *req);
enum kz_err kz_api_app_create_req(struct kz_api *api, struct kz_req *req);
enum kz_err kz_api_app_list(struct kz_api *api, struct kz_req *req);
enum kz_err kz_api_app_delete(struct kz_api *api, struct kz_req *req, const char *id);

/* api_webhook.c: `app` is the authenticated caller */
enum kz_err kz_api_webhook_create(struct kz_api *api, struct kz_req *req, const struct kz_app *app);
enum kz_err kz_api_webhook_list(struct kz_api *api, struct kz_req *req, const struct kz_app *app);
enum kz_err kz_api_webhook_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                               const char *id);
enum kz_err kz_api_webhook_update(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id);
enum kz_err kz_api_webhook_delete(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id);
enum kz_err kz_api_delivery_list(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                 const char *id);
enum kz_err kz_api_replay(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                          const char *id);
/** GET /v1/webhook/{id}/secret and POST /v1/webhook/{id}/secret/rotate. */
enum kz_err kz_api_secret_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                              const char *id);
enum kz_err kz_api_secret_rotate(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                 const char *id);
/* attempt history, retry, test events; `app` NULL: the operator (any webhook) */
enum kz_err kz_api_delivery_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id, const char *delivery);
enum kz_err kz_api_delivery_retry(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id, const char *delivery);
enum kz_err kz_api_webhook_test(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id);

/* api_publish.c */
enum kz_err kz_api_publish(struct kz_api *api, struct kz_req *req);

/* api_console.c */
enum kz_err kz_api_stats(struct kz_api *api, struct kz_req *req);
enum kz_err kz_api_admin_webhooks(struct kz_api *api, struct kz_req *req);
enum kz_err kz_api_webhook_health(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id);

#endif
