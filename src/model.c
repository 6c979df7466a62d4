/* model.c — name tables for the domain enums, and cleanup of the model structs. */
#include "model.h"
#include "alloc.h"

#include <string.h>
#include <strings.h>

static const char *const objtype_names[KZ_OBJ__COUNT] = {"Group", "Action", "ActionPackage"};

static const char *const evtype_names[KZ_EV__COUNT] = {
    "ActionCreated",   "ActionResponse",     "SurveyCreated",     "SurveyResponse", "JobCreated",
    "JobResponse",     "TextMessageCreated", "AttachmentCreated", "Announcement",   "MemberAdded",
    "MemberRemoved",   "GroupAdded",         "GroupRemoved",      "PollCreated",    "PollResponse",
    "LetsMeetCreated", "LetsMeetResponse",
};

static const char *const dstate_names[] = {"pending", "pending", "succeeded", "dead", "skipped"};

static int lookup(const char *const *names, int n, const char *s)
{
    int i;

    if (!s)
        return -1;
    for (i = 0; i < n; i++) {
        if (!strcasecmp(names[i], s))
            return i;
    }
    return -1;
}

int kz_objtype_from_name(const char *s)
{
    return lookup(objtype_names, KZ_OBJ__COUNT, s);
}

const char *kz_objtype_name(enum kz_objtype t)
{
    return (unsigned)t < KZ_OBJ__COUNT ? objtype_names[t] : "?";
}

int kz_evtype_from_name(const char *s)
{
    return lookup(evtype_names, KZ_EV__COUNT, s);
}

const char *kz_evtype_name(enum kz_evtype t)
{
    return (unsigned)t < KZ_EV__COUNT ? evtype_names[t] : "?";
}

int kz_dstate_from_name(const char *s)
{
    if (!s)
        return -1;
    if (!strcmp(s, "pending"))
        return KZ_D_PENDING;
    if (!strcmp(s, "succeeded"))
        return KZ_D_SUCCEEDED;
    if (!strcmp(s, "dead"))
        return KZ_D_DEAD;
    if (!strcmp(s, "skipped"))
        return KZ_D_SKIPPED;
    return -1;
}

const char *kz_dstate_name(enum kz_dstate s)
{
    return (unsigned)s < KZ_ARRAY_LEN(dstate_names) ? dstate_names[s] : "?";
}

void kz_app_cleanup(struct kz_app *a)
{
    kz_free(a->name);
    kz_free(a->object_ids_json);
    a->name = NULL;
    a->object_ids_json = NULL;
}

void kz_webhook_cleanup(struct kz_webhook *w)
{
    kz_free(w->object_id);
    kz_free(w->callback_url);
    kz_free(w->callback_token);
    kz_free(w->callback_context);
    kz_free(w->signing_secret);
    kz_free(w->headers_json);
    kz_free(w->filter_json);
    kz_free(w->prev_secret);
    w->object_id = w->callback_url = w->callback_token = NULL;
    w->callback_context = w->signing_secret = NULL;
    w->headers_json = w->filter_json = w->prev_secret = NULL;
}

void kz_webhook_copy(struct kz_webhook *dst, const struct kz_webhook *src)
{
    *dst = *src;
    dst->object_id = kz_strdup(src->object_id);
    dst->callback_url = kz_strdup(src->callback_url);
    dst->callback_token = kz_strdup(src->callback_token);
    dst->callback_context = kz_strdup(src->callback_context);
    dst->signing_secret = kz_strdup(src->signing_secret);
    dst->headers_json = kz_strdup(src->headers_json);
    dst->filter_json = kz_strdup(src->filter_json);
    dst->prev_secret = kz_strdup(src->prev_secret);
}

void kz_event_copy(struct kz_event *dst, const struct kz_event *src)
{
    *dst = *src;
    dst->event_id = kz_strdup(src->event_id);
    dst->group_id = kz_strdup(src->group_id);
    dst->action_id = kz_strdup(src->action_id);
    dst->action_package_id = kz_strdup(src->action_package_id);
    dst->from_user = kz_strdup(src->from_user);
    dst->from_user_id = kz_strdup(src->from_user_id);
    dst->from_user_name = kz_strdup(src->from_user_name);
    dst->from_user_pic = kz_strdup(src->from_user_pic);
    dst->data_json = kz_strdup(src->data_json);
    dst->source_group_id = kz_strdup(src->source_group_id);
    dst->traceparent = kz_strdup(src->traceparent);
}

void kz_event_take(struct kz_event *dst, struct kz_event *src)
{
    char *id = src->event_id;

    *dst = *src;
    dst->event_id = kz_strdup(id);
    memset(src, 0, sizeof(*src));
    src->event_id = id;
}

void kz_event_cleanup(struct kz_event *e)
{
    kz_free(e->event_id);
    kz_free(e->group_id);
    kz_free(e->action_id);
    kz_free(e->action_package_id);
    kz_free(e->from_user);
    kz_free(e->from_user_id);
    kz_free(e->from_user_name);
    kz_free(e->from_user_pic);
    kz_free(e->data_json);
    kz_free(e->source_group_id);
    kz_free(e->traceparent);
    memset(e, 0, sizeof(*e));
}

void kz_delivery_cleanup(struct kz_delivery *d)
{
    kz_free(d->last_error);
    kz_free(d->last_response);
    d->last_error = NULL;
    d->last_response = NULL;
}
