/* Unit tests for envelope.c: byte-exact bodies against fixtures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "alloc.h"
#include "envelope.h"

static void fill(struct kz_webhook *w, struct kz_event *e)
{
    memset(w, 0, sizeof(*w));
    memset(e, 0, sizeof(*e));
    strcpy(w->id, "0b6c1a5e-1111-4222-8333-444455556666");
    w->object_type = KZ_OBJ_GROUP;
    w->object_id = "g1";
    e->event_type = KZ_EV_SURVEYRESPONSE;
    e->event_id = "ev-1";
    e->group_id = "g1";
    e->data_json = "{\"answer\":[\"A\"],\"n\":4.0}";
}

static void full_envelope(void **state)
{
    struct kz_webhook w;
    struct kz_event e;
    struct kz_buf b;

    (void)state;
    fill(&w, &e);
    w.callback_context = "tenant-42";
    e.from_user = "+15550100";
    e.from_user_id = "u1";
    e.from_user_name = "A \"User\"";
    e.from_user_pic = "";
    kz_buf_init(&b, 4096);
    assert_int_equal(kz_envelope_build(&w, &e, &b), KZ_OK);
    assert_string_equal(
        kz_buf_cstr(&b),
        "{\"subscriptionId\":\"0b6c1a5e-1111-4222-8333-444455556666\","
        "\"objectId\":\"g1\",\"objectType\":\"Group\",\"eventType\":\"SurveyResponse\","
        "\"eventId\":\"ev-1\",\"data\":{\"answer\":[\"A\"],\"n\":4.0},"
        "\"context\":\"tenant-42\",\"fromUser\":\"+15550100\",\"fromUserId\":\"u1\","
        "\"isBotfromUser\":false,\"fromUserName\":\"A \\\"User\\\"\",\"fromUserProfilePic\":\"\","
        "\"groupId\":\"g1\",\"sourceGroupId\":\"g1\"}");
    kz_buf_cleanup(&b);
}

static void minimal_envelope_omits_context_and_group(void **state)
{
    struct kz_webhook w;
    struct kz_event e;
    struct kz_buf b;

    (void)state;
    fill(&w, &e);
    w.object_type = KZ_OBJ_ACTIONPACKAGE;
    w.object_id = "com.x.form";
    e.group_id = NULL;
    e.event_type = KZ_EV_ACTIONRESPONSE;
    e.data_json = "{}";
    kz_buf_init(&b, 4096);
    assert_int_equal(kz_envelope_build(&w, &e, &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b),
                        "{\"subscriptionId\":\"0b6c1a5e-1111-4222-8333-444455556666\","
                        "\"objectId\":\"com.x.form\",\"objectType\":\"ActionPackage\","
                        "\"eventType\":\"ActionResponse\",\"eventId\":\"ev-1\",\"data\":{},"
                        "\"fromUser\":\"\",\"fromUserId\":\"\",\"isBotfromUser\":false,"
                        "\"fromUserName\":\"\",\"fromUserProfilePic\":\"\"}");
    kz_buf_cleanup(&b);
}

static void control_characters_are_escaped(void **state)
{
    struct kz_webhook w;
    struct kz_event e;
    struct kz_buf b;

    (void)state;
    fill(&w, &e);
    w.callback_context = "a\r\nb\x01";
    kz_buf_init(&b, 4096);
    assert_int_equal(kz_envelope_build(&w, &e, &b), KZ_OK);
    assert_non_null(strstr(kz_buf_cstr(&b), "\"context\":\"a\\r\\nb\\u0001\""));
    assert_null(strchr(kz_buf_cstr(&b), '\r'));
    kz_buf_cleanup(&b);
}

static void same_input_same_bytes(void **state)
{
    struct kz_webhook w;
    struct kz_event e;
    struct kz_buf a, b;

    (void)state;
    fill(&w, &e);
    kz_buf_init(&a, 4096);
    kz_buf_init(&b, 4096);
    assert_int_equal(kz_envelope_build(&w, &e, &a), KZ_OK);
    assert_int_equal(kz_envelope_build(&w, &e, &b), KZ_OK);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    kz_buf_cleanup(&a);
    kz_buf_cleanup(&b);
}

static void too_big_is_refused(void **state)
{
    struct kz_webhook w;
    struct kz_event e;
    struct kz_buf b;

    (void)state;
    fill(&w, &e);
    kz_buf_init(&b, 64);
    assert_int_equal(kz_envelope_build(&w, &e, &b), KZ_ERR_TOOBIG);
    kz_buf_cleanup(&b);
    assert_int_equal(kz_alloc_live(), 0);
}

/* The order of real Kaizala callbacks: a bot, a sub-group's event (sourceGroupId differs), and
 * an event with only a sourceGroupId. */
static void kaizala_fields_in_order(void **state)
{
    struct kz_webhook w;
    struct kz_event e;
    struct kz_buf b;

    (void)state;
    fill(&w, &e);
    e.is_bot = true;
    e.source_group_id = "sub-1";
    kz_buf_init(&b, 4096);
    assert_int_equal(kz_envelope_build(&w, &e, &b), KZ_OK);
    assert_string_equal(
        kz_buf_cstr(&b),
        "{\"subscriptionId\":\"0b6c1a5e-1111-4222-8333-444455556666\","
        "\"objectId\":\"g1\",\"objectType\":\"Group\","
        "\"eventType\":\"SurveyResponse\",\"eventId\":\"ev-1\","
        "\"data\":{\"answer\":[\"A\"],\"n\":4.0},\"fromUser\":\"\","
        "\"fromUserId\":\"\",\"isBotfromUser\":true,\"fromUserName\":\"\","
        "\"fromUserProfilePic\":\"\",\"groupId\":\"g1\",\"sourceGroupId\":\"sub-1\"}");
    kz_buf_reset(&b);
    e.group_id = NULL;
    e.is_bot = false;
    assert_int_equal(kz_envelope_build(&w, &e, &b), KZ_OK);
    assert_non_null(strstr(kz_buf_cstr(&b), "\"isBotfromUser\":false,\"fromUserName\":\"\","
                                            "\"fromUserProfilePic\":\"\",\"sourceGroupId\":"
                                            "\"sub-1\"}"));
    assert_null(strstr(kz_buf_cstr(&b), "\"groupId\""));
    kz_buf_cleanup(&b);
}

static void tp_ok(const char *s)
{
    assert_true(kz_traceparent_valid(s, strlen(s)));
}

static void tp_bad(const char *s)
{
    assert_false(kz_traceparent_valid(s, strlen(s)));
}

/* W3C Trace Context, traceparent: version 00 exactly; a later version parsed forward-compatibly;
 * everything else dropped. */
static void traceparent_rules(void **state)
{
    char buf[KZ_TRACEPARENT_MAX + 2];

    (void)state;
    tp_ok("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    tp_ok("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
    tp_ok("00-00000000000000000000000000000001-0000000000000001-ff");
    /* a future version: the same first 55 bytes, then nothing or a dash and more */
    tp_ok("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    tp_ok("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-will-be-like");
    tp_bad("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.what");
    tp_bad("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-\x01");
    /* version 00 with anything after the flags */
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-");
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra");
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ");
    /* version ff is forbidden; versions are lower-case hex */
    tp_bad("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    tp_bad("0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    tp_bad("0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    /* ids: lower-case hex, not all zeros; flags: lower-case hex */
    tp_bad("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01");
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01");
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A");
    tp_bad("00-00000000000000000000000000000000-b7ad6b7169203331-01");
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01");
    tp_bad("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01");
    /* shape: lengths and dashes */
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1");
    tp_bad("00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01");
    tp_bad("00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    tp_bad("00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01");
    tp_bad("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331_01");
    tp_bad(" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    tp_bad("");
    assert_false(kz_traceparent_valid(NULL, 0));
    /* embedded NUL: the length counts */
    assert_false(
        kz_traceparent_valid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\0", 56));
    /* a future version up to KZ_TRACEPARENT_MAX bytes */
    memset(buf, 'x', sizeof(buf));
    memcpy(buf, "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", 56);
    assert_true(kz_traceparent_valid(buf, KZ_TRACEPARENT_MAX));
    assert_false(kz_traceparent_valid(buf, KZ_TRACEPARENT_MAX + 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_envelope),
        cmocka_unit_test(minimal_envelope_omits_context_and_group),
        cmocka_unit_test(control_characters_are_escaped),
        cmocka_unit_test(same_input_same_bytes),
        cmocka_unit_test(too_big_is_refused),
        cmocka_unit_test(kaizala_fields_in_order),
        cmocka_unit_test(traceparent_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
