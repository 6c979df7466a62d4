/* store.h — the one storage interface (SQLite today, PostgreSQL behind the same calls).
 * No SQL exists outside the store modules.
 *
 * Two kinds of calls:
 *  - Writes are `struct kz_op`s handed to the store's single writer thread, which takes every
 *    op queued (up to a batch limit), runs them all in ONE transaction with ONE fsync (group
 *    commit), then calls each op's `done` callback on the writer thread, after the commit is
 *    durable. Each op runs inside its own savepoint, so one failing op does not fail the batch.
 *    kz_store_exec() wraps submit + wait for callers that may block.
 *  - Reads (kz_store_*_get/list) may be called from any thread; they use their own read
 *    connections (WAL lets them run beside the writer) and never see uncommitted data.
 *
 * Threads: any thread may call kz_store_submit/exec and the reads. `done` callbacks run on the
 * writer thread and must not block (signal a condvar, resume a connection, wake a loop).
 */
#ifndef KZ_STORE_H
#define KZ_STORE_H

#include "model.h"
#include "buf.h"

struct kz_store;

/** Most rows one PRUNE op touches per step (bounds its scratch memory). */
#define KZ_PRUNE_LIMIT_MAX 100000
/** Bytes of an attempt's error text kept (cut back to a character boundary). */
#define KZ_ERROR_KEEP 1024
/** Live (unexpired) access tokens one application keeps at most: TOKEN_ADD revokes the oldest. */
#define KZ_TOKENS_PER_APP 100

enum kz_op_type {
    KZ_OP_META_SET,       /* meta[key] = value */
    KZ_OP_APP_CREATE,     /* insert u.app */
    KZ_OP_APP_DELETE,     /* delete app u.id, its tokens, webhooks and their deliveries;
                             KZ_ERR_NOTFOUND if absent */
    KZ_OP_TOKEN_ADD,      /* insert access token (u.token); first deletes the app's expired tokens
                             and, of its live ones, all but the KZ_TOKENS_PER_APP - 1 that expire
                             last (the oldest are revoked) */
    KZ_OP_WEBHOOK_INSERT, /* insert u.webhook, in the same transaction as these checks (serialised
                             per application, also across nodes): KZ_ERR_AUTH when application
                             u.webhook.app_id no longer exists (deleted meanwhile), KZ_ERR_QUOTA
                             when it already has u.max_per_app webhooks (0: no limit); on either,
                             nothing is stored */
    KZ_OP_WEBHOOK_UPDATE, /* replace every mutable column of u.webhook (matched by id and app_id);
                             KZ_ERR_NOTFOUND if absent */
    KZ_OP_WEBHOOK_DELETE, /* delete webhook u.id (owned by u.app_id unless app_id is "") and
                             all its deliveries; KZ_ERR_NOTFOUND if absent */
    KZ_OP_WEBHOOK_ACTIVE, /* set active = u.flag for webhook u.id; KZ_ERR_NOTFOUND if absent */
    KZ_OP_PUBLISH,        /* insert events and their deliveries, idempotent on event_id */
    KZ_OP_CLAIM,          /* lease due deliveries */
    KZ_OP_COMPLETE,       /* record attempt outcomes */
    KZ_OP_REPLAY,         /* requeue non-succeeded deliveries of a webhook since a time */
    KZ_OP_RELEASE,        /* inflight deliveries whose lease ended -> pending */
    KZ_OP_PRUNE,          /* retention */
    KZ_OP_WEBHOOK_ROTATE, /* webhook u.rotate.id (owned by u.rotate.app_id unless it is ""):
                             signing_secret = u.rotate.secret; the replaced secret becomes
                             prev_secret until u.rotate.expires when that is after u.rotate.now,
                             else prev_secret is cleared (a secret older than the replaced one is
                             never kept); KZ_ERR_NOTFOUND if absent. webhooks_version is not
                             bumped: no index holds secrets, each claim reads them */
    KZ_OP_RETRY,          /* one delivery due now (u.retry); KZ_ERR_NOTFOUND when webhook u.retry.
                             webhook_id has no delivery u.retry.delivery_id, KZ_ERR_CONFLICT when
                             that webhook is inactive or expired (nothing changes) */
};

/** One published event and the webhooks it matched (computed by the caller from the
 * subscription index). */
struct kz_publish_item {
    struct kz_event ev;             /* borrowed by the store; event_id must be set */
    const char *const *webhook_ids; /* n_targets ids */
    const bool *target_active;      /* per target: true -> pending, false -> skipped */
    size_t n_targets;
    /* results */
    int64_t seq;    /* the event's seq (new or original) */
    int deliveries; /* number of delivery rows of this event (new or original) */
    bool duplicate; /* event_id already existed: nothing was inserted */
};

/** A delivery leased by KZ_OP_CLAIM, with everything needed to send it. Owned by the claim op
 * until kz_claim_cleanup. */
struct kz_claimed {
    int64_t delivery_id;
    int attempts; /* attempts made before this one */
    int64_t created_at;
    struct kz_webhook wh; /* full webhook row */
    struct kz_event ev;   /* full event row */
};

/** Outcome of one attempt, for KZ_OP_COMPLETE. */
struct kz_attempt {
    int64_t delivery_id;
    char webhook_id[40];
    enum kz_dstate state;    /* SUCCEEDED, PENDING (retry at next_attempt_at), DEAD, SKIPPED */
    int attempts;            /* total attempts after this one */
    int64_t next_attempt_at; /* for PENDING */
    int status;              /* HTTP status, 0 if none */
    const char *error;       /* NULL when none; borrowed. Stored cleaned (kz_buf_text) and cut
                                to KZ_ERROR_KEEP bytes at a character boundary */
    const char *response;    /* NULL when none; borrowed. Stored cleaned (kz_buf_text) and cut
                                to KZ_RESPONSE_KEEP bytes at a character boundary */
    size_t response_len;
    int64_t at;          /* epoch ms the attempt started; 0: no request was made (a skip, a claimed
                            row handed back): nothing goes to the attempt history */
    int64_t duration_ms; /* how long the attempt took */
};

/** One stored attempt of a delivery (its history: kz_store_delivery_get). */
struct kz_attempt_row {
    int64_t at, duration_ms;
    int status;     /* 0 when none */
    char *error;    /* NULL when none; owned */
    char *response; /* NULL when none; owned; <= KZ_RESPONSE_KEEP bytes */
};

/** Attempts kz_store_delivery_get returns at most (the newest ones). */
#define KZ_ATTEMPTS_SHOWN 100

/** One delivery with what its body is built from and its attempt history. Owned; free with
 * kz_delivery_detail_cleanup. */
struct kz_delivery_detail {
    struct kz_delivery d;
    struct kz_event ev;
    struct kz_webhook wh; /* the webhook as the body is built from it: the delivery's frozen
                             objectType/objectId/callBackContext applied when a PUT changed them */
    struct kz_attempt_row *attempts; /* oldest first */
    size_t n_attempts;
};
void kz_delivery_detail_cleanup(struct kz_delivery_detail *dd);

struct kz_op {
    enum kz_op_type type;
    union {
        struct {
            const char *key, *value;
        } meta;
        struct kz_app app; /* APP_CREATE: borrowed */
        const char *id;    /* APP_DELETE */
        struct {
            const char *hash, *app_id;
            int64_t expires_at;
        } token;
        struct {
            struct kz_webhook webhook; /* WEBHOOK_INSERT/UPDATE: borrowed */
            int max_per_app;           /* WEBHOOK_INSERT: webhooks per app at most, 0: no limit */
        };
        struct {
            const char *id, *app_id;
        } del; /* WEBHOOK_DELETE */
        struct {
            const char *id;
            bool flag;
        } active; /* WEBHOOK_ACTIVE */
        struct {
            struct kz_publish_item *items;
            size_t n;
        } publish;
        struct {
            int64_t now, lease_until;
            size_t limit;
            const char *const *exclude; /* webhook ids not to claim for (at their cap) */
            size_t n_exclude;
            struct kz_claimed *out; /* allocated by the store, `n_out` rows */
            size_t n_out;
            /* out: webhooks with a rateLimit or ordered (README.md "Delivery controls") that
             * have due rows this claim did not take (over their rate, or waiting for an earlier
             * delivery), and the earliest epoch ms one of them gets a row by its rate (0: none
             * by time: an ordered one waits for its delivery in flight) */
            size_t held;
            int64_t held_until;
        } claim;
        struct {
            const struct kz_attempt *items;
            size_t n;
            bool *disabled; /* optional, n entries: set true where that attempt's dead delivery
                               disabled its webhook (the disable rule: docs/internals/STORE.md) */
        } complete;
        struct {
            const char *webhook_id;
            int64_t since, now;
            int64_t requeued;
        } replay;
        struct {
            int64_t now;
            bool all;
            int64_t released;
        } release; /* all: ignore lease time */
        struct {
            int64_t before;
            size_t limit; /* rows per step; the store caps it at KZ_PRUNE_LIMIT_MAX */
            int64_t pruned;
        } prune;
        struct {
            const char *id, *app_id, *secret;
            int64_t now, expires; /* epoch ms */
        } rotate;                 /* WEBHOOK_ROTATE */
        struct {
            const char *webhook_id;
            int64_t delivery_id, now;
            bool requeued; /* false: it was inflight (an attempt is under way), left alone */
        } retry;
    } u;
    enum kz_err result;                        /* set by the writer before done() */
    int64_t webhooks_version;                  /* meta "webhooks_version" after this op's batch */
    void (*done)(struct kz_op *op, void *arg); /* writer thread, after commit */
    void *arg;
    struct kz_op *next; /* queue link: store-private */
};

/** Opens (creating if needed) the store at `url`: a filesystem path for SQLite (parent dir is
 * created, WAL, synchronous=FULL), or postgresql://... Applies schema migrations, starts the
 * writer thread. `queue_max` bounds queued ops; beyond it submit fails with KZ_ERR_BUSY. */
enum kz_err kz_store_open(struct kz_store **out, const char *url, size_t queue_max, char *err,
                          size_t errlen);
/** Drains the queue, stops the writer, closes every connection. NULL-safe. */
void kz_store_close(struct kz_store *st);

/** Queues `op`; its done() runs later on the writer thread. KZ_ERR_BUSY when the queue is full
 * (op not queued, done not called). The caller keeps `op` alive until done(). */
enum kz_err kz_store_submit(struct kz_store *st, struct kz_op *op);
/** Submits and waits for the commit; returns op->result (or the submit error). */
enum kz_err kz_store_exec(struct kz_store *st, struct kz_op *op);
/** Frees the rows a KZ_OP_CLAIM returned. */
void kz_claim_cleanup(struct kz_op *op);

/* ==== cross-node notifications ==== */

#define KZ_NOTIFY_WEBHOOKS 1 /* webhooks changed elsewhere: resync the subscription index */
#define KZ_NOTIFY_DUE 2      /* deliveries became due elsewhere: wake the dispatcher */

/** Registers `fn`, called as fn(arg, KZ_NOTIFY_*) from a store-internal thread when another node
 * (or process) committed a change of that kind; notifications of this store's own writes are
 * not reported (best effort). After a lost notification connection comes back, both kinds are
 * reported once, since some may have been missed. A new call replaces the callback; fn NULL
 * removes it, and once that call returns fn is neither running nor called again. fn must not
 * block for long and must not call kz_store_on_notify. Call before kz_store_close. PostgreSQL:
 * LISTEN on a dedicated connection, started by the first registration. SQLite: accepted, never
 * called (poll instead). */
void kz_store_on_notify(struct kz_store *st, void (*fn)(void *arg, int what), void *arg);

/* ==== reads: any thread ==== */

/** KZ_OK when the store answers a trivial query. */
enum kz_err kz_store_ping(struct kz_store *st);
/** Copies meta[key] into out (reset first); KZ_ERR_NOTFOUND if unset. */
enum kz_err kz_store_meta_get(struct kz_store *st, const char *key, struct kz_buf *out);
enum kz_err kz_store_app_get(struct kz_store *st, const char *id, struct kz_app *out);
/** Calls fn for each application in creation order; the struct is valid during the call only. */
enum kz_err kz_store_app_list(struct kz_store *st, void (*fn)(void *, const struct kz_app *),
                              void *arg);
/** Looks up an access token by hash: its app id and expiry. KZ_ERR_NOTFOUND if absent. */
enum kz_err kz_store_token_get(struct kz_store *st, const char *hash, char app_id[40],
                               int64_t *expires_at);
enum kz_err kz_store_webhook_get(struct kz_store *st, const char *id, struct kz_webhook *out);
/** Webhooks of app `app_id` (NULL: all apps), optionally filtered by object type (-1: any) and
 * object id (NULL: any), in creation order. */
enum kz_err kz_store_webhook_list(struct kz_store *st, const char *app_id, int object_type,
                                  const char *object_id,
                                  void (*fn)(void *, const struct kz_webhook *), void *arg);
/** Delivery log of one webhook, newest first, `state` -1 for all (KZ_D_PENDING also matches
 * INFLIGHT), ids < `cursor` when cursor > 0, at most `limit` rows. */
enum kz_err kz_store_delivery_list(struct kz_store *st, const char *webhook_id, int state,
                                   int64_t cursor, size_t limit,
                                   void (*fn)(void *, const struct kz_delivery *), void *arg);
/** Delivery `delivery_id` of webhook `webhook_id` with its event, its webhook as its body is
 * built from, and its last KZ_ATTEMPTS_SHOWN attempts (oldest first). KZ_ERR_NOTFOUND when that
 * webhook has no such delivery. */
enum kz_err kz_store_delivery_get(struct kz_store *st, const char *webhook_id, int64_t delivery_id,
                                  struct kz_delivery_detail *out);
/** The delivery of event `event_id` to webhook `webhook_id`; KZ_ERR_NOTFOUND when none. */
enum kz_err kz_store_delivery_of_event(struct kz_store *st, const char *webhook_id,
                                       const char *event_id, int64_t *delivery_id);
/** How many batches the writer has committed or failed so far, and how many ops they held
 * (/metrics, tests). Any thread. */
void kz_store_stats(struct kz_store *st, uint64_t *batches, uint64_t *ops);
/** Counts for /metrics: pending due now, pending scheduled later, inflight. */
enum kz_err kz_store_backlog(struct kz_store *st, int64_t now, int64_t *due, int64_t *scheduled,
                             int64_t *inflight);
/** Earliest next_attempt_at among pending deliveries, or -1 when none. */
enum kz_err kz_store_next_due(struct kz_store *st, int64_t *at);

#endif
