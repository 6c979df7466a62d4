/* scheduler.c — the transfer-slot scheduler (see scheduler.h).
 *
 * Two levels of round-robin ring: a ring of applications with queued work, and in each
 * application a ring of its endpoints with queued work. A ring pointer names the member served
 * last, so the next one served is ring->rr_next. Members leave a ring lazily, when a scan finds
 * them with nothing to send or at their own cap; they come back when a transfer of theirs ends
 * or rows arrive. Members held back only by the global caps stay. */
#include "scheduler.h"
#include "alloc.h"

#include <stdio.h>
#include <string.h>

#define EP_BUCKETS 1024
#define APP_BUCKETS 256

struct queued {
    struct queued *next;
    struct kz_claimed row;
};

struct app {
    struct app *next;    /* hash chain */
    struct app *rr_next; /* ring of applications with queued work */
    char id[40];
    int inflight;
    size_t nqueued;
    size_t neps;              /* endpoints referring to this application */
    struct kz_sched_ep *ring; /* its endpoints with queued work: the one served last */
    bool in_ring;
};

struct kz_sched_ep {
    struct kz_sched_ep *next;    /* hash chain */
    struct kz_sched_ep *rr_next; /* ring of the application's endpoints with queued work */
    char id[40];
    struct app *app;
    int inflight;
    struct queued *head, *tail;
    size_t nqueued;
    bool in_ring;
    /* delivery controls of its webhook, from the last row queued (README.md "Delivery
     * controls"): starts are paced by a local bucket of rate_limit per second (thousandths) */
    int rate_limit;
    bool ordered;
    int64_t tokens, refilled_at; /* refilled_at 0: never started (a full bucket) */
};

struct kz_sched {
    int per_endpoint;
    struct kz_sched_ep *eps[EP_BUCKETS];
    struct app *apps[APP_BUCKETS];
    struct app *ring; /* the application served last */
    size_t ring_len;
    size_t busy; /* applications with transfers in flight or rows queued */
    size_t queued;
    int inflight;
    bool refill;
    int64_t now;      /* the clock as of kz_sched_tick(), epoch ms */
    size_t n_paced;   /* endpoints with a rate limit in the table */
    int64_t swept_at; /* last sweep of idle paced endpoints */
};

/* ==== applications ==== */

static struct app *app_find(const struct kz_sched *s, const char *id)
{
    struct app *a;

    for (a = s->apps[kz_hash_str(id) % APP_BUCKETS]; a; a = a->next) {
        if (!strcmp(a->id, id))
            return a;
    }
    return NULL;
}

static struct app *app_get(struct kz_sched *s, const char *id)
{
    uint32_t b = kz_hash_str(id) % APP_BUCKETS;
    struct app *a = app_find(s, id);

    if (a)
        return a;
    a = kz_calloc(1, sizeof(*a));
    snprintf(a->id, sizeof(a->id), "%s", id);
    a->next = s->apps[b];
    s->apps[b] = a;
    return a;
}

/* Frees `a` when nothing refers to it any more. */
static void app_release(struct kz_sched *s, struct app *a)
{
    struct app **pp;

    if (a->neps || a->inflight || a->nqueued || a->in_ring)
        return;
    for (pp = &s->apps[kz_hash_str(a->id) % APP_BUCKETS]; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            kz_free(a);
            return;
        }
    }
}

/* Adds `dq` queued rows and `di` transfers to `a`, keeping the count of busy applications. */
static void app_add(struct kz_sched *s, struct app *a, long dq, int di)
{
    bool was = a->inflight || a->nqueued;

    a->nqueued = (size_t)((long)a->nqueued + dq);
    a->inflight += di;
    if (was && !(a->inflight || a->nqueued))
        s->busy--;
    else if (!was && (a->inflight || a->nqueued))
        s->busy++;
}

/* The limit of every busy application when `busy` of them have work. */
static int limit_for(size_t busy)
{
    int share = (KZ_SCHED_HARD - KZ_SCHED_RESERVE) / (int)(busy ? busy : 1);

    return share < KZ_SCHED_APP_FLOOR ? KZ_SCHED_APP_FLOOR : share;
}

/* An application's share of the soft cap: below it, it may start transfers past the soft cap to
 * endpoints that already have some in flight. */
static int soft_share(const struct kz_sched *s)
{
    return KZ_SCHED_SOFT / (int)(s->busy ? s->busy : 1);
}

static void app_ring_add(struct kz_sched *s, struct app *a)
{
    if (a->in_ring)
        return;
    a->in_ring = true;
    s->ring_len++;
    if (!s->ring) {
        a->rr_next = a;
        s->ring = a;
    } else {
        a->rr_next = s->ring->rr_next;
        s->ring->rr_next = a;
    }
}

static void app_ring_remove_next(struct kz_sched *s, struct app *prev)
{
    struct app *a = prev->rr_next;

    if (a == prev)
        s->ring = NULL;
    else
        prev->rr_next = a->rr_next;
    a->in_ring = false;
    a->rr_next = NULL;
    s->ring_len--;
}

/* ==== endpoints ==== */

static struct kz_sched_ep *ep_get(struct kz_sched *s, const char *id, const char *app_id)
{
    uint32_t b = kz_hash_str(id) % EP_BUCKETS;
    struct kz_sched_ep *e;

    for (e = s->eps[b]; e; e = e->next) {
        if (!strcmp(e->id, id))
            return e;
    }
    e = kz_calloc(1, sizeof(*e));
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->app = app_get(s, app_id);
    e->app->neps++;
    e->next = s->eps[b];
    s->eps[b] = e;
    return e;
}

size_t kz_sched_ep_queued(const struct kz_sched *s, const char *id)
{
    const struct kz_sched_ep *e;

    for (e = s->eps[kz_hash_str(id) % EP_BUCKETS]; e; e = e->next) {
        if (!strcmp(e->id, id))
            return e->nqueued;
    }
    return 0;
}

/* The local bucket of a paced endpoint now, in thousandths of a start. */
static int64_t ep_tokens(const struct kz_sched *s, const struct kz_sched_ep *e)
{
    int64_t cap = (int64_t)e->rate_limit * 1000, dt = s->now - e->refilled_at, t;

    if (!e->refilled_at || dt >= 1000)
        return cap;
    t = e->tokens + (dt > 0 ? dt * e->rate_limit : 0);
    return t < cap ? t : cap;
}

/* A paced endpoint is kept while its bucket refills, so that its pace survives an idle moment. */
static bool ep_pacing(const struct kz_sched *s, const struct kz_sched_ep *e)
{
    return e->rate_limit > 0 && ep_tokens(s, e) < (int64_t)e->rate_limit * 1000;
}

/* Frees `e` (and then perhaps its application) when nothing refers to it any more. */
static void ep_release(struct kz_sched *s, struct kz_sched_ep *e)
{
    struct kz_sched_ep **pp;
    struct app *a = e->app;

    if (e->inflight || e->nqueued || e->in_ring || ep_pacing(s, e))
        return;
    for (pp = &s->eps[kz_hash_str(e->id) % EP_BUCKETS]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            if (e->rate_limit > 0)
                s->n_paced--;
            kz_free(e);
            a->neps--;
            app_release(s, a);
            return;
        }
    }
}

static void ep_ring_add(struct app *a, struct kz_sched_ep *e)
{
    if (e->in_ring)
        return;
    e->in_ring = true;
    if (!a->ring) {
        e->rr_next = e;
        a->ring = e;
    } else {
        e->rr_next = a->ring->rr_next;
        a->ring->rr_next = e;
    }
}

static void ep_ring_remove_next(struct app *a, struct kz_sched_ep *prev)
{
    struct kz_sched_ep *e = prev->rr_next;

    if (e == prev)
        a->ring = NULL;
    else
        prev->rr_next = e->rr_next;
    e->in_ring = false;
    e->rr_next = NULL;
}

/* Takes the first queued row of `e` into `out`. */
static void ep_shift(struct kz_sched *s, struct kz_sched_ep *e, struct kz_claimed *out)
{
    struct queued *q = e->head;

    e->head = q->next;
    if (!e->head)
        e->tail = NULL;
    e->nqueued--;
    s->queued--;
    app_add(s, e->app, -1, 0);
    *out = q->row;
    kz_free(q);
}

/* ==== interface ==== */

struct kz_sched *kz_sched_new(int per_endpoint)
{
    struct kz_sched *s = kz_calloc(1, sizeof(*s));

    KZ_ASSERT(per_endpoint >= 1);
    s->per_endpoint = per_endpoint;
    return s;
}

void kz_sched_free(struct kz_sched *s)
{
    size_t i;

    if (!s)
        return;
    for (i = 0; i < EP_BUCKETS; i++) {
        while (s->eps[i]) {
            struct kz_sched_ep *e = s->eps[i];

            s->eps[i] = e->next;
            while (e->head) {
                struct queued *q = e->head;

                e->head = q->next;
                kz_webhook_cleanup(&q->row.wh);
                kz_event_cleanup(&q->row.ev);
                kz_free(q);
            }
            kz_free(e);
        }
    }
    for (i = 0; i < APP_BUCKETS; i++) {
        while (s->apps[i]) {
            struct app *a = s->apps[i];

            s->apps[i] = a->next;
            kz_free(a);
        }
    }
    kz_free(s);
}

size_t kz_sched_queue_target(const struct kz_sched *s)
{
    size_t t = 4 * (size_t)s->per_endpoint;

    return t < 32 ? 32 : t;
}

void kz_sched_push(struct kz_sched *s, struct kz_claimed *row)
{
    struct queued *q = kz_calloc(1, sizeof(*q));
    struct kz_sched_ep *e;

    q->row = *row;
    memset(row, 0, sizeof(*row)); /* ownership moved to q */
    e = ep_get(s, q->row.wh.id, q->row.wh.app_id);
    if ((e->rate_limit > 0) != (q->row.wh.rate_limit > 0))
        s->n_paced += q->row.wh.rate_limit > 0 ? 1 : (size_t)-1;
    e->rate_limit = q->row.wh.rate_limit;
    e->ordered = q->row.wh.ordered;
    if (e->tail)
        e->tail->next = q;
    else
        e->head = q;
    e->tail = q;
    e->nqueued++;
    s->queued++;
    app_add(s, e->app, 1, 0);
    ep_ring_add(e->app, e);
    app_ring_add(s, e->app);
}

/* The next endpoint of `a` that may start a transfer now, advancing a's ring to it; NULL when
 * none may. Endpoints with nothing queued or at their own cap leave the ring. */
static struct kz_sched_ep *pick_ep(struct kz_sched *s, struct app *a)
{
    size_t i, n = a->neps; /* the ring holds at most all of a's endpoints */
    int share = soft_share(s);

    for (i = 0; i < n && a->ring; i++) {
        struct kz_sched_ep *prev = a->ring, *e = prev->rr_next;

        if (!e->nqueued || e->inflight >= s->per_endpoint) {
            ep_ring_remove_next(a, prev);
            ep_release(s, e);
            continue;
        }
        a->ring = e;
        if (s->inflight >= KZ_SCHED_SOFT && e->inflight && a->inflight >= share)
            continue;
        if (e->rate_limit > 0 && ep_tokens(s, e) < 1000)
            continue; /* over its rate: it waits, the others are served */
        return e;
    }
    return NULL;
}

bool kz_sched_next(struct kz_sched *s, struct kz_claimed *out, struct kz_sched_ep **ep)
{
    size_t i, n = s->ring_len;
    int limit = limit_for(s->busy);

    if (s->inflight >= KZ_SCHED_HARD)
        return false;
    for (i = 0; i < n && s->ring; i++) {
        struct app *prev = s->ring, *a = prev->rr_next;
        struct kz_sched_ep *e = NULL;

        if (a->inflight < limit)
            e = pick_ep(s, a);
        if (!a->ring) {
            app_ring_remove_next(s, prev);
            app_release(s, a);
            continue;
        }
        s->ring = a;
        if (!e)
            continue;
        ep_shift(s, e, out);
        if (e->rate_limit > 0) {
            e->tokens = ep_tokens(s, e) - 1000;
            e->refilled_at = s->now > 0 ? s->now : 1;
        }
        if (e->nqueued == kz_sched_queue_target(s) / 2)
            s->refill = true; /* it was excluded from claims: ask for more now */
        e->inflight++;
        app_add(s, a, 0, 1);
        s->inflight++;
        *ep = e;
        return true;
    }
    return false;
}

void kz_sched_done(struct kz_sched *s, struct kz_sched_ep *e)
{
    struct app *a = e->app;

    KZ_ASSERT(e->inflight > 0);
    e->inflight--;
    app_add(s, a, 0, -1);
    s->inflight--;
    if (e->nqueued) {
        ep_ring_add(a, e);
        app_ring_add(s, a);
    } else {
        ep_release(s, e);
    }
}

const char *kz_sched_ep_id(const struct kz_sched_ep *e)
{
    return e->id;
}

bool kz_sched_pop(struct kz_sched *s, struct kz_claimed *out)
{
    size_t i;

    if (!s->queued)
        return false;
    for (i = 0; i < EP_BUCKETS; i++) {
        struct kz_sched_ep *e;

        for (e = s->eps[i]; e; e = e->next) {
            if (e->head) {
                ep_shift(s, e, out);
                return true;
            }
        }
    }
    return false;
}

/* An application with work enough for its limit: claiming more for it would only park rows. */
static bool app_full(const struct app *a, int limit)
{
    return (size_t)a->inflight + a->nqueued >= (size_t)limit;
}

/* An endpoint the next claim must pass over: its queue is full, its application has work enough,
 * it is paced and still has rows waiting for their turn, or it is ordered and has a delivery
 * here already (the store would hand out nothing more for it anyway). */
static bool ep_excluded(const struct kz_sched_ep *e, size_t target, int limit)
{
    return e->nqueued >= target || app_full(e->app, limit) || (e->rate_limit > 0 && e->nqueued) ||
           (e->ordered && (e->nqueued || e->inflight));
}

const char **kz_sched_exclude(const struct kz_sched *s, size_t *n)
{
    size_t i, k = 0, count = 0, target = kz_sched_queue_target(s);
    int limit = limit_for(s->busy);
    const char **ids;
    char *text;
    const struct kz_sched_ep *e;

    for (i = 0; i < EP_BUCKETS; i++) {
        for (e = s->eps[i]; e; e = e->next)
            count += ep_excluded(e, target, limit);
    }
    *n = count;
    if (!count)
        return NULL;
    ids = kz_malloc(count * (sizeof(*ids) + sizeof(e->id)));
    text = (char *)(ids + count);
    for (i = 0; i < EP_BUCKETS; i++) {
        for (e = s->eps[i]; e; e = e->next) {
            if (!ep_excluded(e, target, limit))
                continue;
            memcpy(text + k * sizeof(e->id), e->id, sizeof(e->id));
            ids[k] = text + k * sizeof(e->id);
            k++;
        }
    }
    return ids;
}

size_t kz_sched_claim_room(const struct kz_sched *s)
{
    int limit = limit_for(s->busy);
    size_t room, parked = 0, runnable, i;

    if (s->inflight >= KZ_SCHED_HARD)
        return 0;
    room = s->inflight < KZ_SCHED_SOFT ? (size_t)(KZ_SCHED_SOFT - s->inflight) : 0;
    if (room < KZ_SCHED_HEADROOM)
        room = KZ_SCHED_HEADROOM;
    if (room > KZ_SCHED_CLAIM_MAX)
        room = KZ_SCHED_CLAIM_MAX;
    for (i = 0; i < APP_BUCKETS; i++) {
        const struct app *a;

        for (a = s->apps[i]; a; a = a->next) {
            if (a->inflight >= limit)
                parked += a->nqueued;
        }
    }
    /* rows of paced endpoints wait for their rate, not for slots */
    for (i = 0; s->n_paced && i < EP_BUCKETS; i++) {
        const struct kz_sched_ep *e;

        for (e = s->eps[i]; e; e = e->next) {
            if (e->rate_limit > 0 && e->app->inflight < limit)
                parked += e->nqueued;
        }
    }
    if (parked > KZ_SCHED_PARK_MAX)
        parked = KZ_SCHED_PARK_MAX;
    runnable = s->queued - parked;
    return runnable >= room ? 0 : room - runnable;
}

void kz_sched_tick(struct kz_sched *s, int64_t now_ms)
{
    size_t i;

    s->now = now_ms;
    if (!s->n_paced || now_ms - s->swept_at < 10000)
        return;
    /* Paced endpoints stay while their bucket refills (ep_release): free those idle again. */
    s->swept_at = now_ms;
    for (i = 0; i < EP_BUCKETS; i++) {
        struct kz_sched_ep *e = s->eps[i], *next;

        for (; e; e = next) {
            next = e->next;
            if (e->rate_limit > 0)
                ep_release(s, e);
        }
    }
}

int64_t kz_sched_next_ready(const struct kz_sched *s)
{
    int64_t at = -1;
    size_t i;

    for (i = 0; s->n_paced && i < EP_BUCKETS; i++) {
        const struct kz_sched_ep *e;

        for (e = s->eps[i]; e; e = e->next) {
            int64_t t, when;

            if (e->rate_limit <= 0 || !e->nqueued || e->inflight >= s->per_endpoint)
                continue;
            t = ep_tokens(s, e);
            when = t >= 1000 ? s->now : s->now + (1000 - t + e->rate_limit - 1) / e->rate_limit;
            if (at < 0 || when < at)
                at = when;
        }
    }
    return at;
}

bool kz_sched_take_refill(struct kz_sched *s)
{
    bool r = s->refill;

    s->refill = false;
    return r;
}

int kz_sched_app_limit(const struct kz_sched *s, const char *app_id)
{
    const struct app *a = app_find(s, app_id);
    bool busy = a && (a->inflight || a->nqueued);

    return limit_for(s->busy + !busy);
}

int kz_sched_inflight(const struct kz_sched *s)
{
    return s->inflight;
}

int kz_sched_app_inflight(const struct kz_sched *s, const char *app_id)
{
    const struct app *a = app_find(s, app_id);

    return a ? a->inflight : 0;
}

size_t kz_sched_queued(const struct kz_sched *s)
{
    return s->queued;
}
