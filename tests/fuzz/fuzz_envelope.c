/* fuzz_envelope.c — the delivery body (src/envelope.h) built from an event and a webhook.
 *
 * Input: NUL-separated pieces: 4 control bytes (object type, plus bit 7: isBotfromUser and
 * bit 6: a sourceGroupId equal to the fromUserId piece; event type; which optional fields are
 * set; buffer limit), then webhook id, objectId, eventId, groupId, callBackContext, fromUser,
 * fromUserId, fromUserName, fromUserProfilePic, and last the `data` JSON text (may contain NULs).
 * Strings reach the envelope in production only from JSON strings (valid UTF-8, no NUL), so a
 * piece that is not valid UTF-8 is left unset; `data` is stored as kzhook stores it: the compact
 * dump of the parsed value (any JSON value), or unset when the text does not parse.
 * Checked: the output is one valid JSON object (jansson, strict) whose members are exactly the
 * contract's fields in the contract's order with the values given; `data` appears byte for byte
 * as stored (spliced verbatim) and parses to the same value; existing bytes in the buffer are
 * kept; with a limit, KZ_ERR_TOOBIG exactly when the envelope would not fit, and otherwise the
 * same bytes; no kz allocation is left behind. */
#include "fuzz_common.h"

#include "alloc.h"
#include "envelope.h"
#include "json.h"

#include <inttypes.h>

enum {
    P_CTRL,
    P_WHID,
    P_OBJID,
    P_EVID,
    P_GROUP,
    P_CTX,
    P_FU,
    P_FUID,
    P_FUNAME,
    P_FUPIC,
    P_DATA,
    P__COUNT
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_set_alloc_funcs(kz_malloc, kz_free);
    return 0;
}

/* A kz_strndup copy when the piece is valid UTF-8 (jansson's check), else NULL. */
static char *utf8_or_null(const uint8_t *p, size_t n)
{
    json_t *s = json_stringn((const char *)p, n);
    char *out;

    if (!s)
        return NULL;
    out = kz_strndup((const char *)p, n);
    json_decref(s);
    return out;
}

static void expect_str(json_t *env, const char *key, const char *want)
{
    json_t *v = json_object_get(env, key);

    FUZZ_CHECK(json_is_string(v), "member %s missing or not a string", key);
    FUZZ_CHECK(json_string_length(v) == strlen(want ? want : "") &&
                   !memcmp(json_string_value(v), want ? want : "", json_string_length(v)),
               "member %s is \"%.80s\", want \"%.80s\"", key, json_string_value(v),
               want ? want : "");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size, *piece[P__COUNT];
    size_t len[P__COUNT], i;
    struct kz_webhook wh;
    struct kz_event ev;
    struct kz_buf out, tight;
    uint8_t ctrl[4] = {0, 0, 0xff, 0};
    int64_t live = kz_alloc_live();
    json_t *env, *dv;
    json_error_t jerr;
    enum kz_err e;
    const char *keys[16];
    const char *source;
    size_t nkeys = 0;
    void *it;

    memset(piece, 0, sizeof(piece));
    memset(len, 0, sizeof(len));
    for (i = 0; i < P_DATA && p < end; i++)
        piece[i] = fuzz_next_piece(&p, end, &len[i]);
    piece[P_DATA] = p;
    len[P_DATA] = (size_t)(end - p);
    if (piece[P_CTRL])
        memcpy(ctrl, piece[P_CTRL], len[P_CTRL] < 4 ? len[P_CTRL] : 4);

    memset(&wh, 0, sizeof(wh));
    memset(&ev, 0, sizeof(ev));
    wh.object_type = (enum kz_objtype)(ctrl[0] % KZ_OBJ__COUNT);
    ev.event_type = (enum kz_evtype)(ctrl[1] % KZ_EV__COUNT);
    if (piece[P_WHID]) {
        char *s = utf8_or_null(piece[P_WHID], len[P_WHID] < 39 ? len[P_WHID] : 39);

        if (s)
            memcpy(wh.id, s, strlen(s) + 1);
        kz_free(s);
    }
#define OPT(bit, field, idx)                                                                       \
    if ((ctrl[2] & (1u << (bit))) && piece[idx])                                                   \
    field = utf8_or_null(piece[idx], len[idx])
    OPT(0, wh.object_id, P_OBJID);
    OPT(1, ev.event_id, P_EVID);
    OPT(2, ev.group_id, P_GROUP);
    OPT(3, wh.callback_context, P_CTX);
    OPT(4, ev.from_user, P_FU);
    OPT(5, ev.from_user_id, P_FUID);
    OPT(6, ev.from_user_name, P_FUNAME);
    OPT(7, ev.from_user_pic, P_FUPIC);
#undef OPT
    ev.is_bot = (ctrl[0] & 0x80) != 0;
    if ((ctrl[0] & 0x40) && piece[P_FUID])
        ev.source_group_id = utf8_or_null(piece[P_FUID], len[P_FUID]);
    source = ev.source_group_id ? ev.source_group_id : ev.group_id;
    if (len[P_DATA]) {
        json_t *d = json_loadb((const char *)piece[P_DATA], len[P_DATA],
                               JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);

        if (d) {
            struct kz_buf dump;

            kz_buf_init(&dump, KZ_BODY_MAX);
            if (!kz_json_dump(d, &dump))
                ev.data_json = kz_strndup(kz_buf_cstr(&dump), dump.len);
            kz_buf_cleanup(&dump);
            json_decref(d);
        }
    }

    /* Unbounded, after a prefix that must survive. */
    kz_buf_init(&out, 64 * 1024 * 1024);
    kz_buf_puts(&out, "PFX");
    e = kz_envelope_build(&wh, &ev, &out);
    FUZZ_CHECK(!e, "kz_envelope_build failed: %d", e);
    FUZZ_CHECK(!memcmp(out.data, "PFX", 3), "%s", "the buffer's earlier bytes changed");

    env = json_loadb(out.data + 3, out.len - 3, JSON_REJECT_DUPLICATES, &jerr);
    FUZZ_CHECK(json_is_object(env), "envelope is not a JSON object: %s (col %d) in %.300s",
               jerr.text, jerr.column, out.data + 3);
    keys[nkeys++] = "subscriptionId";
    keys[nkeys++] = "objectId";
    keys[nkeys++] = "objectType";
    keys[nkeys++] = "eventType";
    keys[nkeys++] = "eventId";
    keys[nkeys++] = "data";
    if (wh.callback_context)
        keys[nkeys++] = "context";
    keys[nkeys++] = "fromUser";
    keys[nkeys++] = "fromUserId";
    keys[nkeys++] = "isBotfromUser";
    keys[nkeys++] = "fromUserName";
    keys[nkeys++] = "fromUserProfilePic";
    if (ev.group_id)
        keys[nkeys++] = "groupId";
    if (source)
        keys[nkeys++] = "sourceGroupId";
    for (i = 0, it = json_object_iter(env); it; it = json_object_iter_next(env, it), i++)
        FUZZ_CHECK(i < nkeys && !strcmp(json_object_iter_key(it), keys[i]),
                   "member %zu is %s, want %s", i, json_object_iter_key(it),
                   i < nkeys ? keys[i] : "(none)");
    FUZZ_CHECK(i == nkeys, "%zu members, want %zu", i, nkeys);
    expect_str(env, "subscriptionId", wh.id);
    expect_str(env, "objectId", wh.object_id);
    expect_str(env, "objectType", kz_objtype_name(wh.object_type));
    expect_str(env, "eventType", kz_evtype_name(ev.event_type));
    expect_str(env, "eventId", ev.event_id);
    if (ev.group_id)
        expect_str(env, "groupId", ev.group_id);
    if (wh.callback_context)
        expect_str(env, "context", wh.callback_context);
    expect_str(env, "fromUser", ev.from_user);
    expect_str(env, "fromUserId", ev.from_user_id);
    expect_str(env, "fromUserName", ev.from_user_name);
    expect_str(env, "fromUserProfilePic", ev.from_user_pic);
    if (source)
        expect_str(env, "sourceGroupId", source);
    FUZZ_CHECK(json_is_boolean(json_object_get(env, "isBotfromUser")) &&
                   json_is_true(json_object_get(env, "isBotfromUser")) == ev.is_bot,
               "%s", "isBotfromUser is not the event's");

    /* data: spliced verbatim, and the same value. */
    {
        const char *stored = ev.data_json ? ev.data_json : "{}";
        const char *after = wh.callback_context ? ",\"context\":" : ",\"fromUser\":";
        size_t slen = strlen(stored);
        const char *at = strstr(out.data + 3, ",\"data\":");
        json_t *want = json_loads(stored, JSON_DECODE_ANY, NULL);

        FUZZ_CHECK(at && !strncmp(at + 8, stored, slen) &&
                       !strncmp(at + 8 + slen, after, strlen(after)),
                   "data not spliced verbatim: %.300s", out.data + 3);
        dv = json_object_get(env, "data");
        FUZZ_CHECK(want && json_equal(dv, want), "%s", "data parses to a different value");
        json_decref(want);
    }
    json_decref(env);

    /* Bounded: TOOBIG exactly when it does not fit, else the same bytes. */
    {
        size_t full = out.len - 3;
        size_t max = (size_t)ctrl[3] * (full / 255 + 1);

        kz_buf_init(&tight, max);
        e = kz_envelope_build(&wh, &ev, &tight);
        if (full <= max)
            FUZZ_CHECK(!e && tight.len == full && !memcmp(tight.data, out.data + 3, full),
                       "envelope of %zu bytes within %zu: e=%d", full, max, e);
        else
            FUZZ_CHECK(e == KZ_ERR_TOOBIG, "envelope of %zu bytes over %zu: e=%d", full, max, e);
        kz_buf_cleanup(&tight);
    }

    kz_buf_cleanup(&out);
    kz_webhook_cleanup(&wh);
    kz_event_cleanup(&ev);
    FUZZ_CHECK(kz_alloc_live() == live, "kz_alloc_live %" PRId64 " -> %" PRId64, live,
               kz_alloc_live());
    return 0;
}
