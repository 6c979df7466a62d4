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

/* Node liveness (several nodes on one PostgreSQL database; README.md "Scaling out"). A node writes
 * its heartbeat every KZ_NODE_HEARTBEAT_MS on its own connection. Once its last written heartbeat
 * is KZ_NODE_FENCE_MS old it starts no attempt (kz_store_node_live); once it is KZ_NODE_DEAD_MS
 * old, by the database's clock, any other node may release its claims (KZ_OP_TAKEOVER). FENCE <
 * DEAD, with a second to spare, is what keeps two live nodes from sending one delivery. */
#define KZ_NODE_HEARTBEAT_MS 1000
#define KZ_NODE_FENCE_MS 3000
#define KZ_NODE_DEAD_MS 5000
/** Longest node id, in bytes. */
#define KZ_NODE_ID_MAX 128
/** Dead nodes one TAKEOVER reports (and releases) at most; more wait for the next one. */
#define KZ_TAKEOVER_NODES_MAX 16

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
    KZ_OP_RELEASE,        /* inflight deliveries -> pending: see u.release */
    KZ_OP_PRUNE,          /* retention */
    KZ_OP_WEBHOOK_ROTATE, /* webhook u.rotate.id (owned by u.rotate.app_id unless it is ""):
                             signing_secret = u.rotate.secret; the replaced secret becomes
                             prev_secret until u.rotate.expires when that is after u.rotate.now,
                             else prev_secret is cleared (a secret older than the replaced one is
                             never kept); KZ_ERR_NOTFOUND if absent. webhooks_version is
                             bumped: every node's dispatcher caches webhooks, secrets included,
                             for the rows handed off to it (dispatch.h) */
    KZ_OP_RETRY,          /* one delivery due now (u.retry); KZ_ERR_NOTFOUND when webhook u.retry.
                             webhook_id has no delivery u.retry.delivery_id, KZ_ERR_CONFLICT when
                             that webhook is inactive or expired (nothing changes) */
    KZ_OP_TAKEOVER,       /* inflight deliveries claimed by dead nodes -> pending: see u.takeover */
    KZ_OP_NODE_START,     /* store-internal: submitted by kz_store_node_start */
    KZ_OP_STATS_ADD,      /* write this node's statistics rows (u.stats), prune old ones */
};

/** One dead node whose claims a TAKEOVER released. */
struct kz_takeover {
    char node_id[KZ_NODE_ID_MAX + 1];
    int64_t deliveries;
};

/** Latency histogram buckets of the statistics: bucket i holds values up to 2^(i/2) ms (the last
 * one everything above). */
#define KZ_STATS_HIST 48

/** One node's counts of one minute (the node's whole count so far: STATS_ADD sets, never adds,
 * so writing the same row again is harmless). */
struct kz_stats_minute {
    int64_t minute; /* epoch ms, a multiple of 60000 */
    int64_t published, succeeded, failed, dead;
    int64_t hist[KZ_STATS_HIST]; /* publish -> success of the deliveries that succeeded */
};

/** One node's outcomes of one webhook: its counts of one hour, and what it saw last. */
struct kz_stats_webhook {
    char webhook_id[40];
    int64_t hour; /* epoch ms, a multiple of 3600000 */
    int64_t succeeded, failed, dead;
    int64_t last_ok_at, last_fail_at; /* epoch ms of the last success / failure seen; 0: none */
    int64_t fail_since;     /* first failure after last_ok_at (store.c: 0 unless still failing) */
    const char *last_error; /* of the failure at last_fail_at (borrowed; NULL when none) */
};

/** A webhook's health as the statistics tables tell it (kz_store_webhook_health). */
struct kz_webhook_health {
    int64_t succeeded, failed, dead; /* attempts since the hour given */
    int64_t failing_since;           /* 0 when not failing */
    int64_t last_ok_at, last_fail_at;
    char *last_error; /* owned; NULL when none */
};

/** A failing webhook (kz_store_failing_list): its last attempt failed. */
struct kz_failing {
    char id[40], app_id[40];
    const char *callback_url, *last_error; /* valid during the callback */
    int64_t failing_since;
};

/** One published event and the webhooks it matched (computed by the caller from the
 * subscription index). */
struct kz_publish_item {
    struct kz_event ev;             /* borrowed by the store; event_id must be set */
    const char *const *webhook_ids; /* n_targets ids */
    const bool *target_active;      /* per target: true -> pending, false -> skipped */
    /* Optional (NULL: none). Per target: insert the delivery inflight, claimed by this node until
     * the op's lease_until, instead of pending: the publisher hands it to this node's dispatcher
     * after the commit, so no CLAIM has to find it (docs/ARCHITECTURE.md "Hand-off"). Only where
     * target_active; the op then needs a started node (kz_store_node_start). */
    const bool *target_leased;
    size_t n_targets;
    /* results */
    int64_t seq;    /* the event's seq (new or original) */
    int deliveries; /* number of delivery rows of this event (new or original) */
    bool duplicate; /* event_id already existed: nothing was inserted */
    /* Optional (NULL: not wanted), n_targets entries: the id of each leased delivery inserted;
     * 0 for a target not leased, for a duplicate event, and for a webhook deleted meanwhile. */
    int64_t *delivery_ids;
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
            int64_t lease_until; /* epoch ms: the lease of the items' leased targets */
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
            bool all; /* every inflight row, whoever claimed it (single node at start) */
            bool own; /* the rows this node (kz_store_node_start) claimed; they keep their
                         next_attempt_at */
            int64_t released;
        } release; /* neither: rows whose lease ended, unless their claimer is a live node */
        struct {
            int64_t now; /* updated_at of the released rows (next_attempt_at is kept) */
            struct kz_takeover *nodes; /* the caller's KZ_TAKEOVER_NODES_MAX entries, or NULL */
            size_t n_nodes;            /* entries filled (0 when nodes is NULL) */
            int64_t released;
        } takeover; /* nodes other than this one whose heartbeat is KZ_NODE_DEAD_MS old */
        struct {
            const char *id, *incarnation;
            bool all; /* release every inflight row (single-node backend) */
            int64_t now, resumed;
        } node; /* NODE_START */
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
        struct {
            const char *node_id;
            const struct kz_stats_minute *minutes;
            size_t n_minutes;
            const struct kz_stats_webhook *webhooks;
            size_t n_webhooks;
            int64_t prune_before; /* > 0: also drop rows of minutes before it, hours before it
                                     minus an hour, and the state of deleted webhooks */
        } stats;
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

/* ==== node identity ==== */

/**
 * Makes this process node `node_id` (1..KZ_NODE_ID_MAX printable ASCII bytes, stable across
 * restarts: README.md "Scaling out"): registers it with a fresh incarnation, takes back every
 * delivery it still had claimed (on a backend without heartbeats, SQLite, a single node: every
 * inflight row) and sets *resumed to their number; from then on claims record this node, and
 * (PostgreSQL) a store thread writes the heartbeat. Call once, before the first claim. The node
 * is marked stopped (its leftover claims free for others at once) by kz_store_close.
 */
enum kz_err kz_store_node_start(struct kz_store *st, const char *node_id, int64_t *resumed);
/**
 * True while this node may start delivery attempts: its heartbeat was written less than
 * KZ_NODE_FENCE_MS ago and no other process has taken its node id. Always true without
 * heartbeats (SQLite, or before kz_store_node_start). Any thread; a clock read, no I/O.
 */
bool kz_store_node_live(struct kz_store *st);
/**
 * A counter that moves whenever webhooks may have changed: a commit of this store that changed
 * them, a notification from another node, or a webhooks_version read (kz_store_meta_get) that
 * differs from the last one seen. Any thread; an atomic read.
 */
int64_t kz_store_webhooks_gen(struct kz_store *st);

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
/** Every node's statistics rows of minutes >= `since`, oldest first (several rows per minute when
 * several nodes counted in it). Never reads deliveries. */
enum kz_err kz_store_stats_minutes(struct kz_store *st, int64_t since,
                                   void (*fn)(void *, const struct kz_stats_minute *), void *arg);
/** Webhook `id`'s attempts counted in hours >= `since_hour` (all nodes) and its failing state;
 * zeros when nothing was counted. `out` must be cleaned with kz_webhook_health_cleanup. */
enum kz_err kz_store_webhook_health(struct kz_store *st, const char *id, int64_t since_hour,
                                    struct kz_webhook_health *out);
void kz_webhook_health_cleanup(struct kz_webhook_health *h);
/** Existing webhooks whose last attempt failed, longest failing first, at most `limit`. */
enum kz_err kz_store_failing_list(struct kz_store *st, size_t limit,
                                  void (*fn)(void *, const struct kz_failing *), void *arg);

#endif
