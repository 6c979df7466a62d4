/* store.c — the backend-independent half of the store: backend choice by URL, the bounded op
 * queue, the single writer thread (group commit), kz_store_exec, read delegation, and the op
 * policy every backend shares: validation, the lazy-flush decision, savepoint per op, publish
 * sets, retries, failed op/batch cleanup, text cleaning and the limits (store_impl.h).
 *
 * Threads: kz_store_open/close from one owning thread; submit/exec/reads from any thread; the
 * writer thread runs the backend's write_batch and then every op's done(). See store.h. */
#include "store.h"
#include "store_impl.h"
#include "alloc.h"
#include "id.h"
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

    bool locks_ready; /* mu and wake were initialised (open's cleanup) */

    /* writer thread only */
    int64_t wh_version;     /* last committed meta webhooks_version */
    bool *done;             /* per op of the batch: already run (publish sets) */
    struct kz_op **set;     /* the ops of one publish set */
    struct kz_buf text;     /* cleaned error/response texts of one COMPLETE */
    struct kz_attempt *att; /* the COMPLETE's attempts as bound, att_cap allocated */
    size_t *off;            /* 2 per attempt: offsets of error and response in `text` */
    size_t att_cap;
    ptrdiff_t *seen; /* delivery id set (index into the op's attempts, -1 free), seen_cap slots */
    size_t seen_cap;
    const struct kz_attempt *saved_items; /* the COMPLETE's own attempts while `att` stands in */
    size_t saved_n;
    size_t *orig;          /* per attempt in `att`: its index in the op's own attempts */
    bool *dis;             /* per attempt in `att`: its dead delivery disabled the webhook */
    struct kz_success *ok; /* webhooks with a success in the COMPLETE (disable rule) */
    size_t n_ok;

    /* webhooks generation (kz_store_webhooks_gen) */
    atomic_llong wh_gen;
    atomic_llong wh_seen; /* last webhooks_version a read returned; -1 none */
    /* notification callback of kz_store_on_notify, behind the store's trampoline */
    pthread_mutex_t nt_mu; /* guards nt_fn/nt_arg; held while nt_fn runs */
    void (*nt_fn)(void *arg, int what);
    void *nt_arg;

    /* node identity and heartbeat (kz_store_node_start) */
    bool node_started; /* owning thread only */
    bool wr_node;      /* writer thread only: a NODE_START committed (claims name this node) */
    char node_id[KZ_NODE_ID_MAX + 1];
    pthread_t hb;          /* heartbeat thread, while hb_running */
    bool hb_running;       /* owning thread only */
    pthread_mutex_t hb_mu; /* guards hb_stop, with hb_cv */
    pthread_cond_t hb_cv;
    bool hb_stop;
    atomic_llong hb_ok;  /* kz_mono_ms() when the last heartbeat that was written was sent */
    atomic_bool hb_lost; /* another process took this node id */
};

static void heartbeat_stop(struct kz_store *st);

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

/* ==== op policy: the same on every backend ==== */

#define WIDE_TRIES 30 /* runs of a wide op that keeps meeting a lock (lock_wait bounded) */
#define LOCK_TRIES                                                                                 \
    3 /* runs of a COMPLETE, WEBHOOK_INSERT or TOKEN_ADD that a deadlock was                       \
         resolved against (rows, or application rows, locked in another order) */

/* NULL or valid UTF-8 (a C string holds no NUL): what every backend can store as text. The API
 * only hands over parsed JSON, so this refuses nothing it sends; it keeps a caller that does
 * from being stored raw on SQLite and refused on PostgreSQL. */
static bool text_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0, i = 0, k;

    while (i < n) {
        k = kz_utf8_seq((const unsigned char *)s + i, n - i);
        if (!k)
            return false;
        i += k;
    }
    return true;
}

/* NULL, or 1..KZ_TRACEPARENT_MAX bytes of printable ASCII: it is sent as an HTTP header with every
 * attempt, so no byte may break the header block (the API passes on only valid W3C values). */
static bool traceparent_ok(const char *s)
{
    size_t i;

    if (!s)
        return true;
    for (i = 0; s[i]; i++) {
        if (i == KZ_TRACEPARENT_MAX || (unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return false;
    }
    return i > 0;
}

static bool event_ok(const struct kz_event *e)
{
    return e->event_id && text_ok(e->event_id) && text_ok(e->group_id) && text_ok(e->action_id) &&
           text_ok(e->action_package_id) && text_ok(e->from_user) && text_ok(e->from_user_id) &&
           text_ok(e->from_user_name) && text_ok(e->from_user_pic) && text_ok(e->data_json) &&
           text_ok(e->source_group_id) && traceparent_ok(e->traceparent);
}

/* A node id: 1..KZ_NODE_ID_MAX printable ASCII bytes (it is logged and compared as text). */
static bool node_id_ok(const char *id)
{
    size_t i;

    if (!id || !*id)
        return false;
    for (i = 0; id[i]; i++) {
        if (i >= KZ_NODE_ID_MAX || id[i] < 0x21 || id[i] > 0x7e)
            return false;
    }
    return true;
}

/* A STATS_ADD: whole minutes and hours, no negative count, error text as a COMPLETE stores it,
 * and the failing rule: a webhook fails since its first failure after its last success, so
 * fail_since is set exactly when the last failure is newer than the last success (and is not
 * after it). The backend merges rows of several nodes by the same rule. */
static bool stats_valid(const struct kz_op *op)
{
    size_t i;
    int k;

    if (!op->u.stats.node_id || !*op->u.stats.node_id || strlen(op->u.stats.node_id) > 64 ||
        (op->u.stats.n_minutes && !op->u.stats.minutes) ||
        (op->u.stats.n_webhooks && !op->u.stats.webhooks) || op->u.stats.prune_before < 0)
        return false;
    for (i = 0; i < op->u.stats.n_minutes; i++) {
        const struct kz_stats_minute *m = &op->u.stats.minutes[i];

        if (m->minute <= 0 || m->minute % 60000 || m->published < 0 || m->succeeded < 0 ||
            m->failed < 0 || m->dead < 0)
            return false;
        for (k = 0; k < KZ_STATS_HIST; k++) {
            if (m->hist[k] < 0)
                return false;
        }
    }
    for (i = 0; i < op->u.stats.n_webhooks; i++) {
        const struct kz_stats_webhook *w = &op->u.stats.webhooks[i];
        bool failing = w->last_fail_at > w->last_ok_at;

        if (!memchr(w->webhook_id, '\0', sizeof(w->webhook_id)) || !w->webhook_id[0] ||
            w->hour <= 0 || w->hour % 3600000 || w->succeeded < 0 || w->failed < 0 || w->dead < 0 ||
            w->last_ok_at < 0 || w->last_fail_at < 0 ||
            (failing ? (w->fail_since <= w->last_ok_at || w->fail_since > w->last_fail_at)
                     : w->fail_since != 0) ||
            (w->last_error && (!text_ok(w->last_error) ||
                               strnlen(w->last_error, KZ_ERROR_KEEP + 1) > KZ_ERROR_KEEP)))
            return false;
    }
    return true;
}

/* The checks every op passes before any SQL. An op failing them gets KZ_ERR_INVALID, alone. */
/* NULL, or text of at most `max` bytes: the delivery-control columns (headers, filter) are
 * bounded on both backends by the API's limits, never by what a backend happens to accept. */
static bool text_within(const char *s, size_t max)
{
    return !s || strnlen(s, max + 1) <= max;
}

static bool op_valid(const struct kz_store *st, const struct kz_op *op)
{
    size_t i;
    size_t k;

    switch (op->type) {
    case KZ_OP_META_SET:
        return op->u.meta.key && op->u.meta.value;
    case KZ_OP_WEBHOOK_INSERT:
    case KZ_OP_WEBHOOK_UPDATE:
        return memchr(op->u.webhook.id, '\0', sizeof(op->u.webhook.id)) &&
               memchr(op->u.webhook.app_id, '\0', sizeof(op->u.webhook.app_id)) &&
               (op->type == KZ_OP_WEBHOOK_UPDATE || op->u.max_per_app >= 0) &&
               op->u.webhook.rate_limit >= 0 && op->u.webhook.rate_limit <= KZ_RATE_LIMIT_MAX &&
               text_within(op->u.webhook.headers_json, KZ_HEADERS_JSON_MAX) &&
               text_within(op->u.webhook.filter_json, KZ_FILTER_MAX);
    case KZ_OP_WEBHOOK_ROTATE:
        return op->u.rotate.id && op->u.rotate.secret && *op->u.rotate.secret &&
               op->u.rotate.expires >= 0;
    case KZ_OP_APP_CREATE:
    case KZ_OP_PRUNE:
    case KZ_OP_TAKEOVER:
        return true;
    case KZ_OP_RELEASE:
        return !(op->u.release.all && op->u.release.own);
    case KZ_OP_NODE_START:
        return node_id_ok(op->u.node.id) && op->u.node.incarnation;
    case KZ_OP_APP_DELETE:
        return op->u.id;
    case KZ_OP_TOKEN_ADD:
        return op->u.token.hash && op->u.token.app_id;
    case KZ_OP_WEBHOOK_DELETE:
        return op->u.del.id;
    case KZ_OP_WEBHOOK_ACTIVE:
        return op->u.active.id;
    case KZ_OP_REPLAY:
        return op->u.replay.webhook_id;
    case KZ_OP_RETRY:
        return op->u.retry.webhook_id && op->u.retry.delivery_id > 0;
    case KZ_OP_PUBLISH:
        if (op->u.publish.n && !op->u.publish.items)
            return false;
        for (i = 0; i < op->u.publish.n; i++) {
            const struct kz_publish_item *it = &op->u.publish.items[i];

            if (!event_ok(&it->ev) || (it->n_targets && (!it->webhook_ids || !it->target_active)) ||
                it->n_targets > INT32_MAX)
                return false;
            for (k = 0; k < it->n_targets; k++) {
                if (!it->webhook_ids[k])
                    return false;
                /* a lease needs this node's id (claims record it) and a live target */
                if (it->target_leased && it->target_leased[k] &&
                    (!it->target_active[k] || !st->wr_node || op->u.publish.lease_until <= 0))
                    return false;
            }
        }
        return true;
    case KZ_OP_CLAIM:
        if (!op->u.claim.limit)
            return true; /* claims nothing, whatever the exclusions */
        if (op->u.claim.n_exclude && !op->u.claim.exclude)
            return false;
        for (i = 0; i < op->u.claim.n_exclude; i++) {
            if (!op->u.claim.exclude[i])
                return false;
        }
        return true;
    case KZ_OP_STATS_ADD:
        return stats_valid(op);
    case KZ_OP_COMPLETE:
        if (op->u.complete.n && !op->u.complete.items)
            return false;
        for (i = 0; i < op->u.complete.n; i++) {
            const struct kz_attempt *a = &op->u.complete.items[i];

            if (a->state == KZ_D_INFLIGHT || (unsigned)a->state > KZ_D_SKIPPED ||
                (a->response_len && !a->response) || a->at < 0 || a->duration_ms < 0 ||
                !memchr(a->webhook_id, '\0', sizeof(a->webhook_id)))
                return false;
        }
        return true;
    }
    return false;
}

/* What a failed op leaves in its op: no claimed rows, no publish results. */
static void op_failed(struct kz_op *op, enum kz_err result)
{
    size_t k;

    op->result = result;
    if (op->type == KZ_OP_CLAIM) {
        kz_claim_cleanup(op);
        op->u.claim.held = 0;
        op->u.claim.held_until = 0;
    }
    if (op->type == KZ_OP_RETRY)
        op->u.retry.requeued = false;
    if (op->type == KZ_OP_TAKEOVER) {
        op->u.takeover.n_nodes = 0;
        op->u.takeover.released = 0;
    }
    if (op->type == KZ_OP_NODE_START)
        op->u.node.resumed = 0;
    if (op->type == KZ_OP_PUBLISH && op->u.publish.items) {
        for (k = 0; k < op->u.publish.n; k++) {
            struct kz_publish_item *it = &op->u.publish.items[k];

            it->seq = 0;
            it->deliveries = 0;
            it->duplicate = false;
            if (it->delivery_ids)
                memset(it->delivery_ids, 0, it->n_targets * sizeof(*it->delivery_ids));
        }
    }
}

/* What a failed batch leaves in every op: nothing was applied. The error is KZ_ERR_BUSY (the
 * database was locked by someone else) or KZ_ERR_DB. */
static void batch_failed(struct kz_store *st, struct kz_op **ops, size_t n, enum kz_err result)
{
    size_t i;

    if (result != KZ_ERR_BUSY)
        result = KZ_ERR_DB;
    for (i = 0; i < n; i++) {
        op_failed(ops[i], result);
        ops[i]->webhooks_version = st->wh_version;
    }
}

/* A batch of claims, completions, releases and prunes only commits without waiting for the flush
 * (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit off): losing it in a crash only means
 * an attempt is made again, which at-least-once allows, and the next durable commit flushes it
 * anyway since the log is written in order. Everything a client was told is committed (202s,
 * webhooks, applications, tokens, replays) waits for its own flush. */
static bool batch_lazy(struct kz_op **ops, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        enum kz_op_type t = ops[i]->type;

        if (t != KZ_OP_CLAIM && t != KZ_OP_COMPLETE && t != KZ_OP_RELEASE && t != KZ_OP_PRUNE &&
            t != KZ_OP_TAKEOVER && t != KZ_OP_STATS_ADD)
            return false;
    }
    return true;
}

/* Ops that rewrite many delivery rows of one webhook (or application) while another node's batch
 * may hold some of them and wait for others: they run with bounded lock waits and are retried. */
static bool op_wide(enum kz_op_type t)
{
    return t == KZ_OP_WEBHOOK_UPDATE || t == KZ_OP_WEBHOOK_DELETE || t == KZ_OP_REPLAY ||
           t == KZ_OP_WEBHOOK_ACTIVE || t == KZ_OP_APP_DELETE || t == KZ_OP_WEBHOOK_ROTATE;
}

/* An op that can see, or undo, rows a PUBLISH inserts: publishes are not moved past it. */
static bool publish_barrier(enum kz_op_type t)
{
    return t == KZ_OP_WEBHOOK_DELETE || t == KZ_OP_APP_DELETE || t == KZ_OP_REPLAY ||
           t == KZ_OP_PRUNE;
}

/* Keeps at most `max` bytes of `s`, cut back to a UTF-8 character boundary. */
static size_t keep_len(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    len = max;
    while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
        len--;
    return len;
}

/* Appends `s[0..len)` to st->text as stored text: cleaned with kz_buf_text, then cut to `max`
 * bytes at a character boundary, then NUL-terminated. Returns its offset in st->text. Only the
 * first max + 4 bytes are read: a UTF-8 sequence is at most 4 bytes, so whatever follows cannot
 * change the first `max` bytes of the result. */
static enum kz_err clean_text(struct kz_store *st, const char *s, size_t len, size_t max,
                              size_t *off)
{
    enum kz_err result;
    size_t n;

    *off = st->text.len;
    result = kz_buf_text(&st->text, s, len < max + 4 ? len : max + 4);
    if (result)
        return result;
    n = keep_len(st->text.data + *off, st->text.len - *off, max);
    st->text.len = *off + n;
    return kz_buf_append(&st->text, "", 1);
}

static int cmp_success(const void *a, const void *b)
{
    const struct kz_success *x = a, *y = b;

    return strcmp(x->webhook_id, y->webhook_id);
}

/* The disable rule (README, "Attempt history, retry and test events"): a dead delivery disables
 * its webhook only when no attempt to that webhook has succeeded since the delivery's first
 * attempt. The store keeps, per webhook and node, when its last successful attempt started (the
 * webhook_success table: one row per node, so that nodes never contend for it and a PUT or DELETE
 * of the webhook never waits for a COMPLETE's success nor the other way round) and, per delivery,
 * when its first attempt started; this list is what one COMPLETE raises this node's row to: every
 * webhook with a successful attempt in it (whether or not that row was still inflight: the
 * endpoint answered), with the latest start, sorted by id. A success counts against a dead
 * delivery only when it started strictly after that delivery's first attempt: one that ended in
 * the same millisecond the next attempt of an ordered webhook began is not "since" (times are
 * whole milliseconds). */
static void success_list(struct kz_store *st, size_t m)
{
    size_t i;
    size_t k = 0;

    for (i = 0; i < m; i++) {
        const struct kz_attempt *a = &st->att[i];

        if (a->state != KZ_D_SUCCEEDED || !a->at)
            continue;
        st->ok[k].webhook_id = a->webhook_id;
        st->ok[k].at = a->at; /* its start: "since" the dead delivery's first attempt began */
        k++;
    }
    qsort(st->ok, k, sizeof(*st->ok), cmp_success);
    st->n_ok = 0;
    for (i = 0; i < k; i++) {
        struct kz_success *last = st->n_ok ? &st->ok[st->n_ok - 1] : NULL;

        if (last && !strcmp(last->webhook_id, st->ok[i].webhook_id)) {
            if (st->ok[i].at > last->at)
                last->at = st->ok[i].at;
            continue;
        }
        st->ok[st->n_ok++] = st->ok[i];
    }
}

/* The store's copy of a COMPLETE's attempts, as the backend binds them: the first attempt of each
 * delivery id only (a repeat would find its row no longer inflight anyway), with error and
 * response cleaned and cut. Sets op->u.complete to the copy; complete_restore puts it back. */
static enum kz_err complete_prepare(struct kz_store *st, struct kz_op *op)
{
    const struct kz_attempt *in = op->u.complete.items;
    size_t n = op->u.complete.n;
    size_t slots = 16;
    size_t m = 0;
    enum kz_err result = KZ_OK;
    size_t i;

    while (slots < 2 * n)
        slots *= 2;
    if (n > st->att_cap) {
        kz_free(st->att);
        kz_free(st->off);
        kz_free(st->orig);
        kz_free(st->dis);
        kz_free(st->ok);
        st->att = kz_malloc(n * sizeof(*st->att));
        st->off = kz_malloc(2 * n * sizeof(*st->off));
        st->orig = kz_malloc(n * sizeof(*st->orig));
        st->dis = kz_malloc(n * sizeof(*st->dis));
        st->ok = kz_malloc(n * sizeof(*st->ok));
        st->att_cap = n;
    }
    if (slots > st->seen_cap) {
        kz_free(st->seen);
        st->seen = kz_malloc(slots * sizeof(*st->seen));
        st->seen_cap = slots;
    }
    for (i = 0; i < slots; i++)
        st->seen[i] = -1;
    kz_buf_reset(&st->text);
    for (i = 0; i < n && !result; i++) {
        const struct kz_attempt *a = &in[i];
        size_t s =
            (size_t)kz_hash(KZ_HASH_INIT, &a->delivery_id, sizeof(a->delivery_id)) & (slots - 1);
        bool dup = false;

        while (st->seen[s] >= 0) {
            if (in[st->seen[s]].delivery_id == a->delivery_id) {
                dup = true;
                break;
            }
            s = (s + 1) & (slots - 1);
        }
        if (dup)
            continue;
        st->seen[s] = (ptrdiff_t)i;
        st->orig[m] = i;
        st->att[m] = *a;
        st->off[2 * m] = st->off[2 * m + 1] = SIZE_MAX;
        if (a->error)
            result = clean_text(st, a->error, strnlen(a->error, KZ_ERROR_KEEP + 4), KZ_ERROR_KEEP,
                                &st->off[2 * m]);
        if (!result && a->response)
            result =
                clean_text(st, a->response, a->response_len, KZ_RESPONSE_KEEP, &st->off[2 * m + 1]);
        m++;
    }
    if (result)
        return result;
    /* the text buffer has stopped moving: point the copies into it */
    for (i = 0; i < m; i++) {
        if (st->off[2 * i] != SIZE_MAX)
            st->att[i].error = st->text.data + st->off[2 * i];
        if (st->off[2 * i + 1] != SIZE_MAX) {
            st->att[i].response = st->text.data + st->off[2 * i + 1];
            st->att[i].response_len = strlen(st->att[i].response);
        }
    }
    success_list(st, m);
    st->saved_items = op->u.complete.items;
    st->saved_n = n;
    op->u.complete.items = st->att;
    op->u.complete.n = m;
    return KZ_OK;
}

/* Puts the op's own attempts back; when it `applied`, copies out which disabled their webhook
 * (the batch may still fail: then the caller sees a failed op and ignores the flags). */
static void complete_restore(struct kz_store *st, struct kz_op *op, bool applied)
{
    size_t i;

    if (op->u.complete.disabled) {
        memset(op->u.complete.disabled, 0, st->saved_n * sizeof(*op->u.complete.disabled));
        for (i = 0; applied && i < op->u.complete.n; i++)
            op->u.complete.disabled[st->orig[i]] = st->dis[i];
    }
    op->u.complete.items = st->saved_items;
    op->u.complete.n = st->saved_n;
}

/* ==== claim gates: rateLimit and ordered (README.md "Delivery controls") ==== */

/* The bucket's content now: capacity and refill rate_limit attempts per second, in thousandths
 * (integers, so both backends and every node compute the same). Never used: full. */
static int64_t gate_tokens(const struct kz_gate *g)
{
    int64_t cap = (int64_t)g->rate_limit * 1000, dt = g->now - g->refilled_at, t;

    if (!g->refilled_at || dt >= 1000)
        return cap; /* a second refills rate_limit * 1000 thousandths: the whole bucket */
    t = g->tokens + (dt > 0 ? dt * g->rate_limit : 0);
    return t < cap ? t : cap;
}

size_t kz_gate_allow(struct kz_gate *g, size_t room)
{
    size_t n = room;

    g->head_only = false;
    if (!g->deliverable) {
        /* inactive or expired: its rows are skipped, never attempted, so neither rate nor order
         * holds them back */
        g->allow = room;
        return room;
    }
    if (g->rate_limit > 0) {
        size_t whole = (size_t)(gate_tokens(g) / 1000);

        if (whole < n)
            n = whole;
    }
    if (g->ordered) {
        /* The oldest delivery not yet final goes alone, when it is due and nothing else of this
         * webhook is in flight (a retried or replayed older delivery is that oldest one). */
        g->head_only = true;
        if (!g->head_found || !g->head_pending || g->last_inflight || g->head_due > g->due_now)
            n = 0;
        else if (n > 1)
            n = 1;
    }
    g->allow = n;
    g->room = room;
    return n;
}

void kz_gate_charge(struct kz_gate *g, size_t taken, size_t *held, int64_t *held_until)
{
    int64_t at = 0;

    if (!g->deliverable)
        return;
    if (g->rate_limit > 0) {
        int64_t t = gate_tokens(g) - (int64_t)taken * 1000;

        g->tokens = t > 0 ? t : 0;
        if (g->now > g->refilled_at)
            g->refilled_at = g->now;
    }
    if (taken < g->allow || g->allow >= g->room)
        return; /* it had no more due rows, or the claim's room was the limit */
    (*held)++;
    if (g->rate_limit > 0 && g->tokens < 1000)
        at = g->refilled_at + (1000 - g->tokens + g->rate_limit - 1) / g->rate_limit;
    if (g->ordered && g->head_found && g->head_pending && !g->last_inflight &&
        g->head_due > g->due_now && g->head_due > at)
        at = g->head_due;
    if (at > 0 && (!*held_until || at < *held_until))
        *held_until = at;
}

/* CLAIM: the gated webhooks first (their rules: claim_gated), then every other due row (the
 * backend's claim, which never takes a gated webhook's rows: they are excluded as well, so that
 * SQLite's plan never walks them). Rows come out gated first. */
static enum kz_err claim_run(struct kz_store *st, struct kz_op *op)
{
    const struct kz_backend_ops *b = st->ops;
    const char *const *excl = op->u.claim.exclude;
    size_t n_excl = op->u.claim.n_exclude, limit = op->u.claim.limit;
    struct kz_claimed *rows = NULL;
    size_t n = 0, cap = 0, n_ids = 0, i;
    char **ids = NULL;
    const char **all = NULL;
    enum kz_err result;

    op->u.claim.held = 0;
    op->u.claim.held_until = 0;
    result = b->claim_gated(st->be, op, limit, &rows, &n, &cap, &ids, &n_ids);
    if (!result && n < limit) {
        if (n_ids) {
            all = kz_malloc((n_excl + n_ids) * sizeof(*all));
            if (n_excl)
                memcpy(all, excl, n_excl * sizeof(*all));
            for (i = 0; i < n_ids; i++)
                all[n_excl + i] = ids[i];
            op->u.claim.exclude = all;
            op->u.claim.n_exclude = n_excl + n_ids;
        }
        op->u.claim.limit = limit - n;
        result = b->claim(st->be, op);
        op->u.claim.exclude = excl;
        op->u.claim.n_exclude = n_excl;
        op->u.claim.limit = limit;
        kz_free(all);
    }
    /* Hand every row to the op, so that kz_claim_cleanup frees them on any failure. */
    if (n) {
        size_t m = op->u.claim.n_out;

        if (m) {
            rows = kz_realloc(rows, (n + m) * sizeof(*rows));
            memcpy(rows + n, op->u.claim.out, m * sizeof(*rows));
            kz_free(op->u.claim.out);
        }
        op->u.claim.out = rows;
        op->u.claim.n_out = n + m;
    } else {
        kz_free(rows);
    }
    for (i = 0; i < n_ids; i++)
        kz_free(ids[i]);
    kz_free(ids);
    return result;
}

/* Runs the backend's function for `op` (valid, prepared). `*bump` when it changed webhooks. */
static enum kz_err call_op(struct kz_store *st, struct kz_op *op, bool *bump)
{
    const struct kz_backend_ops *b = st->ops;
    struct kz_backend *be = st->be;

    switch (op->type) {
    case KZ_OP_META_SET:
        return b->meta_set(be, op);
    case KZ_OP_APP_CREATE:
        return b->app_create(be, op);
    case KZ_OP_APP_DELETE:
        return b->app_delete(be, op, bump);
    case KZ_OP_TOKEN_ADD:
        return b->token_add(be, op, KZ_TOKENS_PER_APP);
    case KZ_OP_WEBHOOK_INSERT:
        return b->webhook_insert(be, op);
    case KZ_OP_WEBHOOK_UPDATE:
        return b->webhook_update(be, op);
    case KZ_OP_WEBHOOK_DELETE:
        return b->webhook_delete(be, op);
    case KZ_OP_WEBHOOK_ACTIVE:
        return b->webhook_active(be, op);
    case KZ_OP_WEBHOOK_ROTATE:
        return b->webhook_rotate(be, op);
    case KZ_OP_PUBLISH:
        return b->publish(be, &op, 1);
    case KZ_OP_CLAIM:
        return claim_run(st, op);
    case KZ_OP_COMPLETE:
        memset(st->dis, 0, op->u.complete.n * sizeof(*st->dis));
        return b->complete(be, op, st->ok, st->n_ok, st->dis, bump);
    case KZ_OP_RETRY:
        return b->retry(be, op);
    case KZ_OP_REPLAY:
        return b->replay(be, op);
    case KZ_OP_RELEASE:
        /* without heartbeats no node counts as live: leases decide, as before node ids */
        return b->release(be, op, b->heartbeat ? KZ_NODE_DEAD_MS : -1);
    case KZ_OP_PRUNE:
        return b->prune(be, op);
    case KZ_OP_TAKEOVER:
        /* Without heartbeats (SQLite) there is one node: nobody else's claims to take. */
        if (!b->heartbeat)
            return KZ_OK;
        return b->takeover(be, op, KZ_NODE_DEAD_MS);
    case KZ_OP_NODE_START:
        return b->node_start(be, op);
    case KZ_OP_STATS_ADD:
        return b->stats_add(be, op);
    }
    return KZ_ERR_INVALID;
}

/* What a successful op tells the batch: webhooks changed (bump webhooks_version once), or
 * deliveries became due (other nodes' dispatchers may look). */
static void op_effects(const struct kz_op *op, bool be_bump, bool *bump, bool *due)
{
    size_t i;
    size_t k;

    switch (op->type) {
    case KZ_OP_WEBHOOK_INSERT:
    case KZ_OP_WEBHOOK_UPDATE:
    case KZ_OP_WEBHOOK_DELETE:
    case KZ_OP_WEBHOOK_ACTIVE:
    case KZ_OP_WEBHOOK_ROTATE: /* the dispatchers' webhook caches hold secrets */
        *bump = true;
        break;
    case KZ_OP_PUBLISH:
        for (i = 0; i < op->u.publish.n && !*due; i++) {
            const struct kz_publish_item *it = &op->u.publish.items[i];

            /* a leased row goes to this node's dispatcher by hand-off: nobody need claim it */
            for (k = 0; k < it->n_targets && !it->duplicate; k++) {
                if (it->target_active[k] && !(it->target_leased && it->target_leased[k]))
                    *due = true;
            }
        }
        break;
    case KZ_OP_REPLAY:
        if (op->u.replay.requeued)
            *due = true;
        break;
    case KZ_OP_RELEASE:
        if (op->u.release.released)
            *due = true;
        break;
    case KZ_OP_RETRY:
        if (op->u.retry.requeued)
            *due = true;
        break;
    case KZ_OP_TAKEOVER:
        if (op->u.takeover.released)
            *due = true;
        break;
    case KZ_OP_NODE_START:
        if (op->u.node.resumed)
            *due = true;
        break;
    default:
        break;
    }
    if (be_bump)
        *bump = true;
}

/* Before a wide op runs again after giving its rows back: a few milliseconds (growing, with
 * jitter), so that the other side (another node's batch waiting for the rows it gave back) takes
 * them first instead of losing the race to the retry again until PostgreSQL's deadlock detector
 * picks it as the victim. */
static void wide_backoff(int retry)
{
    int64_t us = 2000 * (retry < 10 ? retry : 10) + kz_mono_us() % 2000;

    nanosleep(&(struct timespec){0, (long)us * 1000}, NULL);
}

/* Runs one op in its own savepoint: validate, prepare, call the backend, retry what may be
 * retried, roll back a failure. Sets op->result. Returns non-OK only when the batch cannot go
 * on (the transaction is lost, or a savepoint command failed). */
static enum kz_err run_one(struct kz_store *st, struct kz_op *op, bool *bump, bool *due)
{
    const struct kz_backend_ops *b = st->ops;
    bool wide = op_wide(op->type) && b->lock_wait;
    int tries = wide ? WIDE_TRIES : 1;
    size_t prune_limit = 0;
    enum kz_err result;
    bool op_bump = false;

    if (!op_valid(st, op)) {
        op_failed(op, KZ_ERR_INVALID);
        return KZ_OK;
    }
    if (op->type == KZ_OP_COMPLETE || op->type == KZ_OP_WEBHOOK_INSERT ||
        op->type == KZ_OP_TOKEN_ADD)
        tries = LOCK_TRIES;
    switch (op->type) {
    case KZ_OP_CLAIM:
        op->u.claim.out = NULL;
        op->u.claim.n_out = 0;
        op->u.claim.held = 0;
        op->u.claim.held_until = 0;
        if (!op->u.claim.limit) {
            op->result = KZ_OK;
            return KZ_OK;
        }
        break;
    case KZ_OP_TAKEOVER:
        op->u.takeover.n_nodes = 0;
        op->u.takeover.released = 0;
        break;
    case KZ_OP_NODE_START:
        op->u.node.resumed = 0;
        break;
    case KZ_OP_PRUNE:
        op->u.prune.pruned = 0;
        if (!op->u.prune.limit) {
            op->result = KZ_OK;
            return KZ_OK;
        }
        prune_limit = op->u.prune.limit;
        if (prune_limit > KZ_PRUNE_LIMIT_MAX)
            op->u.prune.limit = KZ_PRUNE_LIMIT_MAX;
        break;
    case KZ_OP_COMPLETE:
        if (!op->u.complete.n) {
            op->result = KZ_OK;
            return KZ_OK;
        }
        op->result = complete_prepare(st, op);
        if (op->result) {
            op_failed(op, op->result);
            return KZ_OK;
        }
        break;
    default:
        break;
    }

    result = b->savepoint(st->be);
    if (!result && wide)
        result = b->lock_wait(st->be, true);
    if (result)
        goto out;
    op->result = call_op(st, op, &op_bump);
    /* A lock timeout (wide op) or a deadlock resolved against us: the other side goes on, so the
     * op is run again from its savepoint. A rollback undoes lock_wait too. */
    while (op->result == KZ_ERR_BUSY && --tries > 0 && !b->lost(st->be)) {
        if (op->type == KZ_OP_CLAIM)
            kz_claim_cleanup(op);
        result = b->rollback_to(st->be);
        if (!result && wide)
            result = b->lock_wait(st->be, true);
        if (result)
            goto out;
        if (wide)
            wide_backoff(WIDE_TRIES - tries);
        op_bump = false;
        op->result = call_op(st, op, &op_bump);
    }
    if (b->lost(st->be)) {
        kz_log("error", "store: transaction lost mid-batch", NULL);
        result = op->result == KZ_ERR_BUSY ? KZ_ERR_BUSY : KZ_ERR_DB;
        goto out;
    }
    if (op->result) {
        op_failed(op, op->result);
        result = b->rollback_to(st->be);
        goto out;
    }
    op_effects(op, op_bump, bump, due);
    if (op->type == KZ_OP_NODE_START)
        st->wr_node = true;
    if (wide)
        result = b->lock_wait(st->be, false);
out:
    if (op->type == KZ_OP_COMPLETE)
        complete_restore(st, op, !result && !op->result);
    if (prune_limit)
        op->u.prune.limit = prune_limit;
    return result;
}

/* Runs the PUBLISH at ops[start] together with every later not-yet-run valid PUBLISH before the
 * next barrier op, as one set in one savepoint; invalid ones fail alone first. Moving a publish
 * ahead of an earlier non-barrier op of the batch is invisible to callers: all ops of a batch
 * were in flight at once. If the set fails, each op is re-run alone, so only the culprit fails.
 * Returns non-OK only when the batch cannot go on. */
static enum kz_err publish_group(struct kz_store *st, struct kz_op **ops, size_t n, size_t start,
                                 bool *done, bool *due)
{
    const struct kz_backend_ops *b = st->ops;
    struct kz_op **set = st->set;
    enum kz_err result = KZ_OK;
    bool unused = false;
    size_t np = 0;
    size_t i;

    for (i = start; i < n; i++) {
        struct kz_op *op = ops[i];

        if (publish_barrier(op->type))
            break;
        if (op->type != KZ_OP_PUBLISH || done[i])
            continue;
        done[i] = true;
        if (!op_valid(st, op)) {
            op_failed(op, KZ_ERR_INVALID);
            continue;
        }
        set[np++] = op;
    }
    if (!np)
        return KZ_OK;
    result = b->savepoint(st->be);
    if (result)
        return result;
    result = b->publish(st->be, set, np);
    if (!result) {
        for (i = 0; i < np; i++) {
            set[i]->result = KZ_OK;
            op_effects(set[i], false, &unused, due);
        }
        return KZ_OK;
    }
    if (b->lost(st->be))
        return KZ_ERR_DB;
    result = b->rollback_to(st->be);
    for (i = 0; i < np && !result; i++)
        result = run_one(st, set[i], &unused, due);
    return result;
}

/* One batch: one transaction, one savepoint per op (or per publish set), one commit. */
static void write_batch(struct kz_store *st, struct kz_op **ops, size_t n)
{
    const struct kz_backend_ops *b = st->ops;
    int64_t version = st->wh_version;
    enum kz_err result;
    bool bump = false;
    bool due = false;
    size_t i;

    result = b->begin(st->be, batch_lazy(ops, n));
    if (result)
        goto fail;
    memset(st->done, 0, n * sizeof(*st->done));
    for (i = 0; i < n; i++) {
        if (st->done[i])
            continue;
        if (ops[i]->type == KZ_OP_PUBLISH && b->publish_sets) {
            result = publish_group(st, ops, n, i, st->done, &due);
        } else {
            st->done[i] = true;
            result = run_one(st, ops[i], &bump, &due);
        }
        if (result)
            goto fail;
    }
    result = b->commit(st->be, bump, due, &version);
    if (result)
        goto fail;
    st->wh_version = version;
    if (bump)
        atomic_fetch_add(&st->wh_gen, 1);
    for (i = 0; i < n; i++)
        ops[i]->webhooks_version = version;
    return;

fail:
    b->rollback(st->be);
    batch_failed(st, ops, n, result);
    kz_log("error", "store: batch failed", "\"ops\":%zu,\"err\":\"%s\"", n,
           kz_err_str(ops[0]->result));
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
        write_batch(st, batch, n);
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

/* The committed webhooks_version, before the first batch. */
static enum kz_err read_version(struct kz_store *st, char *err, size_t errlen)
{
    struct kz_buf v;
    enum kz_err result;
    char *end = NULL;

    kz_buf_init(&v, 64);
    result = st->ops->meta_get(st->be, "webhooks_version", &v);
    if (result == KZ_ERR_NOTFOUND) {
        result = KZ_OK;
    } else if (!result) {
        st->wh_version = strtoll(kz_buf_cstr(&v), &end, 10);
        if (!end || *end)
            result = KZ_ERR_DB;
    }
    if (result)
        snprintf(err, errlen, "store: %s: cannot read webhooks_version", st->ops->name);
    kz_buf_cleanup(&v);
    return result;
}

/* Frees the store and its writer scratch (not the backend, not the mutex). */
static void writer_free(struct kz_store *st)
{
    kz_free(st->done);
    kz_free(st->set);
    kz_buf_cleanup(&st->text);
    kz_free(st->att);
    kz_free(st->off);
    kz_free(st->orig);
    kz_free(st->dis);
    kz_free(st->ok);
    kz_free(st->seen);
    kz_free(st);
}

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
    st->done = kz_calloc(KZ_STORE_BATCH_MAX, sizeof(*st->done));
    st->set = kz_calloc(KZ_STORE_BATCH_MAX, sizeof(*st->set));
    kz_buf_init(&st->text, (size_t)1 << 30);
    result = read_version(st, err, errlen);
    if (result)
        goto out;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->wake, NULL);
    pthread_mutex_init(&st->nt_mu, NULL);
    pthread_mutex_init(&st->hb_mu, NULL);
    pthread_cond_init(&st->hb_cv, NULL);
    atomic_store(&st->wh_seen, -1);
    st->locks_ready = true;
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
        if (st->locks_ready) {
            pthread_cond_destroy(&st->wake);
            pthread_mutex_destroy(&st->mu);
            pthread_mutex_destroy(&st->nt_mu);
            pthread_cond_destroy(&st->hb_cv);
            pthread_mutex_destroy(&st->hb_mu);
        }
        st->ops->close(st->be);
        writer_free(st);
    }
    if (be)
        ops->close(be);
    return result;
}

void kz_store_close(struct kz_store *st)
{
    if (!st)
        return;
    heartbeat_stop(st);
    pthread_mutex_lock(&st->mu);
    st->stopping = true;
    pthread_cond_signal(&st->wake);
    pthread_mutex_unlock(&st->mu);
    pthread_join(st->writer, NULL); /* the writer drains the queue before it returns */
    st->ops->close(st->be);
    pthread_cond_destroy(&st->wake);
    pthread_mutex_destroy(&st->mu);
    pthread_mutex_destroy(&st->nt_mu);
    pthread_cond_destroy(&st->hb_cv);
    pthread_mutex_destroy(&st->hb_mu);
    writer_free(st);
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

/* The backend's notification thread: webhooks changed elsewhere moves the generation first, so
 * that whoever the callback wakes sees it. */
static void notify_tramp(void *arg, int what)
{
    struct kz_store *st = arg;

    if (what == KZ_NOTIFY_WEBHOOKS)
        atomic_fetch_add(&st->wh_gen, 1);
    pthread_mutex_lock(&st->nt_mu);
    if (st->nt_fn)
        st->nt_fn(st->nt_arg, what);
    pthread_mutex_unlock(&st->nt_mu);
}

void kz_store_on_notify(struct kz_store *st, void (*fn)(void *arg, int what), void *arg)
{
    if (!st->ops->on_notify)
        return;
    pthread_mutex_lock(&st->nt_mu);
    st->nt_fn = fn;
    st->nt_arg = arg;
    pthread_mutex_unlock(&st->nt_mu);
    /* The backend's own lock makes "fn NULL: not running once this returns" hold for ours too. */
    st->ops->on_notify(st->be, fn ? notify_tramp : NULL, fn ? st : NULL);
}

int64_t kz_store_webhooks_gen(struct kz_store *st)
{
    return atomic_load(&st->wh_gen);
}

/* ==== node identity and heartbeat ==== */

/* Sleeps `ms` or until heartbeat_stop; true when stopping. */
static bool hb_wait(struct kz_store *st, int64_t ms)
{
    struct timespec until;
    bool stop;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&st->hb_mu);
    while (!st->hb_stop && pthread_cond_timedwait(&st->hb_cv, &st->hb_mu, &until) == 0)
        ;
    stop = st->hb_stop;
    pthread_mutex_unlock(&st->hb_mu);
    return stop;
}

/* The heartbeat thread: one write every KZ_NODE_HEARTBEAT_MS on the backend's own heartbeat
 * connection, so a busy writer never delays it. Liveness counts from when a heartbeat that was
 * written was *sent*: the database's timestamp of it is that late or later, so this node fences
 * itself (KZ_NODE_FENCE_MS) before any other node can see it dead (KZ_NODE_DEAD_MS). */
static void *heartbeat_main(void *arg)
{
    struct kz_store *st = arg;
    bool failing = false;
    char esc[300];

    for (;;) {
        int64_t sent = kz_mono_ms();
        bool ours = true;
        enum kz_err e = st->ops->heartbeat(st->be, false, &ours);

        if (!e && ours) {
            atomic_store(&st->hb_ok, sent);
            if (failing)
                kz_log("info", "node heartbeat restored", "\"node\":\"%s\"",
                       kz_log_esc(st->node_id, esc, sizeof(esc)));
            failing = false;
        } else if (!e) {
            atomic_store(&st->hb_lost, true);
            kz_log("error", "another process started with this node id: no more deliveries here",
                   "\"node\":\"%s\"", kz_log_esc(st->node_id, esc, sizeof(esc)));
            break;
        } else if (!failing) {
            failing = true;
            kz_log("warn", "node heartbeat not written: deliveries stop if it stays so",
                   "\"node\":\"%s\",\"error\":\"%s\",\"fenceMs\":%d",
                   kz_log_esc(st->node_id, esc, sizeof(esc)), kz_err_str(e), KZ_NODE_FENCE_MS);
        }
        if (hb_wait(st, KZ_NODE_HEARTBEAT_MS))
            break;
    }
    return NULL;
}

/* Stops the heartbeat thread and marks the node stopped, so what it still has claimed is free
 * for the others at once. Owning thread. */
static void heartbeat_stop(struct kz_store *st)
{
    bool ours = true;

    if (!st->hb_running)
        return;
    pthread_mutex_lock(&st->hb_mu);
    st->hb_stop = true;
    pthread_cond_signal(&st->hb_cv);
    pthread_mutex_unlock(&st->hb_mu);
    pthread_join(st->hb, NULL);
    st->hb_running = false;
    if (!atomic_load(&st->hb_lost))
        st->ops->heartbeat(st->be, true, &ours);
}

enum kz_err kz_store_node_start(struct kz_store *st, const char *node_id, int64_t *resumed)
{
    struct kz_op op;
    char incarnation[23];
    enum kz_err result;

    *resumed = 0;
    if (st->node_started || !node_id_ok(node_id))
        return KZ_ERR_INVALID;
    kz_id_token(incarnation, 22);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_NODE_START;
    op.u.node.id = node_id;
    op.u.node.incarnation = incarnation;
    /* Without heartbeats there is one node, whatever its id was last time: all inflight rows are
     * ours. */
    op.u.node.all = !st->ops->heartbeat;
    op.u.node.now = kz_now_ms();
    result = kz_store_exec(st, &op);
    if (result)
        return result;
    *resumed = op.u.node.resumed;
    snprintf(st->node_id, sizeof(st->node_id), "%s", node_id);
    st->node_started = true;
    if (!st->ops->heartbeat)
        return KZ_OK;
    atomic_store(&st->hb_ok, kz_mono_ms());
    if (pthread_create(&st->hb, NULL, heartbeat_main, st))
        return KZ_ERR_NOMEM;
    st->hb_running = true;
    return KZ_OK;
}

bool kz_store_node_live(struct kz_store *st)
{
    if (!st->ops->heartbeat || !st->node_started)
        return true;
    if (atomic_load(&st->hb_lost))
        return false;
    return kz_mono_ms() - atomic_load(&st->hb_ok) < KZ_NODE_FENCE_MS;
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
    enum kz_err result = st->ops->meta_get(st->be, key, out);

    /* A webhooks_version that moved (the CLI, another node, a lost notification) moves the
     * generation. */
    if (!result && !strcmp(key, "webhooks_version")) {
        long long v = strtoll(kz_buf_cstr(out), NULL, 10);

        if (atomic_exchange(&st->wh_seen, v) != v)
            atomic_fetch_add(&st->wh_gen, 1);
    }
    return result;
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

enum kz_err kz_store_delivery_get(struct kz_store *st, const char *webhook_id, int64_t delivery_id,
                                  struct kz_delivery_detail *out)
{
    memset(out, 0, sizeof(*out));
    if (!webhook_id || delivery_id <= 0)
        return KZ_ERR_NOTFOUND;
    return st->ops->delivery_get(st->be, webhook_id, delivery_id, out);
}

enum kz_err kz_store_delivery_of_event(struct kz_store *st, const char *webhook_id,
                                       const char *event_id, int64_t *delivery_id)
{
    if (!webhook_id || !event_id)
        return KZ_ERR_INVALID;
    return st->ops->delivery_of_event(st->be, webhook_id, event_id, delivery_id);
}

void kz_delivery_detail_cleanup(struct kz_delivery_detail *dd)
{
    size_t i;

    kz_delivery_cleanup(&dd->d);
    kz_event_cleanup(&dd->ev);
    kz_webhook_cleanup(&dd->wh);
    for (i = 0; i < dd->n_attempts; i++) {
        kz_free(dd->attempts[i].error);
        kz_free(dd->attempts[i].response);
    }
    kz_free(dd->attempts);
    dd->attempts = NULL;
    dd->n_attempts = 0;
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

enum kz_err kz_store_stats_minutes(struct kz_store *st, int64_t since,
                                   void (*fn)(void *, const struct kz_stats_minute *), void *arg)
{
    return st->ops->stats_minutes(st->be, since, fn, arg);
}

enum kz_err kz_store_webhook_health(struct kz_store *st, const char *id, int64_t since_hour,
                                    struct kz_webhook_health *out)
{
    memset(out, 0, sizeof(*out));
    return st->ops->webhook_health(st->be, id, since_hour, out);
}

void kz_webhook_health_cleanup(struct kz_webhook_health *h)
{
    kz_free(h->last_error);
    h->last_error = NULL;
}

enum kz_err kz_store_failing_list(struct kz_store *st, size_t limit,
                                  void (*fn)(void *, const struct kz_failing *), void *arg)
{
    if (!limit)
        return KZ_OK;
    return st->ops->failing_list(st->be, limit, fn, arg);
}

void kz_stats_hist_format(const int64_t *hist, char out[KZ_STATS_HIST_TEXT])
{
    size_t off = 0;
    int k;

    for (k = 0; k < KZ_STATS_HIST; k++)
        off += (size_t)snprintf(out + off, KZ_STATS_HIST_TEXT - off, "%s%lld", k ? "," : "",
                                (long long)hist[k]);
}

bool kz_stats_hist_parse(const char *s, int64_t *hist)
{
    int k;

    memset(hist, 0, KZ_STATS_HIST * sizeof(*hist));
    for (k = 0; s && k < KZ_STATS_HIST; k++) {
        char *end;
        long long v = strtoll(s, &end, 10);

        if (end == s || v < 0 || (k < KZ_STATS_HIST - 1 ? *end != ',' : *end != '\0')) {
            memset(hist, 0, KZ_STATS_HIST * sizeof(*hist));
            return false;
        }
        hist[k] = v;
        s = end + 1;
    }
    return s != NULL;
}
