/* store_impl.h — what a storage backend implements so that store.c can drive it. Internal to
 * the store modules (store.c, store_sqlite.c, store_pg.c) and their unit tests; nothing
 * else includes it.
 *
 * The split (docs/internals/STORE.md, "Who does what"):
 *  - store.c owns the op queue, the single writer thread, and every rule that does not depend on
 *    the database: which ops are valid, which batches may skip the flush (lazy), the savepoint per
 *    op, which ops run as one publish set, which failures are retried, what a failed op or batch
 *    leaves in its op, how stored text is cleaned and cut, the limits, and
 *    when webhooks_version is bumped or other nodes are told that deliveries are due.
 *  - a backend owns connections and SQL: it turns one already-validated, already-cleaned op into
 *    statements, and provides the transaction primitives below.
 * To add a column: the field in model.h/store.h, its check or cleaning (if any) in store.c's
 * op_valid/prepare, one op function per backend, and a migration per backend.
 *
 * Threads: open/close run on the thread calling kz_store_open/close while no other thread uses
 * the backend. The batch primitives and op functions run only on the writer thread, one at a
 * time. The reads may run on any thread concurrently with each other and with a batch.
 */
#ifndef KZ_STORE_IMPL_H
#define KZ_STORE_IMPL_H

#include "store.h"

/** Most ops the writer hands to one batch (one transaction, one fsync). */
#define KZ_STORE_BATCH_MAX 1000

/** `n` as a non-negative SQL integer (size_t values above INT64_MAX are capped). */
static inline int64_t kz_store_clamp_size(size_t n)
{
    return n > (size_t)INT64_MAX ? INT64_MAX : (int64_t)n;
}

/** A webhook with a successful attempt in one COMPLETE, and the latest end (at + duration) of
 * those attempts: computed by store.c from every attempt of the op, including those whose row
 * was no longer inflight (the endpoint did answer). Sorted by id, distinct. */
struct kz_success {
    const char *webhook_id;
    int64_t at;
};

/** The attempt history is read newest first (the last KZ_ATTEMPTS_SHOWN); this puts it oldest
 * first, as kz_store_delivery_get returns it. */
static inline void kz_attempts_oldest_first(struct kz_delivery_detail *dd)
{
    size_t i;

    for (i = 0; i < dd->n_attempts / 2; i++) {
        struct kz_attempt_row t = dd->attempts[i];

        dd->attempts[i] = dd->attempts[dd->n_attempts - 1 - i];
        dd->attempts[dd->n_attempts - 1 - i] = t;
    }
}
/** Bytes kz_stats_hist_format writes at most (with the NUL). */
#define KZ_STATS_HIST_TEXT (KZ_STATS_HIST * 21)
/** A statistics histogram as both backends store it: KZ_STATS_HIST decimal counts, comma
 * separated. */
void kz_stats_hist_format(const int64_t *hist, char out[KZ_STATS_HIST_TEXT]);
/** Parses what kz_stats_hist_format wrote; false (and `hist` zeroed) for anything else. */
bool kz_stats_hist_parse(const char *s, int64_t *hist);

/** Gated webhooks one claim looks at, at most (the others wait for a later claim). */
#define KZ_GATES_MAX 1024

/** A webhook with a claim gate (a rateLimit or ordered: README.md "Delivery controls") that has
 * due rows, as the claim reads it: the backend fills the state (inside the claim's transaction,
 * the gate row locked against other nodes' claims), store.c's kz_gate_allow() decides. */
struct kz_gate {
    char webhook_id[40];
    int rate_limit;   /* 0: none */
    bool ordered;     /* one at a time, in delivery id (publish) order */
    bool deliverable; /* active and not expired: else its rows are claimed freely, to be skipped */
    int64_t now;      /* the bucket's clock, epoch ms (PostgreSQL: the server's, for every node) */
    int64_t due_now;  /* the claim's now, which next_attempt_at is compared with */
    int64_t tokens;   /* the shared bucket: thousandths of an attempt, as of refilled_at */
    int64_t refilled_at; /* 0: never used (a full bucket) */
    int64_t last_id;     /* the delivery an ordered claim handed out last (0: none) */
    /* ordered only: the oldest pending or inflight delivery (the head) */
    bool head_found;
    int64_t head_id, head_due; /* head_due: its next_attempt_at */
    bool head_pending;         /* false: the head is inflight */
    bool last_inflight;        /* the delivery this gate handed out last is still inflight */
    /* decided by kz_gate_allow */
    size_t allow;   /* rows the claim may take for this webhook */
    size_t room;    /* what the claim could still take when it asked */
    bool head_only; /* take exactly the head (ordered), else the oldest due rows */
};

/** store.c: how many rows of gated webhook `g` the claim may take now (at most `room`): 0 while
 * an ordered webhook's head is inflight, not due, or another of its deliveries is inflight, else
 * 1 (the head); for a rateLimit, no more than the whole attempts in its bucket (capacity and
 * refill rateLimit per second). Sets g->allow and g->head_only. */
size_t kz_gate_allow(struct kz_gate *g, size_t room);
/** store.c: `taken` rows were claimed for `g`: the bucket pays for them (g->tokens, refilled_at
 * now); counts `g` in *held when it kept due rows back, and lowers *held_until (0: unset) to when
 * its bucket next holds a whole attempt. */
void kz_gate_charge(struct kz_gate *g, size_t taken, size_t *held, int64_t *held_until);

/** Backend state; each backend defines its own struct. */
struct kz_backend;

/** One storage backend. Every read has the meaning of the kz_store_* function of the same name in
 * store.h, with the store replaced by the backend. */
struct kz_backend_ops {
    const char *name; /* "sqlite", "postgresql": for logs */

    /** Connects to `url`, applies migrations. On failure writes a message (no secrets) to
     * `err` and returns an error; *out is untouched. */
    enum kz_err (*open)(struct kz_backend **out, const char *url, char *err, size_t errlen);
    /** Closes every connection and frees the backend. NULL-safe. */
    void (*close)(struct kz_backend *be);

    /* ==== one write batch (writer thread), in this order:
     *   begin(lazy)
     *   for each op: savepoint ; [lock_wait(true)] ; <op function> ;
     *                on failure rollback_to (and maybe the op function again) ; [lock_wait(false)]
     *   commit(bump, due)           or, when anything failed or lost(): rollback
     * Every primitive logs its own failures (never a bound value). ==== */

    /** Begins the batch's transaction. `lazy`: the commit need not wait for the flush (store.c
     * decides which batches may). May replace a stale connection first: nothing has run yet. */
    enum kz_err (*begin)(struct kz_backend *be, bool lazy);
    /** Opens the savepoint of the next op (the previous op's is released first, possibly in the
     * same round trip). */
    enum kz_err (*savepoint)(struct kz_backend *be);
    /** Undoes everything since the last savepoint(); the savepoint stays open. */
    enum kz_err (*rollback_to)(struct kz_backend *be);
    /** True when the transaction is gone (connection lost, or the database rolled the whole
     * transaction back by itself): the batch cannot go on. */
    bool (*lost)(struct kz_backend *be);
    /** `bounded`: lock waits of the op about to run end after a short time with KZ_ERR_BUSY;
     * false restores the default. NULL when the writer never waits for a row lock inside its
     * transaction (SQLite: the write lock is taken at begin). */
    enum kz_err (*lock_wait)(struct kz_backend *be, bool bounded);
    /** Releases the last savepoint; when `bump`, adds 1 to meta webhooks_version; tells other
     * nodes (if it can) that webhooks changed (`bump`) or deliveries became due (`due`), on commit
     * only; reads webhooks_version into *version (inside the transaction, so a bump by another
     * process shows); commits. KZ_OK only when the batch is known committed; *version untouched
     * otherwise. */
    enum kz_err (*commit)(struct kz_backend *be, bool bump, bool due, int64_t *version);
    /** Rolls the batch's transaction back if one is still open. Never fails. */
    void (*rollback)(struct kz_backend *be);

    /* ==== op functions: each runs inside the op's savepoint on an op that store.c has already
     * validated (op_valid) and cleaned (text cut and made valid UTF-8). They return the op's
     * result; on failure store.c rolls the savepoint back, so a function may stop halfway and
     * need not clean up what it put in the op. `*bump` (where present) is set when the op changed
     * the webhooks table in a way store.c cannot tell from the op alone. ==== */

    enum kz_err (*meta_set)(struct kz_backend *be, struct kz_op *op);
    enum kz_err (*app_create)(struct kz_backend *be, struct kz_op *op);
    /** Deletes the app and everything it owns; *bump when it removed webhooks. */
    enum kz_err (*app_delete)(struct kz_backend *be, struct kz_op *op, bool *bump);
    /** Serialised per application (lock its row, or the database's single writer): deletes the
     * app's expired tokens, then all but the `keep_live - 1` live ones that expire last, then
     * inserts the new one. */
    enum kz_err (*token_add)(struct kz_backend *be, struct kz_op *op, int keep_live);
    /** Serialised per application as token_add: KZ_ERR_AUTH when the app is gone, KZ_ERR_QUOTA
     * when u.max_per_app > 0 and it already has that many webhooks; else inserts. */
    enum kz_err (*webhook_insert)(struct kz_backend *be, struct kz_op *op);
    enum kz_err (*webhook_update)(struct kz_backend *be, struct kz_op *op);
    enum kz_err (*webhook_delete)(struct kz_backend *be, struct kz_op *op);
    enum kz_err (*webhook_active)(struct kz_backend *be, struct kz_op *op);
    /** KZ_OP_WEBHOOK_ROTATE: one UPDATE; KZ_ERR_NOTFOUND when no row matched. */
    enum kz_err (*webhook_rotate)(struct kz_backend *be, struct kz_op *op);
    /** Publishes `ops[0..n)` (all PUBLISH, all valid) in order; an event_id seen earlier (stored
     * or earlier in the set) is a duplicate of that first one. Sets every item's results. n is 1
     * unless `publish_sets`. */
    enum kz_err (*publish)(struct kz_backend *be, struct kz_op **ops, size_t n);
    /** limit > 0 here; out/n_out start NULL/0. Never claims rows of a gated webhook (rateLimit
     * or ordered): claim_gated does. */
    enum kz_err (*claim)(struct kz_backend *be, struct kz_op *op);
    /** The claim rules of gated webhooks, run first in a CLAIM (limit > 0): for each gated webhook
     * with due rows not in u.claim.exclude (at most KZ_GATES_MAX, by id), locks its gate row (the
     * claims of other nodes wait), reads a struct kz_gate, asks kz_gate_allow() for at most
     * `limit` less the rows taken so far, takes that many (the head, or the oldest due rows),
     * marks them inflight, charges the gate (kz_gate_charge) and writes it back. Appends the rows
     * to *rows (n used, cap allocated: kz_realloc) and the webhook ids to *ids (n_ids, each a
     * kz_strdup: the general claim passes over them). Sets u.claim.held/held_until. */
    enum kz_err (*claim_gated)(struct kz_backend *be, struct kz_op *op, size_t limit,
                               struct kz_claimed **rows, size_t *n, size_t *cap, char ***ids,
                               size_t *n_ids);
    /** Delivery ids are distinct here; error/response are clean and cut. Updates the rows still
     * inflight and appends an attempt row for each of those with `at` > 0; raises this node's
     * webhook_success row to ok[i].at for each of `ok[0..n_ok)` (store.c's list); then, for
     * each attempt that turned its row DEAD, disables its webhook when no node's success started
     * after the delivery's first attempt did (created_at when none is known), setting disabled[i]
     * (an index into op->u.complete.items) for the attempt that did. *bump when a webhook was
     * turned inactive. */
    enum kz_err (*complete)(struct kz_backend *be, struct kz_op *op, const struct kz_success *ok,
                            size_t n_ok, bool *disabled, bool *bump);
    /** KZ_OP_RETRY: KZ_ERR_NOTFOUND / KZ_ERR_CONFLICT as store.h; an INFLIGHT row is left alone;
     * a PENDING row gets next_attempt_at = now; any other becomes PENDING at now with attempts
     * and first_attempt_at reset (a new series, as a replay). */
    enum kz_err (*retry)(struct kz_backend *be, struct kz_op *op);
    enum kz_err (*replay)(struct kz_backend *be, struct kz_op *op);
    /** u.release.all: every inflight row; own: the rows claimed by the node of node_start; else
     * rows whose lease ended unless their claimer's heartbeat is younger than `dead_ms` (by the
     * database's clock where it has one); -1: no node is live (a backend without heartbeats). */
    enum kz_err (*release)(struct kz_backend *be, struct kz_op *op, int64_t dead_ms);
    /** u.node: registers node `id` with `incarnation` (upsert: started_at and heartbeat_at now),
     * remembers both for claims and heartbeats, then releases the node's own inflight rows (every
     * inflight row when `all`) into `resumed`. */
    enum kz_err (*node_start)(struct kz_backend *be, struct kz_op *op);
    /** u.takeover: releases the inflight rows of up to KZ_TAKEOVER_NODES_MAX nodes other than
     * this one whose heartbeat is older than `dead_ms`, locking those node rows (a heartbeat
     * racing the takeover either waits for it or keeps its node out of it); one entry per node.
     * NULL when `heartbeat` is (one node: store.c never asks). */
    enum kz_err (*takeover)(struct kz_backend *be, struct kz_op *op, int64_t dead_ms);
    /** Writes this node's heartbeat on a connection of its own (not the writer's), from the store's
     * heartbeat thread only; `stopping`: marks the node stopped instead (its claims are free for
     * others at once). `*ours` false when the node's row holds another incarnation (another
     * process took this node id). NULL when the backend has a single node (SQLite). */
    enum kz_err (*heartbeat)(struct kz_backend *be, bool stopping, bool *ours);
    /** 0 < limit <= KZ_PRUNE_LIMIT_MAX here; `pruned` starts at 0. */
    enum kz_err (*prune)(struct kz_backend *be, struct kz_op *op);
    /** Upserts the op's minute rows and webhook rows (set, never add: a row belongs to one node)
     * and merges each webhook's state (latest success/failure wins); with prune_before, drops old
     * rows and the state of deleted webhooks. */
    enum kz_err (*stats_add)(struct kz_backend *be, struct kz_op *op);
    /** True when `publish` takes a run of several ops: store.c then runs the consecutive PUBLISH
     * ops up to a barrier op as one set (and each alone when the set fails). */
    bool publish_sets;

    /** kz_store_on_notify for this backend; NULL when it has no notifications (SQLite). */
    void (*on_notify)(struct kz_backend *be, void (*fn)(void *arg, int what), void *arg);

    enum kz_err (*ping)(struct kz_backend *be);
    enum kz_err (*meta_get)(struct kz_backend *be, const char *key, struct kz_buf *out);
    enum kz_err (*app_get)(struct kz_backend *be, const char *id, struct kz_app *out);
    enum kz_err (*app_list)(struct kz_backend *be, void (*fn)(void *, const struct kz_app *),
                            void *arg);
    enum kz_err (*token_get)(struct kz_backend *be, const char *hash, char app_id[40],
                             int64_t *expires_at);
    enum kz_err (*webhook_get)(struct kz_backend *be, const char *id, struct kz_webhook *out);
    enum kz_err (*webhook_list)(struct kz_backend *be, const char *app_id, int object_type,
                                const char *object_id,
                                void (*fn)(void *, const struct kz_webhook *), void *arg);
    enum kz_err (*delivery_list)(struct kz_backend *be, const char *webhook_id, int state,
                                 int64_t cursor, size_t limit,
                                 void (*fn)(void *, const struct kz_delivery *), void *arg);
    enum kz_err (*delivery_get)(struct kz_backend *be, const char *webhook_id, int64_t delivery_id,
                                struct kz_delivery_detail *out);
    enum kz_err (*delivery_of_event)(struct kz_backend *be, const char *webhook_id,
                                     const char *event_id, int64_t *delivery_id);
    enum kz_err (*backlog)(struct kz_backend *be, int64_t now, int64_t *due, int64_t *scheduled,
                           int64_t *inflight);
    enum kz_err (*next_due)(struct kz_backend *be, int64_t *at);
    enum kz_err (*stats_minutes)(struct kz_backend *be, int64_t since,
                                 void (*fn)(void *, const struct kz_stats_minute *), void *arg);
    enum kz_err (*webhook_health)(struct kz_backend *be, const char *id, int64_t since_hour,
                                  struct kz_webhook_health *out);
    enum kz_err (*failing_list)(struct kz_backend *be, size_t limit,
                                void (*fn)(void *, const struct kz_failing *), void *arg);
};

/** The SQLite backend (store_sqlite.c). */
extern const struct kz_backend_ops kz_store_sqlite_ops;
/** The PostgreSQL backend (store_pg.c). */
extern const struct kz_backend_ops kz_store_pg_ops;

#endif
