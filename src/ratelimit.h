/* ratelimit.h — the API's counters of who did how much: fixed one-minute windows per key (calls
 * per application, failed logins per application and per client address, wrong admin tokens per
 * client address) and the number of callback handshakes each application has in flight.
 *
 * Every table has a fixed size (KZ_RATE_SLOTS) whatever the number of clients: a key may take one
 * of KZ_RATE_PROBES slots from its hash on. Two keys never share a count while a probe slot is
 * free; only when all of a key's probe slots hold other keys active in the same minute does it
 * fall back to sharing its home slot's count (so a flood of distinct keys can make a key count
 * for others, never exempt it from its limit).
 *
 * Threads: any thread; struct kz_ratelimit serialises every call on one mutex. kz_window_hit on
 * a bare table is not locked (unit tests, or a caller that holds its own lock). */
#ifndef KZ_RATELIMIT_H
#define KZ_RATELIMIT_H

#include "kz.h"

#define KZ_RATE_SLOTS 1024
#define KZ_RATE_PROBES 16  /* slots a key may take, from its hash on */
#define KZ_RATE_KEY_MAX 63 /* longest key: an application id or a client address */

struct kz_rate_slot {
    char key[KZ_RATE_KEY_MAX + 1];
    int64_t window; /* minute number (epoch ms / 60000) */
    int count;
};

/** One table of fixed one-minute windows. Zero-initialised is empty. */
struct kz_rate_table {
    struct kz_rate_slot slot[KZ_RATE_SLOTS];
};

/** Counts one call of `key` (at most KZ_RATE_KEY_MAX bytes) against `limit` calls in the minute
 * of `now` (epoch ms). Returns 0 when the call is allowed, and then counts it when `count`;
 * otherwise the seconds (>= 1) until the minute ends, and nothing is counted. With `count`
 * false it only asks. Not locked. */
int kz_window_hit(struct kz_rate_table *t, const char *key, int limit, int64_t now, bool count);

struct kz_ratelimit;

/** The API's tables, empty. Never NULL (aborts on OOM). */
struct kz_ratelimit *kz_ratelimit_new(void);
/** NULL-safe. */
void kz_ratelimit_free(struct kz_ratelimit *rl);

/** --rate-limit: counts one call of application `app_id` on /v1/webhook*; 0 when allowed, else
 * seconds to wait (see kz_window_hit). `limit` 0 means no limit. */
int kz_ratelimit_call(struct kz_ratelimit *rl, const char *app_id, int limit, int64_t now);

#define KZ_AUTH_FAILURES_PER_APP 10 /* bad credentials per applicationId per minute */
#define KZ_AUTH_FAILURES_PER_IP 60  /* bad credentials per client address per minute */
#define KZ_ADMIN_FAILURES_PER_IP 30 /* wrong admin tokens per client address per minute */

/** Brute force on /v1/accessToken: 0 while both `app_id` and `ip` are below their failure
 * limits this minute, else the seconds until the later of the two windows ends. `failed`
 * records one failure against both first (when allowed). */
int kz_ratelimit_auth(struct kz_ratelimit *rl, const char *app_id, const char *ip, int64_t now,
                      bool failed);
/** Guessing the admin token: as kz_ratelimit_auth, per client address only. */
int kz_ratelimit_admin(struct kz_ratelimit *rl, const char *ip, int64_t now, bool failed);

/** Takes one of `max` concurrent slots of `key` (an application's handshakes in flight): true
 * when taken (give it back with kz_ratelimit_release), false when `key` already holds `max` or
 * when no slot of the table is free for a new key (the caller refuses: try again later). */
bool kz_ratelimit_acquire(struct kz_ratelimit *rl, const char *key, int max);
/** Gives back one slot taken by kz_ratelimit_acquire(rl, key, ...). */
void kz_ratelimit_release(struct kz_ratelimit *rl, const char *key);
/** Slots `key` holds now (tests, diagnostics). */
int kz_ratelimit_held(struct kz_ratelimit *rl, const char *key);

#endif
