/* envelope.c — delivery body builder. */
#include "envelope.h"

#include <string.h>

static enum kz_err field(struct kz_buf *b, const char *name, const char *v, bool first)
{
    enum kz_err r = kz_buf_puts(b, first ? "{\"" : ",\"");

    r = r ? r : kz_buf_puts(b, name);
    r = r ? r : kz_buf_puts(b, "\":");
    r = r ? r : kz_buf_json_str(b, v ? v : "", v ? strlen(v) : 0);
    return r;
}

enum kz_err kz_envelope_build(const struct kz_webhook *wh, const struct kz_event *ev,
                              struct kz_buf *out)
{
    enum kz_err r = field(out, "subscriptionId", wh->id, true);

    r = r ? r : field(out, "objectId", wh->object_id, false);
    r = r ? r : field(out, "objectType", kz_objtype_name(wh->object_type), false);
    r = r ? r : field(out, "eventType", kz_evtype_name(ev->event_type), false);
    r = r ? r : field(out, "eventId", ev->event_id, false);
    if (ev->group_id)
        r = r ? r : field(out, "groupId", ev->group_id, false);
    r = r ? r : kz_buf_puts(out, ",\"data\":");
    r = r ? r : kz_buf_puts(out, ev->data_json ? ev->data_json : "{}");
    if (wh->callback_context)
        r = r ? r : field(out, "context", wh->callback_context, false);
    r = r ? r : field(out, "fromUser", ev->from_user, false);
    r = r ? r : field(out, "fromUserId", ev->from_user_id, false);
    r = r ? r : field(out, "fromUserName", ev->from_user_name, false);
    r = r ? r : field(out, "fromUserProfilePic", ev->from_user_pic, false);
    r = r ? r : kz_buf_puts(out, "}");
    return r;
}
