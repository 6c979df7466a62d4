/* url.c — callback URL validation and the SSRF guard (see url.h, docs/internals/SSRF.md).
 *
 * kz_url_parse() runs its own checks on the raw text before handing it to curl's URL parser,
 * because curl is lenient where an SSRF guard must not be: it accepts "https:///x" as host "x",
 * an empty "#", a backslash in the userinfo, and percent-encoded host names. The host we keep is
 * the one curl will connect to, so the address classification and the CURLOPT_RESOLVE pinning
 * see exactly what the delivery transfer sees.
 */
#include "url.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* ==== parsing ==== */

static bool has_prefix_ci(const char *s, const char *prefix)
{
    size_t i;

    for (i = 0; prefix[i]; i++) {
        char c = s[i];

        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != prefix[i])
            return false;
    }
    return true;
}

/* Characters curl may hand back in a registered name that we are willing to look up. Letters are
 * already lower case here. */
static bool host_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

/* Checks the raw text before curl sees it. Returns NULL when acceptable, else the reason.
 * `*off` receives the length of the "scheme://" prefix. */
static const char *precheck(const char *url, bool allow_http, size_t *off)
{
    size_t len = strnlen(url, KZ_URL_MAX + 1);
    size_t i, alen;

    if (!len)
        return "callback URL is empty";
    if (len > KZ_URL_MAX)
        return "callback URL is longer than 2048 bytes";
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];

        if (c <= 0x20 || c >= 0x7f)
            return "callback URL contains whitespace, control or non-ASCII characters";
        if (c == '\\')
            return "callback URL contains a backslash";
        if (c == '#')
            return "callback URL must not contain a fragment";
    }
    if (has_prefix_ci(url, "https://")) {
        *off = 8;
    } else if (has_prefix_ci(url, "http://")) {
        if (!allow_http)
            return "callback URL must use https://";
        *off = 7;
    } else {
        return allow_http ? "callback URL must use https:// or http://"
                          : "callback URL must use https://";
    }
    alen = strcspn(url + *off, "/?");
    if (!alen)
        return "callback URL has no host";
    if (memchr(url + *off, '@', alen))
        return "callback URL must not contain credentials (user:pass@)";
    if (memchr(url + *off, '%', alen))
        return "callback URL host must not be percent-encoded";
    return NULL;
}

/* Normalizes curl's host into `out`: brackets removed, lower case, IP literals canonical. */
static const char *normalize_host(const char *host, struct kz_url *out)
{
    size_t len = strlen(host);
    size_t i;
    struct in_addr a4;
    struct in6_addr a6;
    char tmp[256];

    if (host[0] == '[') {
        if (len < 3 || host[len - 1] != ']' || len - 2 >= sizeof(tmp))
            return "callback URL has an invalid IPv6 address";
        memcpy(tmp, host + 1, len - 2);
        tmp[len - 2] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1 ||
            !inet_ntop(AF_INET6, &a6, out->host, sizeof(out->host)))
            return "callback URL has an invalid IPv6 address";
        out->is_ip_literal = true;
        return NULL;
    }
    if (!len)
        return "callback URL has no host";
    if (len >= sizeof(out->host))
        return "callback URL host name is too long";
    for (i = 0; i < len; i++) {
        char c = host[i];

        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (!host_char_ok(c))
            return "callback URL host contains invalid characters";
        out->host[i] = c;
    }
    out->host[len] = '\0';
    /* curl (7.77+) already rewrites "0x7f.1", "2130706433" and friends to dotted quads. If an
     * older or newer curl does not, the resolver would still read them the inet_aton() way, so
     * normalize here and classify the real address either way. */
    if (inet_pton(AF_INET, out->host, &a4) == 1 || inet_aton(out->host, &a4)) {
        if (!inet_ntop(AF_INET, &a4, out->host, sizeof(out->host)))
            return "callback URL has an invalid IPv4 address";
        out->is_ip_literal = true;
    }
    return NULL;
}

static const char *parse_port(const char *s, int *port)
{
    long v = 0;
    size_t i;

    for (i = 0; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9' || i >= 5)
            return "callback URL port must be 1..65535";
        v = v * 10 + (s[i] - '0');
    }
    if (!i || v < 1 || v > 65535)
        return "callback URL port must be 1..65535";
    *port = (int)v;
    return NULL;
}

enum kz_err kz_url_parse(const char *url, bool allow_http, struct kz_url *out, const char **why)
{
    enum kz_err result = KZ_ERR_INVALID;
    const char *msg = "callback URL is malformed";
    CURLU *h = NULL;
    CURLUcode rc;
    char *scheme = NULL, *host = NULL, *port = NULL, *part = NULL;
    size_t off = 0;

    memset(out, 0, sizeof(*out));
    if (!url) {
        msg = "callback URL is required";
        goto out;
    }
    msg = precheck(url, allow_http, &off);
    if (msg)
        goto out;
    msg = "callback URL is malformed";
    h = curl_url();
    if (!h) {
        result = KZ_ERR_NOMEM;
        msg = "out of memory";
        goto out;
    }
    rc = curl_url_set(h, CURLUPART_URL, url, 0);
    if (rc == CURLUE_BAD_PORT_NUMBER)
        msg = "callback URL port must be 1..65535";
    if (rc)
        goto out;
    /* The prechecks make these impossible; they stay as a second line of defence in case a
     * future curl parses the text differently. */
    if (!curl_url_get(h, CURLUPART_USER, &part, 0) ||
        !curl_url_get(h, CURLUPART_PASSWORD, &part, 0) ||
        !curl_url_get(h, CURLUPART_OPTIONS, &part, 0)) {
        msg = "callback URL must not contain credentials (user:pass@)";
        goto out;
    }
    if (!curl_url_get(h, CURLUPART_FRAGMENT, &part, 0)) {
        msg = "callback URL must not contain a fragment";
        goto out;
    }
    if (!curl_url_get(h, CURLUPART_ZONEID, &part, 0)) {
        msg = "callback URL must not contain an IPv6 zone id";
        goto out;
    }
    if (curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) ||
        !(!strcmp(scheme, "https") || (allow_http && !strcmp(scheme, "http"))))
        goto out;
    if (curl_url_get(h, CURLUPART_HOST, &host, 0)) {
        msg = "callback URL has no host";
        goto out;
    }
    if (curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT))
        goto out;
    msg = parse_port(port, &out->port);
    if (msg)
        goto out;
    msg = normalize_host(host, out);
    if (msg)
        goto out;
    memcpy(out->scheme, scheme, strlen(scheme) + 1);
    result = KZ_OK;
out:
    curl_free(part);
    curl_free(port);
    curl_free(host);
    curl_free(scheme);
    curl_url_cleanup(h);
    if (result && why)
        *why = msg;
    return result;
}

/* ==== address classification ==== */

static enum kz_addr_class classify_v4(uint32_t a)
{
    static const struct {
        uint32_t net, mask;
        enum kz_addr_class cls;
    } table[] = {
        {0x00000000, 0xff000000, KZ_ADDR_UNSPECIFIED}, /* 0.0.0.0/8 */
        {0x7f000000, 0xff000000, KZ_ADDR_LOOPBACK},    /* 127.0.0.0/8 */
        {0x0a000000, 0xff000000, KZ_ADDR_PRIVATE},     /* 10.0.0.0/8 */
        {0xac100000, 0xfff00000, KZ_ADDR_PRIVATE},     /* 172.16.0.0/12 */
        {0xc0a80000, 0xffff0000, KZ_ADDR_PRIVATE},     /* 192.168.0.0/16 */
        {0x64400000, 0xffc00000, KZ_ADDR_PRIVATE},     /* 100.64.0.0/10, carrier-grade NAT */
        {0xa9fe0000, 0xffff0000, KZ_ADDR_LINKLOCAL},   /* 169.254.0.0/16, cloud metadata */
        {0xe0000000, 0xf0000000, KZ_ADDR_MULTICAST},   /* 224.0.0.0/4 */
        {0xf0000000, 0xf0000000, KZ_ADDR_RESERVED},    /* 240.0.0.0/4 incl. broadcast */
        {0xc0000000, 0xffffff00, KZ_ADDR_RESERVED},    /* 192.0.0.0/24, IETF protocol */
        {0xc0000200, 0xffffff00, KZ_ADDR_RESERVED},    /* 192.0.2.0/24, TEST-NET-1 */
        {0xc6120000, 0xfffe0000, KZ_ADDR_RESERVED},    /* 198.18.0.0/15, benchmarking */
        {0xc6336400, 0xffffff00, KZ_ADDR_RESERVED},    /* 198.51.100.0/24, TEST-NET-2 */
        {0xcb007100, 0xffffff00, KZ_ADDR_RESERVED},    /* 203.0.113.0/24, TEST-NET-3 */
    };
    size_t i;

    for (i = 0; i < KZ_ARRAY_LEN(table); i++) {
        if ((a & table[i].mask) == table[i].net)
            return table[i].cls;
    }
    return KZ_ADDR_PUBLIC;
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

static bool all_zero(const unsigned char *b, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (b[i])
            return false;
    }
    return true;
}

static enum kz_addr_class classify_v6(const unsigned char *b)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char nat64_local[6] = {0, 0x64, 0xff, 0x9b, 0, 0x01};
    static const unsigned char siit[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0};

    if (all_zero(b, 16))
        return KZ_ADDR_UNSPECIFIED;
    if (all_zero(b, 15) && b[15] == 1)
        return KZ_ADDR_LOOPBACK;
    /* Addresses that carry an IPv4 address reach (or name) that IPv4 host: IPv4-compatible
     * ::/96, IPv4-mapped ::ffff:0:0/96 and the well-known NAT64 prefix 64:ff9b::/96 are judged
     * by the IPv4 address they carry. */
    if (all_zero(b, 12) || !memcmp(b, mapped, 12) || !memcmp(b, nat64, 12))
        return classify_v4(be32(b + 12));
    /* Translated forms whose IPv4 target cannot be read reliably from the address are refused
     * whatever they carry: the local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215; the operator
     * picks where in it the IPv4 address sits), SIIT ::ffff:0:0:0/96 (RFC 2765,
     * ::ffff:0:a.b.c.d, distinct from IPv4-mapped ::ffff:a.b.c.d), Teredo 2001::/32 (the client
     * address is obfuscated, the server address is any IPv4 host) and 6to4 2002::/16 (relays
     * forward to the embedded IPv4 address from wherever they sit). */
    if (!memcmp(b, nat64_local, 6) || !memcmp(b, siit, 12))
        return KZ_ADDR_RESERVED;
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0)
        return KZ_ADDR_RESERVED;
    if (b[0] == 0x20 && b[1] == 0x02)
        return KZ_ADDR_RESERVED;
    if ((b[0] & 0xfe) == 0xfc)
        return KZ_ADDR_PRIVATE;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return KZ_ADDR_LINKLOCAL;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
        return KZ_ADDR_RESERVED;
    if (b[0] == 0xff)
        return KZ_ADDR_MULTICAST;
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
        return KZ_ADDR_RESERVED;
    if (b[0] == 0x01 && all_zero(b + 1, 7))
        return KZ_ADDR_RESERVED;
    return KZ_ADDR_PUBLIC;
}

enum kz_addr_class kz_addr_classify(const struct sockaddr *sa)
{
    const struct sockaddr_in *s4;
    const struct sockaddr_in6 *s6;

    KZ_ASSERT(sa);
    if (sa->sa_family == AF_INET) {
        s4 = (const struct sockaddr_in *)(const void *)sa;
        return classify_v4(ntohl(s4->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        s6 = (const struct sockaddr_in6 *)(const void *)sa;
        return classify_v6(s6->sin6_addr.s6_addr);
    }
    return KZ_ADDR_RESERVED;
}

const char *kz_addr_class_name(enum kz_addr_class c)
{
    switch (c) {
    case KZ_ADDR_PUBLIC:
        return "public";
    case KZ_ADDR_LOOPBACK:
        return "loopback";
    case KZ_ADDR_PRIVATE:
        return "private";
    case KZ_ADDR_LINKLOCAL:
        return "link-local";
    case KZ_ADDR_MULTICAST:
        return "multicast";
    case KZ_ADDR_UNSPECIFIED:
        return "unspecified";
    case KZ_ADDR_RESERVED:
        return "reserved";
    }
    return "unknown";
}

/* ==== resolution and pinning ==== */

static const char *unsafe_reason(enum kz_addr_class c)
{
    switch (c) {
    case KZ_ADDR_LOOPBACK:
        return "callback host resolves to a loopback address";
    case KZ_ADDR_PRIVATE:
        return "callback host resolves to a private address";
    case KZ_ADDR_LINKLOCAL:
        return "callback host resolves to a link-local address";
    case KZ_ADDR_MULTICAST:
        return "callback host resolves to a multicast address";
    case KZ_ADDR_UNSPECIFIED:
        return "callback host resolves to an unspecified address";
    case KZ_ADDR_PUBLIC:
    case KZ_ADDR_RESERVED:
        break;
    }
    return "callback host resolves to a reserved address";
}

static bool ntop_sa(const struct sockaddr *sa, char *buf, size_t len)
{
    const void *addr;

    if (sa->sa_family == AF_INET)
        addr = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else
        addr = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    return inet_ntop(sa->sa_family, addr, buf, (socklen_t)len) != NULL;
}

enum kz_err kz_url_check_addrs(const struct addrinfo *res, bool allow_private, char *ip,
                               size_t iplen, const char **why)
{
    enum kz_err result = KZ_ERR_INVALID;
    const char *msg = "host does not resolve";
    const struct addrinfo *ai, *first = NULL;
    char tmp[INET6_ADDRSTRLEN];
    size_t len;

    /* Every address counts, not just the first: curl may fall back to any of them. */
    for (ai = res; ai; ai = ai->ai_next) {
        enum kz_addr_class c = kz_addr_classify(ai->ai_addr);

        if (c != KZ_ADDR_PUBLIC && !allow_private) {
            result = KZ_ERR_UNSAFE;
            msg = unsafe_reason(c);
            goto out;
        }
        if (!first && (ai->ai_addr->sa_family == AF_INET || ai->ai_addr->sa_family == AF_INET6))
            first = ai;
    }
    if (!first || !ntop_sa(first->ai_addr, tmp, sizeof(tmp)))
        goto out;
    len = strlen(tmp);
    if (len >= iplen) {
        result = KZ_ERR_TOOBIG;
        msg = "address buffer too small";
        goto out;
    }
    memcpy(ip, tmp, len + 1);
    result = KZ_OK;
out:
    if (result && why)
        *why = msg;
    return result;
}

enum kz_err kz_url_resolve(const struct kz_url *u, bool allow_private, char *ip, size_t iplen,
                           const char **why)
{
    enum kz_err result;
    struct addrinfo hints;
    struct addrinfo *res = NULL;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* Literals never go to DNS. AI_ADDRCONFIG stays off so that a host without IPv6 still sees
     * (and refuses) a name whose AAAA record points somewhere internal. */
    hints.ai_flags = u->is_ip_literal ? AI_NUMERICHOST : 0;
    if (!u->host[0] || getaddrinfo(u->host, NULL, &hints, &res)) {
        if (why)
            *why = "host does not resolve";
        return KZ_ERR_INVALID;
    }
    result = kz_url_check_addrs(res, allow_private, ip, iplen, why);
    freeaddrinfo(res);
    return result;
}

enum kz_err kz_url_resolve_entry(const struct kz_url *u, const char *ip, char *out, size_t outlen)
{
    unsigned char tmp[sizeof(struct in6_addr)];
    bool v6;
    int n;

    if (u->is_ip_literal && strchr(u->host, ':')) {
        if (outlen)
            out[0] = '\0';
        return KZ_ERR_NOTFOUND;
    }
    if (!ip)
        return KZ_ERR_INVALID;
    v6 = inet_pton(AF_INET6, ip, tmp) == 1;
    if (!v6 && inet_pton(AF_INET, ip, tmp) != 1)
        return KZ_ERR_INVALID;
    n = snprintf(out, outlen, v6 ? "%s:%d:[%s]" : "%s:%d:%s", u->host, u->port, ip);
    if (n < 0 || (size_t)n >= outlen) {
        if (outlen)
            out[0] = '\0';
        return KZ_ERR_TOOBIG;
    }
    return KZ_OK;
}
