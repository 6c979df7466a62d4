/* outbound.h — what every request kzhook makes to a callback URL has in common: https only
 * (http when allowed), no redirects, curl pinned to the address the SSRF guard checked,
 * certificate verification against the system store plus --ca-file, bounded reads.
 * Used by the handshake (callback.c) and the delivery engine.
 * Threads: any thread, each with its own easy handle. */
#ifndef KZ_OUTBOUND_H
#define KZ_OUTBOUND_H

#include "config.h"
#include "url.h"

#include <curl/curl.h>

/** A checked target: the parsed URL and the address it may be reached at. */
struct kz_target {
    struct kz_url url;
    char ip[64];
    char resolve_entry[400]; /* "host:port:ip" for CURLOPT_RESOLVE, "" when host is an IP */
};

/** The certificates outbound TLS trusts: the system store plus --ca-file, parsed once. Built
 * by main before any thread starts and read-only afterwards (shared by reference count). */
struct kz_trust *kz_trust_new(const char *ca_file, char *err, size_t errlen);
void kz_trust_free(struct kz_trust *t);

/** Parses and resolves `url`, refusing unsafe targets per the configuration. On failure `*why`
 * holds a static message and the result is KZ_ERR_INVALID or KZ_ERR_UNSAFE. Blocks in DNS. */
enum kz_err kz_target_check(const struct kz_config *cfg, const char *url, struct kz_target *t,
                            const char **why);

/** Applies the common options to `h` for a request to `url` at target `t`. `*resolve_list` is set
 * to a curl_slist the caller frees with curl_slist_free_all after the transfer (may be NULL). */
enum kz_err kz_outbound_setup(const struct kz_config *cfg, CURL *h, const char *url,
                              const struct kz_target *t, struct curl_slist **resolve_list);

#endif
