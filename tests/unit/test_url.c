/* test_url.c — callback URL parsing, address classification and the SSRF guard (src/url.h).
 * Resolution tests use IP literals and "localhost" only, so they need no network or DNS. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <curl/curl.h>

#include "alloc.h"
#include "url.h"

/* ==== kz_url_parse: accepted ==== */

struct ok_case {
    const char *url;
    bool allow_http;
    const char *scheme;
    const char *host;
    int port;
    bool literal;
};

static void test_parse_accepts(void **state)
{
    static const struct ok_case cases[] = {
        {"https://example.com/hook", false, "https", "example.com", 443, false},
        {"https://EXAMPLE.Com:8443/x?y=1&z=%20", false, "https", "example.com", 8443, false},
        {"HTTPS://Example.COM", false, "https", "example.com", 443, false},
        {"https://example.com?x=1", false, "https", "example.com", 443, false},
        {"https://example.com:/", false, "https", "example.com", 443, false},
        {"https://example.com:1/", false, "https", "example.com", 1, false},
        {"https://example.com:65535/", false, "https", "example.com", 65535, false},
        {"https://example.com:00443/", false, "https", "example.com", 443, false},
        {"https://a_b-c.example/p@th", false, "https", "a_b-c.example", 443, false},
        {"https://xn--bcher-kva.example/", false, "https", "xn--bcher-kva.example", 443, false},
        {"http://example.com/", true, "http", "example.com", 80, false},
        {"https://example.com/", true, "https", "example.com", 443, false},
        {"https://8.8.8.8/", false, "https", "8.8.8.8", 443, true},
        {"https://[::1]:8443/x", false, "https", "::1", 8443, true},
        {"https://[2606:4700::1111]/", false, "https", "2606:4700::1111", 443, true},
        {"https://[2606:4700:0:0:0:0:0:1111]/", false, "https", "2606:4700::1111", 443, true},
        {"https://[::ffff:127.0.0.1]/", false, "https", "::ffff:127.0.0.1", 443, true},
        {"https://[0:0:0:0:0:ffff:7f00:1]/", false, "https", "::ffff:127.0.0.1", 443, true},
        {"https://[::FFFF:7F00:1]/", false, "https", "::ffff:127.0.0.1", 443, true},
        /* Odd IPv4 spellings are normalized to the address they really denote. */
        {"https://0x7f.1/", false, "https", "127.0.0.1", 443, true},
        {"https://2130706433/", false, "https", "127.0.0.1", 443, true},
        {"https://0177.0.0.1/", false, "https", "127.0.0.1", 443, true},
        {"https://127.1/", false, "https", "127.0.0.1", 443, true},
        {"https://0xA9.0xFE.0xA9.0xFE/", false, "https", "169.254.169.254", 443, true},
        {"https://0/", false, "https", "0.0.0.0", 443, true},
        /* Not an IPv4 address in any spelling: stays a name, for the resolver to refuse. */
        {"https://1.2.3.4.5/", false, "https", "1.2.3.4.5", 443, false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        struct kz_url u;
        const char *why = NULL;

        if (kz_url_parse(cases[i].url, cases[i].allow_http, &u, &why) != KZ_OK)
            fail_msg("rejected %s: %s", cases[i].url, why ? why : "(no reason)");
        assert_string_equal(u.scheme, cases[i].scheme);
        assert_string_equal(u.host, cases[i].host);
        assert_int_equal(u.port, cases[i].port);
        assert_int_equal(u.is_ip_literal, cases[i].literal);
        assert_null(why);
    }
}

static void test_parse_length_boundary(void **state)
{
    char *url = kz_malloc(KZ_URL_MAX + 2);
    struct kz_url u;
    const char *why = NULL;
    size_t prefix = strlen("https://example.com/");

    (void)state;
    memcpy(url, "https://example.com/", prefix);
    memset(url + prefix, 'a', KZ_URL_MAX - prefix);
    url[KZ_URL_MAX] = '\0';
    assert_int_equal(kz_url_parse(url, false, &u, &why), KZ_OK);
    url[KZ_URL_MAX] = 'a';
    url[KZ_URL_MAX + 1] = '\0';
    assert_int_equal(kz_url_parse(url, false, &u, &why), KZ_ERR_INVALID);
    assert_non_null(strstr(why, "2048"));
    kz_free(url);
}

static void test_parse_host_length_boundary(void **state)
{
    char url[400];
    char label[64];
    struct kz_url u;
    const char *why = NULL;

    (void)state;
    memset(label, 'a', 63);
    label[63] = '\0';
    /* 4 labels of 63 plus 3 dots: a 255-byte host, the most struct kz_url holds. */
    snprintf(url, sizeof(url), "https://%s.%s.%s.%s/", label, label, label, label);
    assert_int_equal(kz_url_parse(url, false, &u, &why), KZ_OK);
    assert_int_equal(strlen(u.host), 255);
    snprintf(url, sizeof(url), "https://%s.%s.%s.%sa/", label, label, label, label);
    assert_int_equal(kz_url_parse(url, false, &u, &why), KZ_ERR_INVALID);
    assert_non_null(strstr(why, "too long"));
}

/* ==== kz_url_parse: refused ==== */

struct bad_case {
    const char *url;
    bool allow_http;
    const char *why_part; /* a substring of the reason */
};

static void test_parse_rejects(void **state)
{
    static const struct bad_case cases[] = {
        {"", false, "empty"},
        {"https://user:pw@example.com/", false, "credentials"},
        {"https://user@example.com/", false, "credentials"},
        {"https://@example.com/", false, "credentials"},
        {"https://:@example.com/", false, "credentials"},
        {"https://example.com/#frag", false, "fragment"},
        {"https://example.com/#", false, "fragment"},
        {"https://example.com#x", false, "fragment"},
        {"http://example.com/", false, "https://"},
        {"ftp://example.com/", false, "https://"},
        {"ftp://example.com/", true, "http://"},
        {"file:///etc/passwd", false, "https://"},
        {"gopher://127.0.0.1:6379/_INFO", true, "https://"},
        {"javascript:alert(1)", false, "https://"},
        {"example.com/hook", false, "https://"},
        {"//example.com/hook", false, "https://"},
        {"https:/example.com/", false, "https://"},
        {"https:example.com/", false, "https://"},
        {"https://", false, "no host"},
        {"https:///hook", false, "no host"},
        {"https://?x=1", false, "no host"},
        {"https://:443/", false, "malformed"},
        {"https://example.com:0/", false, "port"},
        {"https://example.com:65536/", false, "port"},
        {"https://example.com:99999999999/", false, "port"},
        {"https://example.com:-1/", false, "port"},
        {"https://example.com:+1/", false, "port"},
        {"https://example.com:44a/", false, "port"},
        {"https://example.com/a b", false, "whitespace"},
        {"https://example.com/a\tb", false, "whitespace"},
        {"https://example.com/\r\nX-Injected: 1", false, "whitespace"},
        {"https://example.com/\x7f", false, "control"},
        {"https://b\303\274cher.example/", false, "non-ASCII"},
        {" https://example.com/", false, "whitespace"},
        {"https://example.com\\@evil.example/", false, "backslash"},
        {"https://example.com/a\\b", false, "backslash"},
        {"https://%31%32%37.0.0.1/", false, "percent"},
        {"https://exa%6dple.com/", false, "percent"},
        {"https://[fe80::1%25eth0]/", false, "percent"},
        {"https://[::1/", false, "malformed"},
        {"https://[1.2.3.4]/", false, "malformed"},
        {"https://[::g]/", false, "malformed"},
        {"https://exa$mple.com/", false, "malformed"},
        {"https://exa!mple.com/", false, "malformed"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        struct kz_url u;
        const char *why = NULL;

        if (kz_url_parse(cases[i].url, cases[i].allow_http, &u, &why) != KZ_ERR_INVALID)
            fail_msg("accepted %s", cases[i].url);
        if (!why || !strstr(why, cases[i].why_part))
            fail_msg("%s: reason \"%s\" lacks \"%s\"", cases[i].url, why ? why : "(null)",
                     cases[i].why_part);
    }
}

static void test_parse_null_and_no_why(void **state)
{
    struct kz_url u;
    const char *why = NULL;

    (void)state;
    assert_int_equal(kz_url_parse(NULL, false, &u, &why), KZ_ERR_INVALID);
    assert_non_null(strstr(why, "required"));
    assert_int_equal(kz_url_parse("ftp://x/", false, &u, NULL), KZ_ERR_INVALID);
    assert_int_equal(kz_url_parse("https://example.com/", false, &u, NULL), KZ_OK);
}

/* ==== kz_addr_classify ==== */

static enum kz_addr_class classify_text(const char *text)
{
    struct sockaddr_in s4;
    struct sockaddr_in6 s6;

    memset(&s4, 0, sizeof(s4));
    memset(&s6, 0, sizeof(s6));
    if (inet_pton(AF_INET, text, &s4.sin_addr) == 1) {
        s4.sin_family = AF_INET;
        return kz_addr_classify((const struct sockaddr *)&s4);
    }
    if (inet_pton(AF_INET6, text, &s6.sin6_addr) == 1) {
        s6.sin6_family = AF_INET6;
        return kz_addr_classify((const struct sockaddr *)&s6);
    }
    fail_msg("bad literal in test table: %s", text);
    return KZ_ADDR_RESERVED;
}

static void test_classify_table(void **state)
{
    static const struct {
        const char *addr;
        enum kz_addr_class want;
    } cases[] = {
        /* IPv4 */
        {"0.0.0.0", KZ_ADDR_UNSPECIFIED},
        {"0.255.255.255", KZ_ADDR_UNSPECIFIED},
        {"1.0.0.0", KZ_ADDR_PUBLIC},
        {"127.0.0.1", KZ_ADDR_LOOPBACK},
        {"127.255.255.255", KZ_ADDR_LOOPBACK},
        {"126.255.255.255", KZ_ADDR_PUBLIC},
        {"128.0.0.0", KZ_ADDR_PUBLIC},
        {"10.0.0.1", KZ_ADDR_PRIVATE},
        {"10.255.255.255", KZ_ADDR_PRIVATE},
        {"9.255.255.255", KZ_ADDR_PUBLIC},
        {"11.0.0.0", KZ_ADDR_PUBLIC},
        {"172.16.0.0", KZ_ADDR_PRIVATE},
        {"172.31.255.255", KZ_ADDR_PRIVATE},
        {"172.15.255.255", KZ_ADDR_PUBLIC},
        {"172.32.0.1", KZ_ADDR_PUBLIC},
        {"192.168.0.1", KZ_ADDR_PRIVATE},
        {"192.168.255.255", KZ_ADDR_PRIVATE},
        {"192.167.255.255", KZ_ADDR_PUBLIC},
        {"192.169.0.0", KZ_ADDR_PUBLIC},
        {"100.64.0.1", KZ_ADDR_PRIVATE},
        {"100.127.255.255", KZ_ADDR_PRIVATE},
        {"100.63.255.255", KZ_ADDR_PUBLIC},
        {"100.128.0.0", KZ_ADDR_PUBLIC},
        {"169.254.169.254", KZ_ADDR_LINKLOCAL},
        {"169.254.0.0", KZ_ADDR_LINKLOCAL},
        {"169.253.255.255", KZ_ADDR_PUBLIC},
        {"169.255.0.0", KZ_ADDR_PUBLIC},
        {"224.0.0.1", KZ_ADDR_MULTICAST},
        {"239.255.255.255", KZ_ADDR_MULTICAST},
        {"223.255.255.255", KZ_ADDR_PUBLIC},
        {"240.0.0.1", KZ_ADDR_RESERVED},
        {"255.255.255.255", KZ_ADDR_RESERVED},
        {"192.0.0.1", KZ_ADDR_RESERVED},
        {"192.0.0.255", KZ_ADDR_RESERVED},
        {"192.0.1.0", KZ_ADDR_PUBLIC},
        {"192.0.2.1", KZ_ADDR_RESERVED},
        {"192.0.3.0", KZ_ADDR_PUBLIC},
        {"198.18.0.1", KZ_ADDR_RESERVED},
        {"198.19.255.255", KZ_ADDR_RESERVED},
        {"198.17.255.255", KZ_ADDR_PUBLIC},
        {"198.20.0.0", KZ_ADDR_PUBLIC},
        {"198.51.100.1", KZ_ADDR_RESERVED},
        {"198.51.101.0", KZ_ADDR_PUBLIC},
        {"203.0.113.1", KZ_ADDR_RESERVED},
        {"203.0.114.0", KZ_ADDR_PUBLIC},
        {"203.0.112.255", KZ_ADDR_PUBLIC},
        {"8.8.8.8", KZ_ADDR_PUBLIC},
        {"1.1.1.1", KZ_ADDR_PUBLIC},
        /* IPv6 */
        {"::", KZ_ADDR_UNSPECIFIED},
        {"::1", KZ_ADDR_LOOPBACK},
        {"::2", KZ_ADDR_UNSPECIFIED}, /* v4-compatible 0.0.0.2 */
        {"fc00::1", KZ_ADDR_PRIVATE},
        {"fd00::1", KZ_ADDR_PRIVATE},
        {"fdff:ffff::1", KZ_ADDR_PRIVATE},
        {"fbff::1", KZ_ADDR_PUBLIC},
        {"fe80::1", KZ_ADDR_LINKLOCAL},
        {"febf:ffff::1", KZ_ADDR_LINKLOCAL},
        {"fec0::1", KZ_ADDR_RESERVED},
        {"feff::1", KZ_ADDR_RESERVED},
        {"ff02::1", KZ_ADDR_MULTICAST},
        {"ff00::", KZ_ADDR_MULTICAST},
        {"::ffff:10.0.0.1", KZ_ADDR_PRIVATE},
        {"::ffff:127.0.0.1", KZ_ADDR_LOOPBACK},
        {"::ffff:169.254.169.254", KZ_ADDR_LINKLOCAL},
        {"::ffff:0.0.0.0", KZ_ADDR_UNSPECIFIED},
        {"::ffff:8.8.8.8", KZ_ADDR_PUBLIC},
        {"::127.0.0.1", KZ_ADDR_LOOPBACK},
        {"::10.0.0.1", KZ_ADDR_PRIVATE},
        {"::8.8.8.8", KZ_ADDR_PUBLIC},
        {"64:ff9b::7f00:1", KZ_ADDR_LOOPBACK},
        {"64:ff9b::a9fe:a9fe", KZ_ADDR_LINKLOCAL},
        {"64:ff9b::808:808", KZ_ADDR_PUBLIC},
        /* Translated forms whose IPv4 target is not read from the address: refused. */
        {"64:ff9b:1::808:808", KZ_ADDR_RESERVED},
        {"64:ff9b:1:7f00:1::", KZ_ADDR_RESERVED},
        {"64:ff9b:1:ffff:ffff:ffff:ffff:ffff", KZ_ADDR_RESERVED},
        {"::ffff:0:7f00:1", KZ_ADDR_RESERVED},
        {"::ffff:0:808:808", KZ_ADDR_RESERVED},
        {"2001::1", KZ_ADDR_RESERVED},
        {"2001:0:4136:e378:8000:63bf:3fff:fdd2", KZ_ADDR_RESERVED},
        {"2001:0:ffff:ffff:ffff:ffff:ffff:ffff", KZ_ADDR_RESERVED},
        {"2002:7f00:1::", KZ_ADDR_RESERVED},
        {"2002:c0a8:101::1", KZ_ADDR_RESERVED},
        {"2002:808:808::1", KZ_ADDR_RESERVED},
        {"2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", KZ_ADDR_RESERVED},
        {"2003::1", KZ_ADDR_PUBLIC},
        {"2001:db8::1", KZ_ADDR_RESERVED},
        {"2001:db8:ffff:ffff::1", KZ_ADDR_RESERVED},
        {"2001:db9::1", KZ_ADDR_PUBLIC},
        {"100::1", KZ_ADDR_RESERVED},
        {"100::ffff:ffff:ffff:ffff", KZ_ADDR_RESERVED},
        {"100:0:0:1::", KZ_ADDR_PUBLIC},
        {"2606:4700::1111", KZ_ADDR_PUBLIC},
        {"2001:4860:4860::8888", KZ_ADDR_PUBLIC},
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        enum kz_addr_class got = classify_text(cases[i].addr);

        if (got != cases[i].want)
            fail_msg("%s: got %s, want %s", cases[i].addr, kz_addr_class_name(got),
                     kz_addr_class_name(cases[i].want));
    }
}

static void test_classify_other_family(void **state)
{
    struct sockaddr_un su;

    (void)state;
    memset(&su, 0, sizeof(su));
    su.sun_family = AF_UNIX;
    assert_int_equal(kz_addr_classify((const struct sockaddr *)&su), KZ_ADDR_RESERVED);
}

static void test_class_names(void **state)
{
    (void)state;
    assert_string_equal(kz_addr_class_name(KZ_ADDR_PUBLIC), "public");
    assert_string_equal(kz_addr_class_name(KZ_ADDR_LOOPBACK), "loopback");
    assert_string_equal(kz_addr_class_name(KZ_ADDR_PRIVATE), "private");
    assert_string_equal(kz_addr_class_name(KZ_ADDR_LINKLOCAL), "link-local");
    assert_string_equal(kz_addr_class_name(KZ_ADDR_MULTICAST), "multicast");
    assert_string_equal(kz_addr_class_name(KZ_ADDR_UNSPECIFIED), "unspecified");
    assert_string_equal(kz_addr_class_name(KZ_ADDR_RESERVED), "reserved");
    assert_string_equal(kz_addr_class_name((enum kz_addr_class)99), "unknown");
}

/* ==== kz_url_resolve ==== */

static enum kz_err resolve(const char *url, bool allow_private, char *ip, size_t iplen,
                           const char **why)
{
    struct kz_url u;

    if (kz_url_parse(url, false, &u, why) != KZ_OK)
        fail_msg("cannot parse %s", url);
    return kz_url_resolve(&u, allow_private, ip, iplen, why);
}

static void test_resolve_public_literals(void **state)
{
    char ip[INET6_ADDRSTRLEN];
    const char *why = NULL;

    (void)state;
    assert_int_equal(resolve("https://8.8.8.8/", false, ip, sizeof(ip), &why), KZ_OK);
    assert_string_equal(ip, "8.8.8.8");
    assert_int_equal(resolve("https://[2606:4700::1111]:8443/", false, ip, sizeof(ip), &why),
                     KZ_OK);
    assert_string_equal(ip, "2606:4700::1111");
    assert_int_equal(resolve("https://0x08080808/", false, ip, sizeof(ip), &why), KZ_OK);
    assert_string_equal(ip, "8.8.8.8");
    assert_null(why);
}

static void test_resolve_refuses_non_public(void **state)
{
    static const struct {
        const char *url;
        const char *why_part;
    } cases[] = {
        {"https://127.0.0.1/", "loopback"},
        {"https://0x7f.1/", "loopback"},
        {"https://2130706433/", "loopback"},
        {"https://[::1]:8443/x", "loopback"},
        {"https://[::ffff:127.0.0.1]/", "loopback"},
        {"https://[64:ff9b::7f00:1]/", "loopback"},
        {"https://localhost/", "loopback"},
        {"https://LocalHost:9000/", "loopback"},
        {"https://169.254.169.254/latest/meta-data/", "link-local"},
        {"https://[fe80::1]/", "link-local"},
        {"https://10.0.0.1/", "private"},
        {"https://100.64.0.1/", "private"},
        {"https://[fd00::1]/", "private"},
        {"https://[::ffff:10.0.0.1]/", "private"},
        {"https://224.0.0.1/", "multicast"},
        {"https://[ff02::1]/", "multicast"},
        {"https://0.0.0.0/", "unspecified"},
        {"https://0/", "unspecified"},
        {"https://[::]/", "unspecified"},
        {"https://240.0.0.1/", "reserved"},
        {"https://192.0.2.1/", "reserved"},
        {"https://[2001:db8::1]/", "reserved"},
        {"https://[64:ff9b:1::808:808]/", "reserved"},
        {"https://[::ffff:0:808:808]/", "reserved"},
        {"https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "reserved"},
        {"https://[2002:808:808::1]/", "reserved"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        char ip[INET6_ADDRSTRLEN] = "untouched";
        const char *why = NULL;
        enum kz_err got = resolve(cases[i].url, false, ip, sizeof(ip), &why);

        if (got != KZ_ERR_UNSAFE)
            fail_msg("%s: got %s, want unsafe", cases[i].url, kz_err_str(got));
        if (!why || !strstr(why, cases[i].why_part))
            fail_msg("%s: reason \"%s\" lacks \"%s\"", cases[i].url, why ? why : "(null)",
                     cases[i].why_part);
        assert_string_equal(ip, "untouched");
    }
}

static void test_resolve_allow_private(void **state)
{
    char ip[INET6_ADDRSTRLEN];
    const char *why = NULL;

    (void)state;
    assert_int_equal(resolve("https://10.0.0.1/", true, ip, sizeof(ip), &why), KZ_OK);
    assert_string_equal(ip, "10.0.0.1");
    assert_int_equal(resolve("https://[::1]/", true, ip, sizeof(ip), &why), KZ_OK);
    assert_string_equal(ip, "::1");
    assert_int_equal(resolve("https://localhost/", true, ip, sizeof(ip), &why), KZ_OK);
    assert_true(!strcmp(ip, "127.0.0.1") || !strcmp(ip, "::1"));
    assert_int_equal(resolve("https://169.254.169.254/", true, ip, sizeof(ip), &why), KZ_OK);
    assert_string_equal(ip, "169.254.169.254");
}

static void test_resolve_failures(void **state)
{
    char ip[INET6_ADDRSTRLEN];
    const char *why = NULL;
    struct kz_url empty;

    (void)state;
    /* RFC 6761: .invalid never resolves (and without network, nothing does). */
    assert_int_equal(resolve("https://no-such-host.invalid/", false, ip, sizeof(ip), &why),
                     KZ_ERR_INVALID);
    assert_string_equal(why, "host does not resolve");
    why = NULL;
    assert_int_equal(resolve("https://1.2.3.4.5/", true, ip, sizeof(ip), &why), KZ_ERR_INVALID);
    assert_string_equal(why, "host does not resolve");
    memset(&empty, 0, sizeof(empty));
    why = NULL;
    assert_int_equal(kz_url_resolve(&empty, true, ip, sizeof(ip), &why), KZ_ERR_INVALID);
    assert_non_null(why);
    assert_int_equal(kz_url_resolve(&empty, true, ip, sizeof(ip), NULL), KZ_ERR_INVALID);
}

static void test_resolve_ip_buffer(void **state)
{
    char ip[8];
    const char *why = NULL;

    (void)state;
    assert_int_equal(resolve("https://8.8.8.8/", false, ip, 8, &why), KZ_OK);
    assert_string_equal(ip, "8.8.8.8");
    assert_int_equal(resolve("https://8.8.8.8/", false, ip, 7, &why), KZ_ERR_TOOBIG);
    assert_non_null(why);
    assert_int_equal(resolve("https://8.8.8.8/", false, ip, 0, &why), KZ_ERR_TOOBIG);
}

/* ==== kz_url_check_addrs: lists as a resolver returns them ==== */

struct fake_ai {
    struct addrinfo ai;
    struct sockaddr_storage ss;
};

/* Builds a getaddrinfo()-style list from numeric strings into `nodes`. */
static struct addrinfo *fake_list(struct fake_ai *nodes, const char *const *addrs, size_t n)
{
    size_t i;

    memset(nodes, 0, n * sizeof(*nodes));
    for (i = 0; i < n; i++) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&nodes[i].ss;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&nodes[i].ss;

        if (inet_pton(AF_INET, addrs[i], &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            nodes[i].ai.ai_addrlen = sizeof(*s4);
        } else if (inet_pton(AF_INET6, addrs[i], &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            nodes[i].ai.ai_addrlen = sizeof(*s6);
        } else {
            fail_msg("bad literal %s", addrs[i]);
        }
        nodes[i].ai.ai_family = nodes[i].ss.ss_family;
        nodes[i].ai.ai_socktype = SOCK_STREAM;
        nodes[i].ai.ai_addr = (struct sockaddr *)&nodes[i].ss;
        nodes[i].ai.ai_next = i + 1 < n ? &nodes[i + 1].ai : NULL;
    }
    return n ? &nodes[0].ai : NULL;
}

static void test_check_addrs_any_bad_address_refuses(void **state)
{
    /* A rebinding-style answer: public first, internal later. curl may try any of them. */
    static const char *const mixed[] = {"93.184.216.34", "2606:2800:220:1::1", "10.1.2.3"};
    static const char *const mixed6[] = {"8.8.8.8", "fd12::1"};
    static const char *const good[] = {"2606:2800:220:1::1", "93.184.216.34"};
    struct fake_ai nodes[3];
    char ip[INET6_ADDRSTRLEN] = "untouched";
    const char *why = NULL;

    (void)state;
    assert_int_equal(kz_url_check_addrs(fake_list(nodes, mixed, 3), false, ip, sizeof(ip), &why),
                     KZ_ERR_UNSAFE);
    assert_non_null(strstr(why, "private"));
    assert_string_equal(ip, "untouched");
    assert_int_equal(kz_url_check_addrs(fake_list(nodes, mixed6, 2), false, ip, sizeof(ip), &why),
                     KZ_ERR_UNSAFE);
    /* Allowed when private targets are; the first address is the one reported. */
    assert_int_equal(kz_url_check_addrs(fake_list(nodes, mixed, 3), true, ip, sizeof(ip), &why),
                     KZ_OK);
    assert_string_equal(ip, "93.184.216.34");
    assert_int_equal(kz_url_check_addrs(fake_list(nodes, good, 2), false, ip, sizeof(ip), &why),
                     KZ_OK);
    assert_string_equal(ip, "2606:2800:220:1::1");
}

static void test_check_addrs_empty_and_foreign(void **state)
{
    struct fake_ai node;
    struct sockaddr_un su;
    char ip[INET6_ADDRSTRLEN];
    const char *why = NULL;

    (void)state;
    assert_int_equal(kz_url_check_addrs(NULL, true, ip, sizeof(ip), &why), KZ_ERR_INVALID);
    assert_string_equal(why, "host does not resolve");
    /* A family that is neither IPv4 nor IPv6 is refused, or skipped when private is allowed. */
    memset(&node, 0, sizeof(node));
    memset(&su, 0, sizeof(su));
    su.sun_family = AF_UNIX;
    node.ai.ai_family = AF_UNIX;
    node.ai.ai_addr = (struct sockaddr *)&su;
    why = NULL;
    assert_int_equal(kz_url_check_addrs(&node.ai, false, ip, sizeof(ip), &why), KZ_ERR_UNSAFE);
    assert_non_null(strstr(why, "reserved"));
    assert_int_equal(kz_url_check_addrs(&node.ai, true, ip, sizeof(ip), &why), KZ_ERR_INVALID);
}

/* ==== kz_url_resolve_entry ==== */

static void parse_ok(const char *url, struct kz_url *u)
{
    const char *why = NULL;

    if (kz_url_parse(url, false, u, &why) != KZ_OK)
        fail_msg("cannot parse %s: %s", url, why);
}

static void test_entry_format(void **state)
{
    struct kz_url u;
    char out[128];

    (void)state;
    parse_ok("https://Hooks.Example.com/x", &u);
    assert_int_equal(kz_url_resolve_entry(&u, "93.184.216.34", out, sizeof(out)), KZ_OK);
    assert_string_equal(out, "hooks.example.com:443:93.184.216.34");
    assert_int_equal(kz_url_resolve_entry(&u, "2606:2800:220:1::1", out, sizeof(out)), KZ_OK);
    assert_string_equal(out, "hooks.example.com:443:[2606:2800:220:1::1]");
    parse_ok("https://hooks.example.com:8443/", &u);
    assert_int_equal(kz_url_resolve_entry(&u, "8.8.4.4", out, sizeof(out)), KZ_OK);
    assert_string_equal(out, "hooks.example.com:8443:8.8.4.4");
    parse_ok("https://0x08080808/", &u);
    assert_int_equal(kz_url_resolve_entry(&u, "8.8.8.8", out, sizeof(out)), KZ_OK);
    assert_string_equal(out, "8.8.8.8:443:8.8.8.8");
}

static void test_entry_ipv6_literal_host(void **state)
{
    struct kz_url u;
    char out[64] = "x";

    (void)state;
    parse_ok("https://[2606:4700::1111]/", &u);
    assert_int_equal(kz_url_resolve_entry(&u, "2606:4700::1111", out, sizeof(out)),
                     KZ_ERR_NOTFOUND);
    assert_string_equal(out, "");
    assert_int_equal(kz_url_resolve_entry(&u, "2606:4700::1111", out, 0), KZ_ERR_NOTFOUND);
}

static void test_entry_errors(void **state)
{
    struct kz_url u;
    char out[64] = "x";
    const char *want = "example.com:443:1.2.3.4";

    (void)state;
    parse_ok("https://example.com/", &u);
    assert_int_equal(kz_url_resolve_entry(&u, "not-an-ip", out, sizeof(out)), KZ_ERR_INVALID);
    assert_int_equal(kz_url_resolve_entry(&u, "[::1]", out, sizeof(out)), KZ_ERR_INVALID);
    assert_int_equal(kz_url_resolve_entry(&u, "1.2.3.4,5.6.7.8", out, sizeof(out)), KZ_ERR_INVALID);
    assert_int_equal(kz_url_resolve_entry(&u, "", out, sizeof(out)), KZ_ERR_INVALID);
    assert_int_equal(kz_url_resolve_entry(&u, NULL, out, sizeof(out)), KZ_ERR_INVALID);
    /* Exactly enough room, then one byte short. */
    assert_int_equal(kz_url_resolve_entry(&u, "1.2.3.4", out, strlen(want) + 1), KZ_OK);
    assert_string_equal(out, want);
    assert_int_equal(kz_url_resolve_entry(&u, "1.2.3.4", out, strlen(want)), KZ_ERR_TOOBIG);
    assert_string_equal(out, "");
    assert_int_equal(kz_url_resolve_entry(&u, "1.2.3.4", out, 0), KZ_ERR_TOOBIG);
}

/* The entry must be one curl accepts, keyed so that curl's lookup of the URL's host hits it:
 * a name under .invalid can only be reached through the entry. */
static int listen_loopback(int *port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static CURLcode connect_with_entry(const char *url, const char *entry)
{
    struct curl_slist *list = curl_slist_append(NULL, entry);
    CURL *easy = curl_easy_init();
    CURLcode rc;

    assert_non_null(easy);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_RESOLVE, list);
    curl_easy_setopt(easy, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 5000L);
    rc = curl_easy_perform(easy);
    curl_easy_cleanup(easy);
    curl_slist_free_all(list);
    return rc;
}

static void test_entry_pins_curl(void **state)
{
    struct kz_url u;
    char url[128], out[128];
    const char *why = NULL;
    int port;
    int fd = listen_loopback(&port);

    (void)state;
    snprintf(url, sizeof(url), "http://Hooks.Example.INVALID:%d/x", port);
    assert_int_equal(kz_url_parse(url, true, &u, &why), KZ_OK);
    assert_int_equal(kz_url_resolve_entry(&u, "127.0.0.1", out, sizeof(out)), KZ_OK);
    assert_int_equal(connect_with_entry(url, out), CURLE_OK);
    /* Control: an entry for another port is not used, and the name cannot resolve. */
    u.port = port == 65535 ? 1 : port + 1;
    assert_int_equal(kz_url_resolve_entry(&u, "127.0.0.1", out, sizeof(out)), KZ_OK);
    assert_int_not_equal(connect_with_entry(url, out), CURLE_OK);
    close(fd);
}

/* The same through IPv6: the bracketed form of the address must be what curl expects. Skipped
 * where the host has no IPv6 loopback. */
static void test_entry_pins_curl_ipv6(void **state)
{
    struct sockaddr_in6 sa;
    socklen_t len = sizeof(sa);
    struct kz_url u;
    char url[128], out[128];
    const char *why = NULL;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);

    (void)state;
    memset(&sa, 0, sizeof(sa));
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 4)) {
        if (fd >= 0)
            close(fd);
        skip();
    }
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(url, sizeof(url), "http://v6.example.invalid:%d/", ntohs(sa.sin6_port));
    assert_int_equal(kz_url_parse(url, true, &u, &why), KZ_OK);
    assert_int_equal(kz_url_resolve_entry(&u, "::1", out, sizeof(out)), KZ_OK);
    assert_int_equal(connect_with_entry(url, out), CURLE_OK);
    close(fd);
}

static int setup_curl(void **state)
{
    (void)state;
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int teardown_curl(void **state)
{
    (void)state;
    curl_global_cleanup();
    return kz_alloc_live() == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_accepts),
        cmocka_unit_test(test_parse_length_boundary),
        cmocka_unit_test(test_parse_host_length_boundary),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_parse_null_and_no_why),
        cmocka_unit_test(test_classify_table),
        cmocka_unit_test(test_classify_other_family),
        cmocka_unit_test(test_class_names),
        cmocka_unit_test(test_resolve_public_literals),
        cmocka_unit_test(test_resolve_refuses_non_public),
        cmocka_unit_test(test_resolve_allow_private),
        cmocka_unit_test(test_resolve_failures),
        cmocka_unit_test(test_resolve_ip_buffer),
        cmocka_unit_test(test_check_addrs_any_bad_address_refuses),
        cmocka_unit_test(test_check_addrs_empty_and_foreign),
        cmocka_unit_test(test_entry_format),
        cmocka_unit_test(test_entry_ipv6_literal_host),
        cmocka_unit_test(test_entry_errors),
        cmocka_unit_test(test_entry_pins_curl),
        cmocka_unit_test(test_entry_pins_curl_ipv6),
    };

    return cmocka_run_group_tests(tests, setup_curl, teardown_curl);
}
