/* envelope.c — delivery body builder and the traceparent check (see envelope.h). */
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
    /* Rows stored before sourceGroupId existed have none: the default is the groupId. */
    const char *source = ev->source_group_id ? ev->source_group_id : ev->group_id;
    enum kz_err r = field(out, "subscriptionId", wh->id, true);

    r = r ? r : field(out, "objectId", wh->object_id, false);
    r = r ? r : field(out, "objectType", kz_objtype_name(wh->object_type), false);
    r = r ? r : field(out, "eventType", kz_evtype_name(ev->event_type), false);
    r = r ? r : field(out, "eventId", ev->event_id, false);
    r = r ? r : kz_buf_puts(out, ",\"data\":");
    r = r ? r : kz_buf_puts(out, ev->data_json ? ev->data_json : "{}");
    if (wh->callback_context)
        r = r ? r : field(out, "context", wh->callback_context, false);
    r = r ? r : field(out, "fromUser", ev->from_user, false);
    r = r ? r : field(out, "fromUserId", ev->from_user_id, false);
    r = r ? r
          : kz_buf_puts(out, ev->is_bot ? ",\"isBotfromUser\":true" : ",\"isBotfromUser\":false");
    r = r ? r : field(out, "fromUserName", ev->from_user_name, false);
    r = r ? r : field(out, "fromUserProfilePic", ev->from_user_pic, false);
    if (ev->group_id)
        r = r ? r : field(out, "groupId", ev->group_id, false);
    if (source)
        r = r ? r : field(out, "sourceGroupId", source, false);
    r = r ? r : kz_buf_puts(out, "}");
    return r;
}

/* ==== traceparent (W3C Trace Context, "traceparent Header") ==== */

static bool lower_hex(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static bool all_zero(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (s[i] != '0')
            return false;
    }
    return true;
}

bool kz_traceparent_valid(const char *s, size_t len)
{
    size_t i;

    /* version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 */
    if (!s || len < 55 || len > KZ_TRACEPARENT_MAX)
        return false;
    if (!lower_hex(s, 2) || !memcmp(s, "ff", 2) || s[2] != '-')
        return false;
    if (!lower_hex(s + 3, 32) || all_zero(s + 3, 32) || s[35] != '-')
        return false;
    if (!lower_hex(s + 36, 16) || all_zero(s + 36, 16) || s[52] != '-')
        return false;
    if (!lower_hex(s + 53, 2))
        return false;
    if (!memcmp(s, "00", 2))
        return len == 55;
    /* a later version may add fields: they follow a dash after the flags */
    if (len > 55 && s[55] != '-')
        return false;
    for (i = 55; i < len; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    }
    return true;
}
