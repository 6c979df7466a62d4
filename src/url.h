/* url.h — callback URL parsing and the SSRF guard (docs/internals/SSRF.md).
 *
 * A callback URL is checked twice: kz_url_parse() decides whether the text is acceptable at all,
 * and kz_url_resolve() decides whether the addresses its host resolves to may be contacted.
 * The delivery code then pins curl to the checked address with kz_url_resolve_entry(), so a DNS
 * answer that changes between the check and the connect (DNS rebinding) cannot redirect it.
 *
 * kz_url_parse(), kz_addr_classify(), kz_addr_class_name() and kz_url_resolve_entry() are pure
 * and any thread may call them. kz_url_resolve() blocks in getaddrinfo() for as long as the
 * system resolver takes; call it from a thread that may block (not the curl multi loop).
 * curl_global_init() must have run before kz_url_parse() is called from several threads.
 */
#ifndef KZ_URL_H
#define KZ_URL_H

#include "kz.h"

#include <sys/socket.h>

/** Longest callback URL accepted, in bytes. */
#define KZ_URL_MAX 2048

/** A parsed callback URL: only what the SSRF guard and the connection pinning need. */
struct kz_url {
    char scheme[8];     /* "https", or "http" when allowed; lower case */
    char host[256];     /* lower case, no brackets; IP literals in canonical numeric form */
    int port;           /* explicit port, else the scheme default (443 or 80); 1..65535 */
    bool is_ip_literal; /* host is an IPv4 or IPv6 address, not a name */
};

/**
 * Parses and validates the absolute callback URL `url`. Accepted: `https://` (and `http://` when
 * `allow_http`) URLs of at most KZ_URL_MAX bytes, printable ASCII only, with a non-empty host,
 * no userinfo (`user:pass@`, even empty), no fragment (not even a bare `#`), no backslash, no
 * percent-encoding in the host, no IPv6 zone id, and a port in 1..65535 when one is given.
 * Hosts are normalized the way curl connects to them: odd IPv4 spellings such as `0x7f.1`,
 * `0177.0.0.1`, `127.1` or `2130706433` become `127.0.0.1` and set `is_ip_literal`, so that
 * the address classification sees the real address.
 * On success fills `*out` and returns KZ_OK. On failure returns KZ_ERR_INVALID, leaves `*out`
 * in an unspecified state and, when `why` is not NULL, sets `*why` to a static message fit for
 * an API error body. Does not touch the network.
 */
enum kz_err kz_url_parse(const char *url, bool allow_http, struct kz_url *out, const char **why);

/** What kind of destination an address is, for the SSRF guard. Only PUBLIC may be contacted
 * unless private targets are allowed. */
enum kz_addr_class {
    KZ_ADDR_PUBLIC,
    KZ_ADDR_LOOPBACK,
    KZ_ADDR_PRIVATE,
    KZ_ADDR_LINKLOCAL,
    KZ_ADDR_MULTICAST,
    KZ_ADDR_UNSPECIFIED,
    KZ_ADDR_RESERVED,
};

/**
 * Classifies an AF_INET or AF_INET6 socket address (`sa` must point at a sockaddr_in or
 * sockaddr_in6 respectively). IPv4: 0/8 unspecified; 127/8 loopback; 10/8, 172.16/12,
 * 192.168/16, 100.64/10 private; 169.254/16 link-local; 224/4 multicast; 240/4 (including
 * 255.255.255.255), 192.0.0/24, 192.0.2/24, 198.18/15, 198.51.100/24, 203.0.113/24 reserved.
 * IPv6: :: unspecified; ::1 loopback; fc00::/7 private; fe80::/10 link-local; fec0::/10
 * reserved; ff00::/8 multicast; 2001:db8::/32 and 100::/64 reserved; the IPv4 address embedded
 * in ::ffff:0:0/96 (mapped), ::/96 (compatible), 64:ff9b::/96 (NAT64) and 2002::/16 (6to4) is
 * classified as IPv4. Everything else is PUBLIC. Any other address family is RESERVED.
 */
enum kz_addr_class kz_addr_classify(const struct sockaddr *sa);

/** Static lower-case name of `c` ("public", "loopback", "link-local", ...); never NULL. */
const char *kz_addr_class_name(enum kz_addr_class c);

/**
 * Resolves `u->host` with getaddrinfo() (both address families, AI_ADDRCONFIG off, numeric-only
 * for IP literals) and checks every address returned. When `allow_private` is false and ANY of
 * them is not KZ_ADDR_PUBLIC, returns KZ_ERR_UNSAFE and sets `*why`, because curl could pick
 * any of them. When the name does not resolve, returns KZ_ERR_INVALID ("host does not
 * resolve"). On success writes the first address getaddrinfo() returned, in numeric form
 * (IPv6 without brackets), into `ip` (`iplen` bytes; INET6_ADDRSTRLEN always suffices) and
 * returns KZ_OK; KZ_ERR_TOOBIG if it does not fit. `why`, when not NULL, is set on every error
 * to a static message. Blocking; see the header comment.
 */
enum kz_err kz_url_resolve(const struct kz_url *u, bool allow_private, char *ip, size_t iplen,
                           const char **why);

struct addrinfo;

/**
 * The policy half of kz_url_resolve(), for a list some resolver already produced: checks every
 * entry of the getaddrinfo()-style list `res` (borrowed; may be NULL) and, when all pass,
 * writes the first AF_INET/AF_INET6 address in numeric form into `ip`. Same results and
 * messages as kz_url_resolve(); an empty list, or one without any IPv4/IPv6 address, is
 * KZ_ERR_INVALID ("host does not resolve"). Pure; any thread may call.
 */
enum kz_err kz_url_check_addrs(const struct addrinfo *res, bool allow_private, char *ip,
                               size_t iplen, const char **why);

/**
 * Builds the CURLOPT_RESOLVE entry "host:port:ip" (an IPv6 `ip` is written in brackets) that
 * makes curl connect to `ip`, the address kz_url_resolve() checked, and nothing else.
 * Returns KZ_OK with the NUL-terminated entry in `out`; KZ_ERR_INVALID when `ip` is not a
 * numeric IPv4 or IPv6 address; KZ_ERR_TOOBIG when `outlen` is too small.
 * Returns KZ_ERR_NOTFOUND, writing "" to `out` (when `outlen` > 0), when `u->host` is an IPv6
 * literal: curl (7.88) cannot express such a host in CURLOPT_RESOLVE and rejects the transfer
 * if one is given, and needs no entry because it connects to the literal itself, which
 * kz_url_resolve() has already checked. The caller then simply sets no CURLOPT_RESOLVE.
 */
enum kz_err kz_url_resolve_entry(const struct kz_url *u, const char *ip, char *out, size_t outlen);

#endif
