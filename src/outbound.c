/* outbound.c — common libcurl setup for requests to callback URLs. */
#include "outbound.h"
#include "alloc.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <sys/socket.h>
#include <string.h>

enum kz_err kz_target_check(const struct kz_config *cfg, const char *url, struct kz_target *t,
                            const char **why)
{
    enum kz_err result;

    memset(t, 0, sizeof(*t));
    result = kz_url_parse(url, cfg->allow_http_callbacks, &t->url, why);
    if (result)
        return result;
    result = kz_url_resolve(&t->url, cfg->allow_private_targets, t->ip, sizeof(t->ip), why);
    if (result)
        return result;
    result = kz_url_resolve_entry(&t->url, t->ip, t->resolve_entry, sizeof(t->resolve_entry));
    if (result == KZ_ERR_NOTFOUND) /* an IPv6 literal host: curl connects to the literal itself */
        result = KZ_OK;
    if (result)
        *why = "callback host cannot be pinned";
    return result;
}

struct kz_trust {
    X509_STORE *store;
};

struct kz_trust *kz_trust_new(const char *ca_file, char *err, size_t errlen)
{
    struct kz_trust *t = kz_calloc(1, sizeof(*t));

    t->store = X509_STORE_new();
    if (!t->store || X509_STORE_set_default_paths(t->store) != 1) {
        snprintf(err, errlen, "cannot load the system certificate store");
        kz_trust_free(t);
        return NULL;
    }
    if (ca_file && X509_STORE_load_file(t->store, ca_file) != 1) {
        snprintf(err, errlen, "cannot load --ca-file %.200s", ca_file);
        kz_trust_free(t);
        return NULL;
    }
    return t;
}

void kz_trust_free(struct kz_trust *t)
{
    if (!t)
        return;
    X509_STORE_free(t->store);
    kz_free(t);
}

/* Every new TLS connection gets the store parsed once at start (the system bundle plus
 * --ca-file), instead of libcurl parsing the whole bundle again (~19 ms each). */
static CURLcode use_trust(CURL *h, void *sslctx, void *arg)
{
    struct kz_trust *t = arg;

    (void)h;
    if (X509_STORE_up_ref(t->store) != 1)
        return CURLE_OUT_OF_MEMORY;
    SSL_CTX_set_cert_store(sslctx, t->store);
    return CURLE_OK;
}

/* The last line of the SSRF guard: curl asks us for every socket it opens, with the address it
 * is about to connect to, after its own (asynchronous) resolution. Refusing non-public addresses
 * here also defeats DNS rebinding between validation and delivery. */
static curl_socket_t open_public_only(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)arg;
    (void)purpose;
    if (kz_addr_classify(&a->addr) != KZ_ADDR_PUBLIC)
        return CURL_SOCKET_BAD;
    return socket(a->family, a->socktype, a->protocol);
}

enum kz_err kz_outbound_setup(const struct kz_config *cfg, CURL *h, const char *url,
                              const struct kz_target *t, struct curl_slist **resolve_list)
{
    CURLcode rc = CURLE_OK;

    *resolve_list = NULL;
    if (t->resolve_entry[0]) {
        *resolve_list = curl_slist_append(NULL, t->resolve_entry);
        if (!*resolve_list)
            return KZ_ERR_NOMEM;
        rc |= curl_easy_setopt(h, CURLOPT_RESOLVE, *resolve_list);
    }
    rc |= curl_easy_setopt(h, CURLOPT_URL, url);
    rc |= curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR,
                           cfg->allow_http_callbacks ? "http,https" : "https");
    rc |= curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    rc |= curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt(h, CURLOPT_USERAGENT, "kzhook/" KZ_VERSION);
    rc |= curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    rc |= curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    rc |= curl_easy_setopt(h, CURLOPT_PROXY, "");
    if (!cfg->allow_private_targets)
        rc |= curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_public_only);
    KZ_ASSERT(cfg->trust);
    rc |= curl_easy_setopt(h, CURLOPT_CAINFO, NULL); /* no per-connection bundle parsing */
    rc |= curl_easy_setopt(h, CURLOPT_CAPATH, NULL);
    rc |= curl_easy_setopt(h, CURLOPT_SSL_CTX_FUNCTION, use_trust);
    rc |= curl_easy_setopt(h, CURLOPT_SSL_CTX_DATA, cfg->trust);
    return rc ? KZ_ERR_INVALID : KZ_OK;
}
