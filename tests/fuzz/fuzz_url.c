/* fuzz_url.c — callback URL parsing and the SSRF guard's pure half (src/url.h). Never resolves:
 * kz_url_resolve() (DNS) is not called; kz_url_check_addrs() gets address lists built here.
 *
 * Input: the URL text up to the first NUL. After the NUL, optionally: an IP text up to a second
 * NUL (for kz_url_resolve_entry), one byte choosing output buffer sizes, then address records
 * (1 family byte, then 4 or 16 address bytes) for kz_url_check_addrs().
 * Checked:
 *  - kz_url_parse() with allow_http false and true: an accepted URL is https (http only when
 *    allowed), its port is 1..65535, its host is non-empty lower case; an IP literal host is in
 *    canonical numeric form; a name host contains only [a-z0-9._-] and is not something
 *    inet_aton() (and so the resolver) would read as an IPv4 address; the raw text had no
 *    userinfo, fragment, backslash, control or non-ASCII byte and is at most 2048 bytes;
 *    anything accepted without http is accepted identically with it; errors carry a reason;
 *  - kz_addr_classify() of every IPv4 address agrees with its IPv4-mapped, IPv4-compatible,
 *    NAT64 IPv6 forms, 6to4 addresses are always reserved, and class names are never NULL;
 *  - kz_url_resolve_entry() writes exactly "host:port:ip" ("[ip]" for IPv6) or reports the
 *    documented error, never past its buffer (sized exactly, so ASan sees any overrun);
 *  - kz_url_check_addrs() accepts (without allow_private) only lists whose every entry is
 *    public, and returns the first IPv4/IPv6 entry. */
#include "fuzz_common.h"

#include "alloc.h"
#include "url.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return 0;
}

static bool ci_prefix(const char *s, const char *p)
{
    size_t i;

    for (i = 0; p[i]; i++) {
        char c = s[i];

        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != p[i])
            return false;
    }
    return true;
}

static void check_accepted(const char *url, bool allow_http, const struct kz_url *u)
{
    size_t len = strlen(url), i, off, alen;
    struct in_addr a4;
    unsigned char a6[16];
    char canon[INET6_ADDRSTRLEN];

    FUZZ_CHECK(!strcmp(u->scheme, "https") || (allow_http && !strcmp(u->scheme, "http")),
               "scheme \"%s\" accepted (allow_http=%d) for %s", u->scheme, allow_http, url);
    FUZZ_CHECK(u->port >= 1 && u->port <= 65535, "port %d for %s", u->port, url);
    FUZZ_CHECK(len <= KZ_URL_MAX, "URL of %zu bytes accepted", len);
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];

        FUZZ_CHECK(c > 0x20 && c < 0x7f && c != '\\' && c != '#',
                   "byte 0x%02x at %zu accepted in %s", c, i, url);
    }
    off = ci_prefix(url, "https://") ? 8 : 7;
    FUZZ_CHECK(ci_prefix(url, "https://") || (allow_http && ci_prefix(url, "http://")),
               "URL without the scheme prefix accepted: %s", url);
    alen = strcspn(url + off, "/?");
    FUZZ_CHECK(!memchr(url + off, '@', alen), "userinfo accepted: %s", url);
    FUZZ_CHECK(!memchr(url + off, '%', alen), "percent-encoded authority accepted: %s", url);

    len = strnlen(u->host, sizeof(u->host));
    FUZZ_CHECK(len > 0 && len < sizeof(u->host), "host length %zu for %s", len, url);
    for (i = 0; i < len; i++)
        FUZZ_CHECK(!(u->host[i] >= 'A' && u->host[i] <= 'Z'), "upper-case host %s", u->host);
    if (u->is_ip_literal) {
        if (strchr(u->host, ':')) {
            FUZZ_CHECK(inet_pton(AF_INET6, u->host, a6) == 1, "bad IPv6 literal %s", u->host);
            inet_ntop(AF_INET6, a6, canon, sizeof(canon));
        } else {
            FUZZ_CHECK(inet_pton(AF_INET, u->host, &a4) == 1, "bad IPv4 literal %s", u->host);
            inet_ntop(AF_INET, &a4, canon, sizeof(canon));
        }
        FUZZ_CHECK(!strcmp(canon, u->host), "literal %s is not canonical (%s)", u->host, canon);
    } else {
        for (i = 0; i < len; i++) {
            char c = u->host[i];

            FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
                           c == '_',
                       "host name %s has byte 0x%02x", u->host, (unsigned char)c);
        }
        /* A name the resolver would read as a number must have been classified as one. */
        FUZZ_CHECK(!inet_aton(u->host, &a4), "host %s is numeric to inet_aton but not a literal",
                   u->host);
        FUZZ_CHECK(inet_pton(AF_INET6, u->host, a6) != 1, "host %s is IPv6 but not a literal",
                   u->host);
    }
}

static enum kz_addr_class classify4(uint32_t a)
{
    struct sockaddr_in s;

    memset(&s, 0, sizeof(s));
    s.sin_family = AF_INET;
    s.sin_addr.s_addr = htonl(a);
    return kz_addr_classify((const struct sockaddr *)&s);
}

static enum kz_addr_class classify6(const unsigned char *b)
{
    struct sockaddr_in6 s;

    memset(&s, 0, sizeof(s));
    s.sin6_family = AF_INET6;
    memcpy(s.sin6_addr.s6_addr, b, 16);
    return kz_addr_classify((const struct sockaddr *)&s);
}

/* Every IPv6 form that carries `a` must classify like `a` itself (the SSRF guard relies on it). */
static void check_v4_forms(uint32_t a)
{
    enum kz_addr_class c = classify4(a);
    unsigned char b[16];
    unsigned char v4[4] = {(unsigned char)(a >> 24), (unsigned char)(a >> 16),
                           (unsigned char)(a >> 8), (unsigned char)a};

    FUZZ_CHECK(kz_addr_class_name(c) != NULL, "%s", "NULL class name");
    memset(b, 0, 16);
    b[10] = b[11] = 0xff;
    memcpy(b + 12, v4, 4);
    FUZZ_CHECK(classify6(b) == c, "::ffff:%u.%u.%u.%u is %s but the IPv4 address is %s", v4[0],
               v4[1], v4[2], v4[3], kz_addr_class_name(classify6(b)), kz_addr_class_name(c));
    memset(b, 0, 16);
    memcpy(b + 12, v4, 4);
    /* ::/128 and ::1 are the IPv6 unspecified and loopback addresses, not IPv4-compatible. */
    if (a > 1)
        FUZZ_CHECK(classify6(b) == c, "::%u.%u.%u.%u is %s but the IPv4 address is %s", v4[0],
                   v4[1], v4[2], v4[3], kz_addr_class_name(classify6(b)), kz_addr_class_name(c));
    memset(b, 0, 16);
    b[1] = 0x64;
    b[2] = 0xff;
    b[3] = 0x9b;
    memcpy(b + 12, v4, 4);
    FUZZ_CHECK(classify6(b) == c, "64:ff9b::%u.%u.%u.%u is %s but the IPv4 address is %s", v4[0],
               v4[1], v4[2], v4[3], kz_addr_class_name(classify6(b)), kz_addr_class_name(c));
    memset(b, 0, 16);
    b[0] = 0x20;
    b[1] = 0x02;
    memcpy(b + 2, v4, 4);
    /* 6to4 reaches its embedded address through whatever relay: refused whatever it carries */
    FUZZ_CHECK(classify6(b) == KZ_ADDR_RESERVED, "2002:(%u.%u.%u.%u)::/48 is %s, not reserved",
               v4[0], v4[1], v4[2], v4[3], kz_addr_class_name(classify6(b)));
}

static void check_classify(const struct kz_url *u)
{
    unsigned char b[16];
    struct in_addr a4;

    if (!u->is_ip_literal)
        return;
    if (strchr(u->host, ':')) {
        FUZZ_CHECK(inet_pton(AF_INET6, u->host, b) == 1, "literal %s", u->host);
        FUZZ_CHECK(kz_addr_class_name(classify6(b)) != NULL, "%s", "NULL class name");
    } else {
        FUZZ_CHECK(inet_pton(AF_INET, u->host, &a4) == 1, "literal %s", u->host);
        check_v4_forms(ntohl(a4.s_addr));
    }
}

static void check_entry(const struct kz_url *u, const char *ip, size_t outlen)
{
    char *out = malloc(outlen ? outlen : 1);
    char want[1024];
    unsigned char tmp[16];
    bool v6lit = u->is_ip_literal && strchr(u->host, ':');
    bool v6 = ip && inet_pton(AF_INET6, ip, tmp) == 1;
    bool v4 = ip && inet_pton(AF_INET, ip, tmp) == 1;
    enum kz_err e;
    int n;

    if (!out)
        abort();
    if (outlen)
        memset(out, 'Z', outlen);
    e = kz_url_resolve_entry(u, ip, out, outlen);
    if (v6lit) {
        FUZZ_CHECK(e == KZ_ERR_NOTFOUND, "IPv6 literal %s: e=%d", u->host, e);
        FUZZ_CHECK(!outlen || out[0] == '\0', "%s", "out not emptied for an IPv6 literal");
    } else if (!v4 && !v6) {
        FUZZ_CHECK(e == KZ_ERR_INVALID, "non-numeric ip \"%.60s\" accepted: e=%d", ip ? ip : "", e);
    } else {
        n = snprintf(want, sizeof(want), v6 ? "%s:%d:[%s]" : "%s:%d:%s", u->host, u->port, ip);
        if ((size_t)n < outlen) {
            FUZZ_CHECK(e == KZ_OK && !strcmp(out, want), "entry \"%.300s\" want \"%.300s\" e=%d",
                       e ? "" : out, want, e);
        } else {
            FUZZ_CHECK(e == KZ_ERR_TOOBIG, "entry of %d bytes in %zu: e=%d", n, outlen, e);
            FUZZ_CHECK(!outlen || out[0] == '\0', "%s", "out not emptied on TOOBIG");
        }
    }
    free(out);
}

#define MAX_RECS 8

/* Builds a getaddrinfo()-style list from the records in [p, end) and checks the policy. */
static void check_addrs(const uint8_t *p, const uint8_t *end, size_t iplen)
{
    struct sockaddr_storage ss[MAX_RECS];
    struct addrinfo ai[MAX_RECS];
    size_t n = 0, i;
    bool all_public = true, any_inet = false;
    char first[INET6_ADDRSTRLEN] = "";
    int pass;

    memset(ai, 0, sizeof(ai));
    memset(ss, 0, sizeof(ss));
    while (p < end && n < MAX_RECS) {
        uint8_t fam = *p++ % 3;
        size_t need = fam == 0 ? 4 : fam == 1 ? 16 : 0;

        if ((size_t)(end - p) < need)
            break;
        if (fam == 0) {
            struct sockaddr_in *s = (struct sockaddr_in *)&ss[n];

            s->sin_family = AF_INET;
            memcpy(&s->sin_addr, p, 4);
            ai[n].ai_addrlen = sizeof(*s);
            if (classify4(ntohl(s->sin_addr.s_addr)) != KZ_ADDR_PUBLIC)
                all_public = false;
            if (!any_inet)
                inet_ntop(AF_INET, &s->sin_addr, first, sizeof(first));
            any_inet = true;
        } else if (fam == 1) {
            struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss[n];

            s->sin6_family = AF_INET6;
            memcpy(&s->sin6_addr, p, 16);
            ai[n].ai_addrlen = sizeof(*s);
            if (classify6(p) != KZ_ADDR_PUBLIC)
                all_public = false;
            if (!any_inet)
                inet_ntop(AF_INET6, &s->sin6_addr, first, sizeof(first));
            any_inet = true;
        } else {
            ss[n].ss_family = AF_UNIX;
            ai[n].ai_addrlen = sizeof(sa_family_t);
            all_public = false; /* kz_addr_classify: any other family is RESERVED */
        }
        p += need;
        ai[n].ai_family = ss[n].ss_family;
        ai[n].ai_addr = (struct sockaddr *)&ss[n];
        if (n)
            ai[n - 1].ai_next = &ai[n];
        n++;
    }
    for (pass = 0; pass < 2; pass++) {
        bool allow_private = pass;
        char *ip = malloc(iplen ? iplen : 1);
        const char *why = NULL;
        enum kz_err e;

        if (!ip)
            abort();
        e = kz_url_check_addrs(n ? ai : NULL, allow_private, ip, iplen, &why);
        if (!allow_private && !all_public) {
            FUZZ_CHECK(e == KZ_ERR_UNSAFE && why, "a non-public list passed the guard: e=%d", e);
        } else if (!any_inet) {
            FUZZ_CHECK(e == KZ_ERR_INVALID && why, "a list without addresses: e=%d", e);
        } else if (strlen(first) >= iplen) {
            FUZZ_CHECK(e == KZ_ERR_TOOBIG && why, "ip %s in %zu bytes: e=%d", first, iplen, e);
        } else {
            FUZZ_CHECK(e == KZ_OK && !strcmp(ip, first), "first address %s, got e=%d %.60s", first,
                       e, e ? "" : ip);
        }
        for (i = 0; e == KZ_OK && !allow_private && i < n; i++)
            FUZZ_CHECK(kz_addr_classify(ai[i].ai_addr) == KZ_ADDR_PUBLIC, "%s",
                       "accepted list has a non-public entry");
        free(ip);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size, *piece;
    size_t len, sizes = 400, iplen = INET6_ADDRSTRLEN;
    char *url, *ip = NULL;
    struct kz_url u[2];
    enum kz_err e[2];
    const char *why;
    int64_t live = kz_alloc_live();
    int pass;

    piece = fuzz_next_piece(&p, end, &len);
    url = fuzz_cstr(piece, len);
    if (p < end) {
        piece = fuzz_next_piece(&p, end, &len);
        ip = fuzz_cstr(piece, len);
        if (p < end) {
            sizes = *p++;
            iplen = sizes % 48;
        }
    }

    for (pass = 0; pass < 2; pass++) {
        why = NULL;
        e[pass] = kz_url_parse(url, pass == 1, &u[pass], &why);
        FUZZ_CHECK(e[pass] == KZ_OK || e[pass] == KZ_ERR_INVALID, "kz_url_parse returned %d",
                   e[pass]);
        if (e[pass]) {
            FUZZ_CHECK(why && *why, "%s", "an error without a reason");
            continue;
        }
        check_accepted(url, pass == 1, &u[pass]);
        check_classify(&u[pass]);
    }
    if (!e[0]) {
        FUZZ_CHECK(!e[1], "accepted without http but rejected with it: %s", url);
        FUZZ_CHECK(!memcmp(&u[0], &u[1], sizeof(u[0])), "allow_http changed the result for %s",
                   url);
    }
    if (!ci_prefix(url, "https://"))
        FUZZ_CHECK(e[0], "non-https URL accepted without allow_http: %s", url);
    /* NULL why is allowed. */
    kz_url_parse(url, false, &u[0], NULL);

    if (!e[1]) {
        if (u[1].is_ip_literal)
            check_entry(&u[1], u[1].host, sizes == 400 ? 400 : sizes);
        check_entry(&u[1], ip ? ip : "203.0.113.7", sizes == 400 ? 400 : sizes);
        check_entry(&u[1], ip, 400);
    }
    check_addrs(p, end, iplen);
    if (size >= 4)
        check_v4_forms((uint32_t)data[size - 4] << 24 | (uint32_t)data[size - 3] << 16 |
                       (uint32_t)data[size - 2] << 8 | data[size - 1]);
    FUZZ_CHECK(kz_alloc_live() == live, "%s", "kz_alloc_live changed");
    free(url);
    free(ip);
    return 0;
}
