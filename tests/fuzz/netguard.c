/* netguard.c — keeps fuzz targets off the network, whatever the code under test tries.
 *
 * The api harness drives the real request path, and a webhook create or update runs the callback
 * URL handshake: kz_url_resolve() (getaddrinfo) and then a curl GET. A fuzzer must never send a
 * DNS query or a TCP SYN anywhere, so this file defines getaddrinfo() and connect() in the fuzz
 * executable. Symbols defined in an executable and referenced by the shared libraries it links
 * (libcurl) are exported and win the dynamic lookup, and src/url.c is linked statically, so every
 * caller in the process gets these versions:
 *  - getaddrinfo() answers numeric hosts (IPv4/IPv6 literals: no I/O) through the C library with
 *    AI_NUMERICHOST forced, and refuses every name with EAI_NONAME ("host does not resolve");
 *  - connect() never reaches the kernel for AF_INET/AF_INET6: it fails with ENETUNREACH, so curl
 *    sees an unreachable host at once. Unix-domain sockets are not expected; they are refused too.
 * kz_fuzz_netguard_check() verifies at start-up that the interposition took effect and aborts
 * otherwise, so a build that silently lost it cannot run. */
#define _GNU_SOURCE 1
#include "fuzz_common.h"

#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <stdatomic.h>
#include <sys/socket.h>

/** Aborts unless connect() and getaddrinfo() resolve to the guarded versions process-wide. */
void kz_fuzz_netguard_check(void);
/** How many outbound connects and name lookups the guard refused so far. */
long kz_fuzz_netguard_refused(void);

static atomic_long refused;

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static gai_fn real;
    struct addrinfo h;

    if (!real)
        real = (gai_fn)(uintptr_t)dlsym(RTLD_NEXT, "getaddrinfo");
    if (!real || !node) {
        atomic_fetch_add(&refused, 1);
        return EAI_NONAME;
    }
    if (hints)
        h = *hints;
    else
        memset(&h, 0, sizeof(h));
    h.ai_flags |= AI_NUMERICHOST;
    return real(node, service, &h, res);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    (void)fd;
    (void)addr;
    (void)len;
    atomic_fetch_add(&refused, 1);
    errno = ENETUNREACH;
    return -1;
}

long kz_fuzz_netguard_refused(void)
{
    return atomic_load(&refused);
}

void kz_fuzz_netguard_check(void)
{
    void *c = dlsym(RTLD_DEFAULT, "connect");
    void *g = dlsym(RTLD_DEFAULT, "getaddrinfo");
    struct addrinfo *res = NULL;

    FUZZ_CHECK(c == (void *)(uintptr_t)connect,
               "connect() is not interposed (got %p, want %p): refusing to run", c,
               (void *)(uintptr_t)connect);
    FUZZ_CHECK(g == (void *)(uintptr_t)getaddrinfo,
               "getaddrinfo() is not interposed (got %p, want %p): refusing to run", g,
               (void *)(uintptr_t)getaddrinfo);
    FUZZ_CHECK(getaddrinfo("fuzz.invalid", NULL, NULL, &res) != 0, "%s",
               "a name lookup got through the guard");
    FUZZ_CHECK(connect(-1, NULL, 0) == -1 && errno == ENETUNREACH, "%s", "connect() did not fail");
}
