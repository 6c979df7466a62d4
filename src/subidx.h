/* subidx.h — the in-memory subscription index: (objectType, objectId) -> webhooks, so that
 * publishing never scans the webhooks table (DESIGN "Subscription index").
 *
 * Consistency: the index is rebuilt from the store at start (kz_subidx_load) and whenever the
 * store's "webhooks_version" moves past the version the index has seen (changes by the CLI or
 * another node); changes made by this process are applied right after their commit with
 * put/remove/set_active and record the version that commit produced.
 * Threads: any thread; a rwlock inside (matching takes the read lock only). */
#ifndef KZ_SUBIDX_H
#define KZ_SUBIDX_H

#include "model.h"

struct kz_subidx;
struct kz_store;

/** One matched webhook. */
struct kz_match {
    char webhook_id[40];
    bool active; /* active and within validity at match time: deliver; else record as skipped */
    bool gated;  /* rateLimit or ordered: never handed off, the claim's gate hands it out */
};

struct kz_subidx *kz_subidx_new(void);
void kz_subidx_free(struct kz_subidx *idx);
/** Inserts or replaces (by id) the entry of `w`. `version` is the store version the change
 * committed at (0: unknown, leaves the index version as is). */
void kz_subidx_put(struct kz_subidx *idx, const struct kz_webhook *w, int64_t version);
void kz_subidx_remove(struct kz_subidx *idx, const char *webhook_id, int64_t version);
void kz_subidx_remove_app(struct kz_subidx *idx, const char *app_id, int64_t version);
void kz_subidx_set_active(struct kz_subidx *idx, const char *webhook_id, bool active,
                          int64_t version);
/** Rebuilds from the store when its webhooks_version differs from ours (or `force`). */
enum kz_err kz_subidx_sync(struct kz_subidx *idx, struct kz_store *st, bool force);
/** Appends to *out (kz_realloc'd, *n and *cap updated) every webhook matching the published
 * event `ev` at time `now`: its type and one of its groupId/actionId/actionPackageId (NULL:
 * absent), and the webhook's filter (compiled when the webhook entered the index; see
 * filter.h), evaluated on the event as published. Returns the number appended. */
size_t kz_subidx_match(struct kz_subidx *idx, const struct kz_event *ev, int64_t now,
                       struct kz_match **out, size_t *n, size_t *cap);
/** Number of webhooks indexed, and how many are inactive. */
void kz_subidx_counts(struct kz_subidx *idx, size_t *total, size_t *inactive);

#endif
