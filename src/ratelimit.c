/* ratelimit.c — fixed-window counters and in-flight counts per key (see ratelimit.h). */
#include "ratelimit.h"
#include "alloc.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* A slot is free for a new key in minute `window` when it holds nothing counted this minute. */
static bool slot_free(const struct kz_rate_slot *s, int64_t window)
{
    return s->window != window || !s->count;
}

int kz_window_hit(struct kz_rate_table *t, const char *key, int limit, int64_t now, bool count)
{
    int64_t window = now / 60000;
    size_t home = kz_hash_str(key) % KZ_RATE_SLOTS;
    struct kz_rate_slot *s = NULL;
    size_t i;
    int wait;

    KZ_ASSERT(strlen(key) <= KZ_RATE_KEY_MAX);
    /* The key's own slot among its probes if it has one this minute, else the first free one.
     * Only when every probe slot holds another key's count this minute does it share its home
     * slot's count. */
    for (i = 0; i < KZ_RATE_PROBES; i++) {
        struct kz_rate_slot *p = &t->slot[(home + i) % KZ_RATE_SLOTS];

        if (!slot_free(p, window) && !strcmp(p->key, key)) {
            s = p;
            break;
        }
        if (!s && slot_free(p, window))
            s = p;
    }
    if (!s)
        s = &t->slot[home];
    if (slot_free(s, window)) {
        snprintf(s->key, sizeof(s->key), "%s", key);
        s->window = window;
        s->count = 0;
    }
    if (s->count < limit) {
        if (count)
            s->count++;
        return 0;
    }
    wait = (int)(((window + 1) * 60000 - now + 999) / 1000);
    return wait < 1 ? 1 : wait;
}

/* In-flight counts: a slot belongs to its key while count > 0. */
struct held_slot {
    char key[KZ_RATE_KEY_MAX + 1];
    int count;
};

struct kz_ratelimit {
    pthread_mutex_t lock;
    struct kz_rate_table calls;           /* --rate-limit, per application */
    struct kz_rate_table auth_app;        /* bad credentials per applicationId */
    struct kz_rate_table auth_ip;         /* bad credentials per client address */
    struct kz_rate_table admin_ip;        /* wrong admin tokens per client address */
    struct held_slot held[KZ_RATE_SLOTS]; /* handshakes in flight per application */
};

struct kz_ratelimit *kz_ratelimit_new(void)
{
    struct kz_ratelimit *rl = kz_calloc(1, sizeof(*rl));

    pthread_mutex_init(&rl->lock, NULL);
    return rl;
}

void kz_ratelimit_free(struct kz_ratelimit *rl)
{
    if (!rl)
        return;
    pthread_mutex_destroy(&rl->lock);
    kz_free(rl);
}

int kz_ratelimit_call(struct kz_ratelimit *rl, const char *app_id, int limit, int64_t now)
{
    int wait;

    if (!limit)
        return 0;
    pthread_mutex_lock(&rl->lock);
    wait = kz_window_hit(&rl->calls, app_id, limit, now, true);
    pthread_mutex_unlock(&rl->lock);
    return wait;
}

int kz_ratelimit_auth(struct kz_ratelimit *rl, const char *app_id, const char *ip, int64_t now,
                      bool failed)
{
    int w1, w2;

    pthread_mutex_lock(&rl->lock);
    w1 = kz_window_hit(&rl->auth_app, app_id, KZ_AUTH_FAILURES_PER_APP, now, failed);
    w2 = kz_window_hit(&rl->auth_ip, ip, KZ_AUTH_FAILURES_PER_IP, now, failed);
    pthread_mutex_unlock(&rl->lock);
    return w1 > w2 ? w1 : w2;
}

int kz_ratelimit_admin(struct kz_ratelimit *rl, const char *ip, int64_t now, bool failed)
{
    int wait;

    pthread_mutex_lock(&rl->lock);
    wait = kz_window_hit(&rl->admin_ip, ip, KZ_ADMIN_FAILURES_PER_IP, now, failed);
    pthread_mutex_unlock(&rl->lock);
    return wait;
}

/* The slot `key` holds, or (with `claim`) the first free one among its probes; NULL when none.
 * Caller holds rl->lock. */
static struct held_slot *held_find(struct kz_ratelimit *rl, const char *key, bool claim)
{
    size_t home = kz_hash_str(key) % KZ_RATE_SLOTS;
    struct held_slot *free_slot = NULL;
    size_t i;

    KZ_ASSERT(strlen(key) <= KZ_RATE_KEY_MAX);
    for (i = 0; i < KZ_RATE_PROBES; i++) {
        struct held_slot *p = &rl->held[(home + i) % KZ_RATE_SLOTS];

        if (p->count && !strcmp(p->key, key))
            return p;
        if (!free_slot && !p->count)
            free_slot = p;
    }
    if (!claim || !free_slot)
        return NULL;
    snprintf(free_slot->key, sizeof(free_slot->key), "%s", key);
    return free_slot;
}

bool kz_ratelimit_acquire(struct kz_ratelimit *rl, const char *key, int max)
{
    struct held_slot *s;
    bool ok = false;

    pthread_mutex_lock(&rl->lock);
    s = held_find(rl, key, true);
    if (s && s->count < max) {
        s->count++;
        ok = true;
    }
    pthread_mutex_unlock(&rl->lock);
    return ok;
}

void kz_ratelimit_release(struct kz_ratelimit *rl, const char *key)
{
    struct held_slot *s;

    pthread_mutex_lock(&rl->lock);
    s = held_find(rl, key, false);
    KZ_ASSERT(s); /* released more than acquired: a programmer error */
    s->count--;
    pthread_mutex_unlock(&rl->lock);
}

int kz_ratelimit_held(struct kz_ratelimit *rl, const char *key)
{
    struct held_slot *s;
    int n;

    pthread_mutex_lock(&rl->lock);
    s = held_find(rl, key, false);
    n = s ? s->count : 0;
    pthread_mutex_unlock(&rl->lock);
    return n;
}
