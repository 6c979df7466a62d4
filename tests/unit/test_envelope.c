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
        "\"eventId\":\"ev-1\",\"groupId\":\"g1\",\"data\":{\"answer\":[\"A\"],\"n\":4.0},"
        "\"context\":\"tenant-42\",\"fromUser\":\"+15550100\",\"fromUserId\":\"u1\","
        "\"fromUserName\":\"A \\\"User\\\"\",\"fromUserProfilePic\":\"\"}");
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
                        "\"fromUser\":\"\",\"fromUserId\":\"\",\"fromUserName\":\"\","
                        "\"fromUserProfilePic\":\"\"}");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_envelope),
        cmocka_unit_test(minimal_envelope_omits_context_and_group),
        cmocka_unit_test(control_characters_are_escaped),
        cmocka_unit_test(same_input_same_bytes),
        cmocka_unit_test(too_big_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
