/* store.c — the backend-independent half of the store: backend choice by URL, the bounded op
 * queue, the single writer thread (group commit), kz_store_exec, and read delegation.
 *
 * Threads: kz_store_open/close from one owning thread; submit/exec/reads from any thread; the
 * writer thread runs the backend's write_batch and then every op's done(). See store.h. */
#include "store.h"
#include "store_impl.h"
#include "alloc.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

struct kz_store {
    const struct kz_backend_ops *ops;
    struct kz_backend *be;

    pthread_mutex_t mu;  /* guards everything below */
    pthread_cond_t wake; /* writer: queue became non-empty, or stopping */
    struct kz_op *head, *tail;
    size_t queued, queue_max;
    bool stopping;
    uint64_t n_batches, n_ops;

    pthread_t writer;
};

/* ==== backend choice ==== */

/* URL prefix -> backend. A NULL `ops` means the backend is not built; `why` is the error text.
 * To add a backend, declare its ops in store_impl.h and put it here; no #ifdef needed. Anything
 * that matches no prefix is a filesystem path for SQLite. */
static const struct {
    const char *prefix;
    const struct kz_backend_ops *ops;
    const char *why;
} backends[] = {
    {"postgresql://", &kz_store_pg_ops, NULL},
    {"postgres://", &kz_store_pg_ops, NULL},
};

static enum kz_err pick_backend(const char *url, const struct kz_backend_ops **out, char *err,
                                size_t errlen)
{
    size_t i;

    for (i = 0; i < KZ_ARRAY_LEN(backends); i++) {
        if (strncmp(url, backends[i].prefix, strlen(backends[i].prefix)))
            continue;
        if (!backends[i].ops) {
            snprintf(err, errlen, "%s", backends[i].why);
            return KZ_ERR_INVALID;
        }
        *out = backends[i].ops;
        return KZ_OK;
    }
    *out = &kz_store_sqlite_ops;
    return KZ_OK;
}

/* ==== writer thread ==== */

/* Takes up to KZ_STORE_BATCH_MAX ops off the queue into `batch`, waiting while the queue is empty.
 * There is no timer: while one batch commits, new ops pile up, so the batch size follows the
 * load. Returns 0 only when stopping and the queue is drained. */
static size_t take_batch(struct kz_store *st, struct kz_op **batch)
{
    size_t n = 0;

    pthread_mutex_lock(&st->mu);
    while (!st->head && !st->stopping)
        pthread_cond_wait(&st->wake, &st->mu);
    while (st->head && n < KZ_STORE_BATCH_MAX) {
        batch[n] = st->head;
        st->head = st->head->next;
        batch[n]->next = NULL;
        n++;
    }
    if (!st->head)
        st->tail = NULL;
    st->queued -= n;
    pthread_mutex_unlock(&st->mu);
    return n;
}

static void *writer_main(void *arg)
{
    struct kz_store *st = arg;
    struct kz_op **batch = kz_calloc(KZ_STORE_BATCH_MAX, sizeof(*batch));
    size_t n;
    size_t i;

    while ((n = take_batch(st, batch)) > 0) {
        enum kz_err result = st->ops->write_batch(st->be, batch, n);

        if (result)
            kz_log("error", "store: batch failed", "\"ops\":%zu,\"err\":\"%s\"", n,
                   kz_err_str(result));
        pthread_mutex_lock(&st->mu);
        st->n_batches++;
        st->n_ops += n;
        pthread_mutex_unlock(&st->mu);
        /* done() may free or resubmit its op, so nothing touches batch[i] afterwards. */
        for (i = 0; i < n; i++) {
            if (batch[i]->done)
                batch[i]->done(batch[i], batch[i]->arg);
        }
    }
    kz_free(batch);
    return NULL;
}

/* ==== open, close, submit ==== */

enum kz_err kz_store_open(struct kz_store **out, const char *url, size_t queue_max, char *err,
                          size_t errlen)
{
    enum kz_err result;
    struct kz_store *st = NULL;
    const struct kz_backend_ops *ops = NULL;
    struct kz_backend *be = NULL;
    int rc;

    if (errlen)
        err[0] = '\0';
    if (!url || !*url || !queue_max) {
        snprintf(err, errlen, "store: empty url or zero queue size");
        result = KZ_ERR_INVALID;
        goto out;
    }
    result = pick_backend(url, &ops, err, errlen);
    if (result)
        goto out;
    result = ops->open(&be, url, err, errlen);
    if (result)
        goto out;

    st = kz_calloc(1, sizeof(*st));
    st->ops = ops;
    st->be = be;
    be = NULL;
    st->queue_max = queue_max;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->wake, NULL);
    rc = pthread_create(&st->writer, NULL, writer_main, st);
    if (rc) {
        snprintf(err, errlen, "store: cannot start writer thread: %s", strerror(rc));
        result = KZ_ERR_IO;
        goto out;
    }
    *out = st;
    st = NULL;
out:
    if (st) {
        pthread_cond_destroy(&st->wake);
        pthread_mutex_destroy(&st->mu);
        st->ops->close(st->be);
        kz_free(st);
    }
    if (be)
        ops->close(be);
    return result;
}

void kz_store_close(struct kz_store *st)
{
    if (!st)
        return;
    pthread_mutex_lock(&st->mu);
    st->stopping = true;
    pthread_cond_signal(&st->wake);
    pthread_mutex_unlock(&st->mu);
    pthread_join(st->writer, NULL); /* the writer drains the queue before it returns */
    st->ops->close(st->be);
    pthread_cond_destroy(&st->wake);
    pthread_mutex_destroy(&st->mu);
    kz_free(st);
}

enum kz_err kz_store_submit(struct kz_store *st, struct kz_op *op)
{
    enum kz_err result = KZ_OK;

    op->next = NULL;
    pthread_mutex_lock(&st->mu);
    if (st->stopping || st->queued >= st->queue_max) {
        result = KZ_ERR_BUSY;
        goto out;
    }
    if (st->tail)
        st->tail->next = op;
    else
        st->head = op;
    st->tail = op;
    st->queued++;
    pthread_cond_signal(&st->wake);
out:
    pthread_mutex_unlock(&st->mu);
    return result;
}

/* kz_store_exec's waiter: lives on the caller's stack until done() has signalled it. */
struct exec_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

static void exec_done(struct kz_op *op, void *arg)
{
    struct exec_wait *w = arg;

    (void)op;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

enum kz_err kz_store_exec(struct kz_store *st, struct kz_op *op)
{
    enum kz_err result;
    struct exec_wait w = {.done = false};

    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    op->done = exec_done;
    op->arg = &w;
    result = kz_store_submit(st, op);
    if (result)
        goto out;
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    result = op->result;
out:
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return result;
}

void kz_claim_cleanup(struct kz_op *op)
{
    size_t i;

    if (op->type != KZ_OP_CLAIM)
        return;
    for (i = 0; i < op->u.claim.n_out; i++) {
        kz_webhook_cleanup(&op->u.claim.out[i].wh);
        kz_event_cleanup(&op->u.claim.out[i].ev);
    }
    kz_free(op->u.claim.out);
    op->u.claim.out = NULL;
    op->u.claim.n_out = 0;
}

void kz_store_on_notify(struct kz_store *st, void (*fn)(void *arg, int what), void *arg)
{
    if (st->ops->on_notify)
        st->ops->on_notify(st->be, fn, arg);
}

void kz_store_stats(struct kz_store *st, uint64_t *batches, uint64_t *ops)
{
    pthread_mutex_lock(&st->mu);
    *batches = st->n_batches;
    *ops = st->n_ops;
    pthread_mutex_unlock(&st->mu);
}

/* ==== reads: straight to the backend ==== */

enum kz_err kz_store_ping(struct kz_store *st)
{
    return st->ops->ping(st->be);
}

enum kz_err kz_store_meta_get(struct kz_store *st, const char *key, struct kz_buf *out)
{
    return st->ops->meta_get(st->be, key, out);
}

enum kz_err kz_store_app_get(struct kz_store *st, const char *id, struct kz_app *out)
{
    return st->ops->app_get(st->be, id, out);
}

enum kz_err kz_store_app_list(struct kz_store *st, void (*fn)(void *, const struct kz_app *),
                              void *arg)
{
    return st->ops->app_list(st->be, fn, arg);
}

enum kz_err kz_store_token_get(struct kz_store *st, const char *hash, char app_id[40],
                               int64_t *expires_at)
{
    return st->ops->token_get(st->be, hash, app_id, expires_at);
}

enum kz_err kz_store_webhook_get(struct kz_store *st, const char *id, struct kz_webhook *out)
{
    return st->ops->webhook_get(st->be, id, out);
}

enum kz_err kz_store_webhook_list(struct kz_store *st, const char *app_id, int object_type,
                                  const char *object_id,
                                  void (*fn)(void *, const struct kz_webhook *), void *arg)
{
    return st->ops->webhook_list(st->be, app_id, object_type, object_id, fn, arg);
}

enum kz_err kz_store_delivery_list(struct kz_store *st, const char *webhook_id, int state,
                                   int64_t cursor, size_t limit,
                                   void (*fn)(void *, const struct kz_delivery *), void *arg)
{
    return st->ops->delivery_list(st->be, webhook_id, state, cursor, limit, fn, arg);
}

enum kz_err kz_store_backlog(struct kz_store *st, int64_t now, int64_t *due, int64_t *scheduled,
                             int64_t *inflight)
{
    return st->ops->backlog(st->be, now, due, scheduled, inflight);
}

enum kz_err kz_store_next_due(struct kz_store *st, int64_t *at)
{
    return st->ops->next_due(st->be, at);
}
