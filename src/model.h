/* model.h — the domain vocabulary shared by api, store, dispatch: object types, event types,
 * delivery states, and the plain structs that travel between them. Pure declarations plus a few
 * name<->enum helpers in model.c. */
#ifndef KZ_MODEL_H
#define KZ_MODEL_H

#include "kz.h"

enum kz_objtype { KZ_OBJ_GROUP = 0, KZ_OBJ_ACTION = 1, KZ_OBJ_ACTIONPACKAGE = 2, KZ_OBJ__COUNT };

/* The 17 event types of the README endpoint table, in contract order; bit i of an event mask is
 * type i. */
enum kz_evtype {
    KZ_EV_ACTIONCREATED = 0,
    KZ_EV_ACTIONRESPONSE,
    KZ_EV_SURVEYCREATED,
    KZ_EV_SURVEYRESPONSE,
    KZ_EV_JOBCREATED,
    KZ_EV_JOBRESPONSE,
    KZ_EV_TEXTMESSAGECREATED,
    KZ_EV_ATTACHMENTCREATED,
    KZ_EV_ANNOUNCEMENT,
    KZ_EV_MEMBERADDED,
    KZ_EV_MEMBERREMOVED,
    KZ_EV_GROUPADDED,
    KZ_EV_GROUPREMOVED,
    KZ_EV_POLLCREATED,
    KZ_EV_POLLRESPONSE,
    KZ_EV_LETSMEETCREATED,
    KZ_EV_LETSMEETRESPONSE,
    KZ_EV__COUNT
};

/* Stored delivery states. The API shows INFLIGHT as "pending". */
enum kz_dstate {
    KZ_D_PENDING = 0,
    KZ_D_INFLIGHT = 1,
    KZ_D_SUCCEEDED = 2,
    KZ_D_DEAD = 3,
    KZ_D_SKIPPED = 4
};

/** Exact-case name lookup ("Group"); -1 when unknown. The contract names are case-sensitive
 * values, but we accept any ASCII case, as the original .NET server did. */
int kz_objtype_from_name(const char *s);
const char *kz_objtype_name(enum kz_objtype t);
int kz_evtype_from_name(const char *s);
const char *kz_evtype_name(enum kz_evtype t);
/** "pending" | "succeeded" | "dead" | "skipped"; -1 when unknown. "pending" maps to KZ_D_PENDING
 * and means pending-or-inflight in queries. */
int kz_dstate_from_name(const char *s);
const char *kz_dstate_name(enum kz_dstate s);

#define KZ_ID_MAX 256 /* objectId, groupId, actionId, eventId... */
#define KZ_URL_MAX 2048
#define KZ_TOKEN_MAX 1024   /* callBackToken */
#define KZ_CONTEXT_MAX 4096 /* callBackContext */
#define KZ_NAME_MAX 200     /* application name */
#define KZ_BODY_MAX (1024 * 1024)
#define KZ_RESPONSE_KEEP 4096 /* bytes of a receiver's answer kept in the delivery log */
#define KZ_HEADERS_MAX 20     /* custom headers per webhook */
#define KZ_HEADER_NAME_MAX 64
#define KZ_HEADER_VALUE_MAX 1024
/* headers_json at most: 20 entries of escaped name and value ("\u00XX" is 6 bytes a byte) */
#define KZ_HEADERS_JSON_MAX                                                                        \
    (2 + KZ_HEADERS_MAX * (6 + KZ_HEADER_NAME_MAX + 6 * KZ_HEADER_VALUE_MAX))
#define KZ_FILTER_MAX 4096       /* bytes of a webhook's filter as written */
#define KZ_RATE_LIMIT_MAX 100000 /* rateLimit at most (attempts per second) */
#define KZ_TRACEPARENT_MAX 256   /* a traceparent header kept with an event (W3C: 55 for 00) */

/** An application (Kaizala connector). Strings are owned by the struct; kz_app_cleanup frees. */
struct kz_app {
    char id[40];
    char *name;
    char *object_ids_json; /* JSON array text, e.g. ["g1","*"] */
    char secret_hash[65];  /* sha256 hex of the application secret */
    char refresh_hash[65]; /* sha256 hex of the refresh token */
    int64_t created_at;
};
void kz_app_cleanup(struct kz_app *a);

/** A webhook subscription. Strings owned by the struct (NULL when unset); kz_webhook_cleanup frees.
 */
struct kz_webhook {
    char id[40];
    char app_id[40];
    enum kz_objtype object_type;
    char *object_id;
    uint32_t event_mask;
    char *callback_url;
    char *callback_token;   /* NULL when unset */
    char *callback_context; /* NULL when unset */
    char *signing_secret;   /* "whsec_..." */
    int64_t ts_ms;          /* creation time */
    int64_t validity_ms;    /* expiry */
    bool active;
    /* Delivery controls (README.md "Delivery controls"); NULL when unset. */
    char *headers_json;   /* extra request headers: compact JSON object of strings */
    char *filter_json;    /* event filter: compact JSON object as written (numbers verbatim) */
    char *prev_secret;    /* the secret before the last rotation, during its overlap */
    int64_t prev_expires; /* epoch ms until which prev_secret also signs; 0 when none */
    int rate_limit;       /* attempts started per second at most, all nodes; 0: unlimited */
    bool ordered;         /* deliveries attempted one at a time, in publish order */
};
void kz_webhook_cleanup(struct kz_webhook *w);
/** Deep copy; dst must be uninitialised or cleaned. */
void kz_webhook_copy(struct kz_webhook *dst, const struct kz_webhook *src);

/** A published event. Strings owned (NULL when absent). data_json is compact JSON text. */
struct kz_event {
    int64_t seq; /* store-assigned */
    char *event_id;
    enum kz_evtype event_type;
    char *group_id, *action_id, *action_package_id;
    char *from_user, *from_user_id, *from_user_name, *from_user_pic;
    char *data_json;
    int64_t created_at;
    bool is_bot;           /* isBotfromUser */
    char *source_group_id; /* sourceGroupId; the API sets it to group_id when not given */
    char *traceparent;     /* W3C traceparent of the publish request, sent with every attempt;
                              NULL when none (printable ASCII, <= KZ_TRACEPARENT_MAX bytes) */
};
void kz_event_cleanup(struct kz_event *e);
/** Deep copy; dst must be uninitialised or cleaned. */
void kz_event_copy(struct kz_event *dst, const struct kz_event *src);
/** Moves src's fields into dst (uninitialised or cleaned) without copying them, except the
 * event id, which both keep (src's answer still names the event); src is left with only it. */
void kz_event_take(struct kz_event *dst, struct kz_event *src);

/** One row of the delivery log. */
struct kz_delivery {
    int64_t id;
    char webhook_id[40];
    int64_t event_seq;
    char event_id[KZ_ID_MAX + 1];
    enum kz_evtype event_type;
    enum kz_dstate state;
    int attempts;
    int last_status;         /* 0 when none */
    char *last_error;        /* NULL when none; owned */
    char *last_response;     /* NULL when none; owned; <= KZ_RESPONSE_KEEP bytes */
    int64_t next_attempt_at; /* epoch ms; meaningful for pending */
    int64_t created_at;
    int64_t updated_at;
};
void kz_delivery_cleanup(struct kz_delivery *d);

#endif
