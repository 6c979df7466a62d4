/* callback.c — the validation handshake. */
#include "callback.h"
#include "buf.h"
#include "id.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define HANDSHAKE_BODY_MAX 4096

static size_t sink(char *p, size_t size, size_t n, void *arg)
{
    struct kz_buf *b = arg;

    if (kz_buf_append(b, p, size * n))
        return 0; /* more than we will ever compare: abort the transfer */
    return size * n;
}

enum kz_err kz_callback_validate(const struct kz_config *cfg, const char *url,
                                 const struct kz_target *t, char *why, size_t whylen)
{
    enum kz_err result = KZ_ERR_INVALID;
    char token[33];
    struct kz_buf full, body;
    struct curl_slist *resolve = NULL;
    CURL *h = curl_easy_init();
    CURLcode rc;
    long status = 0;
    const char *p;
    size_t len;
    char errbuf[CURL_ERROR_SIZE] = "";

    kz_buf_init(&full, KZ_URL_MAX + 64);
    kz_buf_init(&body, HANDSHAKE_BODY_MAX);
    if (!h) {
        snprintf(why, whylen, "could not create a request");
        goto out;
    }
    kz_id_token(token, 32);
    if (kz_buf_printf(&full, "%s%svalidationToken=%s", url, strchr(url, '?') ? "&" : "?", token)) {
        snprintf(why, whylen, "callback URL too long");
        goto out;
    }
    if (kz_outbound_setup(cfg, h, kz_buf_cstr(&full), t, &resolve)) {
        snprintf(why, whylen, "could not prepare the request");
        goto out;
    }
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)cfg->validation_timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    rc = curl_easy_perform(h);
    if (rc == CURLE_WRITE_ERROR) {
        snprintf(why, whylen, "callback answered more than %d bytes", HANDSHAKE_BODY_MAX);
        goto out;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        snprintf(why, whylen, "callback did not answer within %lld ms",
                 (long long)cfg->validation_timeout_ms);
        goto out;
    }
    if (rc) {
        snprintf(why, whylen, "callback request failed: %s",
                 errbuf[0] ? errbuf : curl_easy_strerror(rc));
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status > 299) {
        snprintf(why, whylen, "callback answered HTTP %ld", status);
        goto out;
    }
    p = kz_buf_cstr(&body);
    len = body.len;
    while (len && isspace((unsigned char)*p)) {
        p++;
        len--;
    }
    while (len && isspace((unsigned char)p[len - 1]))
        len--;
    if (len != 32 || memcmp(p, token, 32)) {
        snprintf(why, whylen, "callback did not echo the validationToken");
        goto out;
    }
    result = KZ_OK;
out:
    if (h)
        curl_easy_cleanup(h);
    curl_slist_free_all(resolve);
    kz_buf_cleanup(&full);
    kz_buf_cleanup(&body);
    return result;
}
