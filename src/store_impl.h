/* store_impl.h — what a storage backend implements so that store.c can drive it. Internal to
 * the store modules (store.c, store_sqlite.c, store_pg.c) and their unit tests; nothing
 * else includes it.
 *
 * store.c owns the op queue and the single writer thread; a backend owns connections and SQL.
 * The contract per function is below; see docs/internals/STORE.md for the op semantics.
 *
 * Threads: open/close run on the thread calling kz_store_open/close while no other thread uses
 * the backend. write_batch runs only on the writer thread, one call at a time. The reads may run
 * on any thread concurrently with each other and with write_batch.
 */
#ifndef KZ_STORE_IMPL_H
#define KZ_STORE_IMPL_H

#include "store.h"

/** Most ops the writer hands to one write_batch call (one transaction, one fsync). */
#define KZ_STORE_BATCH_MAX 1000

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

    /** Runs `ops[0..n)` in one transaction, each op in its own savepoint: an op that fails is
     * rolled back alone and gets its error in op->result; the others go on. Then commits. When
     * the transaction cannot be begun or committed (or is lost mid-batch), nothing is applied and
     * every op gets KZ_ERR_BUSY (database locked by someone else) or KZ_ERR_DB, claimed rows are
     * freed (n_out = 0). Always sets every op's webhooks_version (the committed value, or the last
     * known one on failure). Never calls done(). Returns KZ_OK when the batch committed. */
    enum kz_err (*write_batch)(struct kz_backend *be, struct kz_op **ops, size_t n);
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
    enum kz_err (*backlog)(struct kz_backend *be, int64_t now, int64_t *due, int64_t *scheduled,
                           int64_t *inflight);
    enum kz_err (*next_due)(struct kz_backend *be, int64_t *at);
};

/** The SQLite backend (store_sqlite.c). */
extern const struct kz_backend_ops kz_store_sqlite_ops;
/** The PostgreSQL backend (store_pg.c). */
extern const struct kz_backend_ops kz_store_pg_ops;

#endif
