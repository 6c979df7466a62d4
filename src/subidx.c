/* subidx.c — hash of (object type, object id) -> chain of webhook entries. */
#include "subidx.h"
#include "alloc.h"
#include "buf.h"
#include "filter.h"
#include "store.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    struct entry *next;
    uint32_t hash;
    enum kz_objtype type;
    char *object_id;
    char id[40];
    char app_id[40];
    uint32_t event_mask;
    int64_t validity_ms;
    bool active;
    bool gated;               /* rateLimit or ordered: its deliveries go through the claim's gate */
    struct kz_filter *filter; /* compiled once here; NULL: every event passes */
    bool filter_bad;          /* a stored filter this binary cannot compile: nothing passes */
};

static void entry_free(struct entry *e)
{
    kz_filter_free(e->filter);
    kz_free(e->object_id);
    kz_free(e);
}

struct kz_subidx {
    pthread_rwlock_t lock;
    struct entry **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    int64_t version;
};

static uint32_t key_hash(enum kz_objtype t, const char *s)
{
    return kz_hash(KZ_HASH_INIT ^ (uint32_t)t, s, strlen(s));
}

struct kz_subidx *kz_subidx_new(void)
{
    struct kz_subidx *idx = kz_calloc(1, sizeof(*idx));

    pthread_rwlock_init(&idx->lock, NULL);
    idx->nbuckets = 256;
    idx->buckets = kz_calloc(idx->nbuckets, sizeof(*idx->buckets));
    return idx;
}

static void clear(struct kz_subidx *idx)
{
    size_t i;

    for (i = 0; i < idx->nbuckets; i++) {
        struct entry *e = idx->buckets[i];

        while (e) {
            struct entry *next = e->next;

            entry_free(e);
            e = next;
        }
        idx->buckets[i] = NULL;
    }
    idx->count = 0;
}

void kz_subidx_free(struct kz_subidx *idx)
{
    if (!idx)
        return;
    clear(idx);
    kz_free(idx->buckets);
    pthread_rwlock_destroy(&idx->lock);
    kz_free(idx);
}

static void grow(struct kz_subidx *idx)
{
    size_t n = idx->nbuckets * 2, i;
    struct entry **nb = kz_calloc(n, sizeof(*nb));

    for (i = 0; i < idx->nbuckets; i++) {
        struct entry *e = idx->buckets[i];

        while (e) {
            struct entry *next = e->next;

            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    kz_free(idx->buckets);
    idx->buckets = nb;
    idx->nbuckets = n;
}

/* Unlinks and frees the entry with this id; caller holds the write lock. */
static bool unlink_id(struct kz_subidx *idx, const char *id)
{
    size_t i;

    for (i = 0; i < idx->nbuckets; i++) {
        struct entry **pp = &idx->buckets[i];

        for (; *pp; pp = &(*pp)->next) {
            struct entry *e = *pp;

            if (!strcmp(e->id, id)) {
                *pp = e->next;
                entry_free(e);
                idx->count--;
                return true;
            }
        }
    }
    return false;
}

static void insert(struct kz_subidx *idx, const struct kz_webhook *w)
{
    struct entry *e = kz_calloc(1, sizeof(*e));
    size_t b;

    e->type = w->object_type;
    e->object_id = kz_strdup(w->object_id);
    e->hash = key_hash(e->type, e->object_id);
    memcpy(e->id, w->id, sizeof(e->id));
    memcpy(e->app_id, w->app_id, sizeof(e->app_id));
    e->event_mask = w->event_mask;
    e->validity_ms = w->validity_ms;
    e->active = w->active;
    e->gated = w->rate_limit > 0 || w->ordered;
    if (w->filter_json &&
        kz_filter_compile(w->filter_json, strlen(w->filter_json), &e->filter, NULL, 0))
        e->filter_bad = true;
    if (idx->count >= idx->nbuckets)
        grow(idx);
    b = e->hash & (idx->nbuckets - 1);
    e->next = idx->buckets[b];
    idx->buckets[b] = e;
    idx->count++;
}

/* Our own change committed at `version`. Only a version exactly one past ours proves that no
 * other writer (the CLI, another node) changed webhooks in between; otherwise the index keeps its
 * older version so that the next kz_subidx_sync reloads everything. */
static void note_version(struct kz_subidx *idx, int64_t version)
{
    if (version == idx->version + 1)
        idx->version = version;
}

void kz_subidx_put(struct kz_subidx *idx, const struct kz_webhook *w, int64_t version)
{
    pthread_rwlock_wrlock(&idx->lock);
    unlink_id(idx, w->id);
    insert(idx, w);
    note_version(idx, version);
    pthread_rwlock_unlock(&idx->lock);
}

void kz_subidx_remove(struct kz_subidx *idx, const char *webhook_id, int64_t version)
{
    pthread_rwlock_wrlock(&idx->lock);
    unlink_id(idx, webhook_id);
    note_version(idx, version);
    pthread_rwlock_unlock(&idx->lock);
}

void kz_subidx_remove_app(struct kz_subidx *idx, const char *app_id, int64_t version)
{
    size_t i;

    pthread_rwlock_wrlock(&idx->lock);
    for (i = 0; i < idx->nbuckets; i++) {
        struct entry **pp = &idx->buckets[i];

        while (*pp) {
            struct entry *e = *pp;

            if (!strcmp(e->app_id, app_id)) {
                *pp = e->next;
                entry_free(e);
                idx->count--;
            } else {
                pp = &e->next;
            }
        }
    }
    note_version(idx, version);
    pthread_rwlock_unlock(&idx->lock);
}

void kz_subidx_set_active(struct kz_subidx *idx, const char *webhook_id, bool active,
                          int64_t version)
{
    size_t i;
    bool done = false;

    pthread_rwlock_wrlock(&idx->lock);
    for (i = 0; i < idx->nbuckets && !done; i++) {
        struct entry *e;

        for (e = idx->buckets[i]; e; e = e->next) {
            if (!strcmp(e->id, webhook_id)) {
                e->active = active;
                done = true;
                break;
            }
        }
    }
    note_version(idx, version);
    pthread_rwlock_unlock(&idx->lock);
}

static void load_one(void *arg, const struct kz_webhook *w)
{
    insert(arg, w);
}

enum kz_err kz_subidx_sync(struct kz_subidx *idx, struct kz_store *st, bool force)
{
    struct kz_buf v;
    int64_t version = 0;
    enum kz_err result;
    struct kz_subidx *fresh;

    kz_buf_init(&v, 64);
    result = kz_store_meta_get(st, "webhooks_version", &v);
    if (result == KZ_ERR_NOTFOUND)
        result = KZ_OK;
    else if (!result)
        version = strtoll(kz_buf_cstr(&v), NULL, 10);
    kz_buf_cleanup(&v);
    if (result)
        return result;
    pthread_rwlock_rdlock(&idx->lock);
    if (!force && version == idx->version) {
        pthread_rwlock_unlock(&idx->lock);
        return KZ_OK;
    }
    pthread_rwlock_unlock(&idx->lock);

    /* Build aside, then swap: publishers keep matching against the old table meanwhile. */
    fresh = kz_subidx_new();
    result = kz_store_webhook_list(st, NULL, -1, NULL, load_one, fresh);
    if (!result) {
        struct entry **b;
        size_t nb, count;

        pthread_rwlock_wrlock(&idx->lock);
        b = idx->buckets;
        nb = idx->nbuckets;
        count = idx->count;
        idx->buckets = fresh->buckets;
        idx->nbuckets = fresh->nbuckets;
        idx->count = fresh->count;
        idx->version = version;
        fresh->buckets = b;
        fresh->nbuckets = nb;
        fresh->count = count;
        pthread_rwlock_unlock(&idx->lock);
    }
    kz_subidx_free(fresh);
    return result;
}

static size_t match_key(struct kz_subidx *idx, enum kz_objtype t, const char *oid, uint32_t bit,
                        const struct kz_filter_event *fe, int64_t now, struct kz_match **out,
                        size_t *n, size_t *cap)
{
    uint32_t h;
    struct entry *e;
    size_t added = 0;

    if (!oid)
        return 0;
    h = key_hash(t, oid);
    for (e = idx->buckets[h & (idx->nbuckets - 1)]; e; e = e->next) {
        if (e->hash != h || e->type != t || !(e->event_mask & bit) || strcmp(e->object_id, oid))
            continue;
        if (e->filter_bad || !kz_filter_match(e->filter, fe))
            continue;
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *out = kz_realloc(*out, *cap * sizeof(**out));
        }
        memcpy((*out)[*n].webhook_id, e->id, sizeof(e->id));
        (*out)[*n].active = e->active && e->validity_ms > now;
        (*out)[*n].gated = e->gated;
        (*n)++;
        added++;
    }
    return added;
}

size_t kz_subidx_match(struct kz_subidx *idx, const struct kz_event *ev, int64_t now,
                       struct kz_match **out, size_t *n, size_t *cap)
{
    uint32_t bit = 1u << ev->event_type;
    size_t added = 0;
    struct kz_filter_event fe = {
        .event_type = kz_evtype_name(ev->event_type),
        .from_user = ev->from_user,
        .from_user_id = ev->from_user_id,
        .from_user_name = ev->from_user_name,
        .data_json = ev->data_json,
        .data_len = ev->data_json ? strlen(ev->data_json) : 0,
    };

    pthread_rwlock_rdlock(&idx->lock);
    added += match_key(idx, KZ_OBJ_GROUP, ev->group_id, bit, &fe, now, out, n, cap);
    added += match_key(idx, KZ_OBJ_ACTION, ev->action_id, bit, &fe, now, out, n, cap);
    added +=
        match_key(idx, KZ_OBJ_ACTIONPACKAGE, ev->action_package_id, bit, &fe, now, out, n, cap);
    pthread_rwlock_unlock(&idx->lock);
    return added;
}

void kz_subidx_counts(struct kz_subidx *idx, size_t *total, size_t *inactive)
{
    size_t i, off = 0;

    pthread_rwlock_rdlock(&idx->lock);
    for (i = 0; i < idx->nbuckets; i++) {
        struct entry *e;

        for (e = idx->buckets[i]; e; e = e->next)
            off += !e->active;
    }
    *total = idx->count;
    *inactive = off;
    pthread_rwlock_unlock(&idx->lock);
}
