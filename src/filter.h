/* filter.h — a webhook's event filter (README.md "Delivery controls", docs/openapi.json
 * WebhookFilter): compiled once from its JSON text when the subscription index loads the
 * webhook, then evaluated against every published event that matches the webhook's object and
 * event type. An event that does not pass creates no delivery for that webhook.
 *
 * Syntax: a JSON object whose keys are paths into the published event (`eventType`,
 * `fromUser`, `fromUserId`, `fromUserName`, `data` and `data.a.b...`: dots separate members, a
 * numeric segment indexes an array) and whose values are either a literal (string, number,
 * true, false, null: equality, types must match, 1 != "1") or an object of operators, all of
 * which must hold: `$eq $ne $gt $gte $lt $lte` (a literal; ordering needs a number or a string
 * and a value of the same type), `$in $nin` (an array of literals), `$exists` (true/false).
 * `$ne` and `$nin` hold when the path is absent. Numbers compare by value, exactly, whatever
 * their size or spelling (1 = 1.0 = 1e0; 1e400 > 1e399; 100000000000000000001 >
 * 100000000000000000000); strings compare bytewise after unescaping.
 * Limits: KZ_FILTER_MAX bytes of text, KZ_FILTER_CONDS_MAX conditions (one per literal or
 * operator), paths of at most KZ_FILTER_PATH_MAX bytes, number exponents below 10^15.
 *
 * Pure: no I/O, no globals. A compiled filter is immutable; any number of threads may evaluate
 * it at once.
 */
#ifndef KZ_FILTER_H
#define KZ_FILTER_H

#include "kz.h"

#define KZ_FILTER_CONDS_MAX 32
#define KZ_FILTER_PATH_MAX 256

struct kz_filter;

/** What a filter sees of a published event. NULL strings are absent fields. `data_json` is the
 * event's `data` as stored (valid JSON text, numbers as published); NULL means no data. */
struct kz_filter_event {
    const char *event_type;
    const char *from_user, *from_user_id, *from_user_name;
    const char *data_json;
    size_t data_len;
};

/**
 * Compiles the `len` bytes of JSON text at `text` (need not be NUL-terminated). On success
 * stores a new filter in *out (caller frees with kz_filter_free), or NULL when the filter is
 * the empty object (every event passes), and returns KZ_OK. Otherwise returns KZ_ERR_INVALID,
 * leaves *out NULL and, when `errlen` > 0, writes a NUL-terminated message into `err` that
 * names the bad condition's path (e.g. `data.amount: $gt needs a number or a string`).
 */
enum kz_err kz_filter_compile(const char *text, size_t len, struct kz_filter **out, char *err,
                              size_t errlen);

/** Frees a compiled filter; NULL-safe. */
void kz_filter_free(struct kz_filter *f);

/** True when `ev` passes every condition of `f` (always, when `f` is NULL). Malformed
 * `data_json` is read as far as it is valid; a path it does not reach is absent. */
bool kz_filter_match(const struct kz_filter *f, const struct kz_filter_event *ev);

/** Number of conditions of `f` (0 for NULL). */
size_t kz_filter_conditions(const struct kz_filter *f);

#endif
