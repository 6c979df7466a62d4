/* callback.c — the validation handshake, off the API workers (see callback.h). */
#include "callback.h"
#include "alloc.h"
#include "buf.h"
#include "id.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define HANDSHAKE_BODY_MAX 4096
#define RESOLVERS 2 /* threads doing the blocking DNS of new handshakes */

struct job {
    struct job *next; /* in resolve_q, ready_q or running */
    struct kz_handshaker *hs;
    char *url;
    struct kz_target t;
    char token[33];
    struct kz_buf full; /* url + validationToken */
    struct kz_buf body; /* the answer, bounded */
    struct curl_slist *resolve;
    CURL *h;
    char errbuf[CURL_ERROR_SIZE];
    kz_handshake_done_fn *done;
    void *arg;
};

struct kz_handshaker {
    const struct kz_config *cfg;
    CURLM *multi;
    pthread_mutex_t lock;
    pthread_cond_t more; /* resolve_q got a job, or closing */
    struct job *resolve_q, **resolve_tail;
    struct job *ready_q; /* resolved, for the outbound thread (order does not matter) */
    struct job *running; /* outbound thread only */
    int count;           /* jobs anywhere between start and done */
    bool closing;
    pthread_t resolver[RESOLVERS], outbound;
    int n_resolvers;
    bool outbound_started;
};

static void job_free(struct job *j)
{
    if (j->h)
        curl_easy_cleanup(j->h);
    curl_slist_free_all(j->resolve);
    kz_buf_cleanup(&j->full);
    kz_buf_cleanup(&j->body);
    kz_free(j->url);
    kz_free(j);
}

/* Ends a job: it is freed, then done is called once. (Freed first, so that whoever waits for
 * done finds nothing of the handshake still allocated.) Any handshaker thread, without the lock. */
static void job_end(struct job *j, enum kz_err e, bool bad_url, const char *why)
{
    struct kz_handshaker *hs = j->hs;
    kz_handshake_done_fn *done = j->done;
    void *arg = j->arg;
    struct kz_handshake_result r;

    r.e = e;
    r.bad_url = bad_url;
    snprintf(r.why, sizeof(r.why), "%s", why ? why : "");
    job_free(j);
    done(arg, &r);
    pthread_mutex_lock(&hs->lock);
    hs->count--;
    pthread_mutex_unlock(&hs->lock);
}

static void job_end_closing(struct job *j)
{
    job_end(j, KZ_ERR_BUSY, false, "the service is shutting down");
}

static size_t sink(char *p, size_t size, size_t n, void *arg)
{
    struct kz_buf *b = arg;

    if (kz_buf_append(b, p, size * n))
        return 0; /* more than we will ever compare: abort the transfer */
    return size * n;
}

/* ==== resolver threads: parse, DNS, SSRF guard ==== */

static void *resolver_main(void *arg)
{
    struct kz_handshaker *hs = arg;

    for (;;) {
        struct job *j;
        const char *why = NULL;
        enum kz_err e;

        pthread_mutex_lock(&hs->lock);
        while (!hs->resolve_q && !hs->closing)
            pthread_cond_wait(&hs->more, &hs->lock);
        j = hs->resolve_q;
        if (j) {
            hs->resolve_q = j->next;
            if (!hs->resolve_q)
                hs->resolve_tail = &hs->resolve_q;
        }
        pthread_mutex_unlock(&hs->lock);
        if (!j)
            return NULL; /* closing and nothing queued */
        if (__atomic_load_n(&hs->closing, __ATOMIC_ACQUIRE)) {
            job_end_closing(j);
            continue;
        }
        e = kz_target_check(hs->cfg, j->url, &j->t, &why);
        if (e) {
            job_end(j, e, true, why ? why : "invalid");
            continue;
        }
        pthread_mutex_lock(&hs->lock);
        j->next = hs->ready_q;
        hs->ready_q = j;
        pthread_mutex_unlock(&hs->lock);
        curl_multi_wakeup(hs->multi);
    }
}

/* ==== the outbound thread: every handshake's HTTP exchange on one multi handle ==== */

/* Prepares the GET; false (with the job ended) when it cannot be made. */
static bool job_begin(struct kz_handshaker *hs, struct job *j)
{
    const char *fail = NULL;

    j->h = curl_easy_init();
    kz_id_token(j->token, 32);
    if (!j->h)
        fail = "could not create a request";
    else if (kz_buf_printf(&j->full, "%s%svalidationToken=%s", j->url,
                           strchr(j->url, '?') ? "&" : "?", j->token))
        fail = "callback URL too long";
    else if (kz_outbound_setup(hs->cfg, j->h, kz_buf_cstr(&j->full), &j->t, &j->resolve))
        fail = "could not prepare the request";
    if (!fail) {
        curl_easy_setopt(j->h, CURLOPT_HTTPGET, 1L);
        /* One request on its own connection, as a lone easy handle would: a connection the
         * multi handle kept from another handshake could be reused, and curl silently sends
         * the request again when a reused connection closes without an answer. */
        curl_easy_setopt(j->h, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(j->h, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(j->h, CURLOPT_TIMEOUT_MS, (long)hs->cfg->validation_timeout_ms);
        curl_easy_setopt(j->h, CURLOPT_WRITEFUNCTION, sink);
        curl_easy_setopt(j->h, CURLOPT_WRITEDATA, &j->body);
        curl_easy_setopt(j->h, CURLOPT_ERRORBUFFER, j->errbuf);
        curl_easy_setopt(j->h, CURLOPT_PRIVATE, j);
        if (curl_multi_add_handle(hs->multi, j->h))
            fail = "could not start the request";
    }
    if (fail) {
        job_end(j, KZ_ERR_INVALID, false, fail);
        return false;
    }
    j->next = hs->running;
    hs->running = j;
    return true;
}

/* The verdict on a finished exchange. */
static void job_verdict(struct kz_handshaker *hs, struct job *j, CURLcode rc)
{
    char why[300];
    long status = 0;
    const char *p;
    size_t len;

    if (rc == CURLE_WRITE_ERROR) {
        snprintf(why, sizeof(why), "callback answered more than %d bytes", HANDSHAKE_BODY_MAX);
        goto refused;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        snprintf(why, sizeof(why), "callback did not answer within %lld ms",
                 (long long)hs->cfg->validation_timeout_ms);
        goto refused;
    }
    if (rc) {
        snprintf(why, sizeof(why), "callback request failed: %s",
                 j->errbuf[0] ? j->errbuf : curl_easy_strerror(rc));
        goto refused;
    }
    curl_easy_getinfo(j->h, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status > 299) {
        snprintf(why, sizeof(why), "callback answered HTTP %ld", status);
        goto refused;
    }
    p = kz_buf_cstr(&j->body);
    len = j->body.len;
    while (len && isspace((unsigned char)*p)) {
        p++;
        len--;
    }
    while (len && isspace((unsigned char)p[len - 1]))
        len--;
    if (len != 32 || memcmp(p, j->token, 32)) {
        snprintf(why, sizeof(why), "callback did not echo the validationToken");
        goto refused;
    }
    job_end(j, KZ_OK, false, NULL);
    return;
refused:
    job_end(j, KZ_ERR_INVALID, false, why);
}

static void unlink_running(struct kz_handshaker *hs, struct job *j)
{
    struct job **pp = &hs->running;

    while (*pp != j)
        pp = &(*pp)->next;
    *pp = j->next;
}

static void *outbound_main(void *arg)
{
    struct kz_handshaker *hs = arg;

    for (;;) {
        struct job *ready, *j;
        CURLMsg *msg;
        int running = 0, left;
        bool closing;

        pthread_mutex_lock(&hs->lock);
        ready = hs->ready_q;
        hs->ready_q = NULL;
        closing = hs->closing;
        pthread_mutex_unlock(&hs->lock);
        while (ready) {
            j = ready;
            ready = j->next;
            if (closing)
                job_end_closing(j);
            else
                job_begin(hs, j);
        }
        if (closing) {
            while ((j = hs->running)) {
                hs->running = j->next;
                curl_multi_remove_handle(hs->multi, j->h);
                job_end_closing(j);
            }
            pthread_mutex_lock(&hs->lock);
            /* resolvers may still hand over jobs whose DNS was in progress */
            if (!hs->count) {
                pthread_mutex_unlock(&hs->lock);
                return NULL;
            }
            pthread_mutex_unlock(&hs->lock);
        }
        curl_multi_perform(hs->multi, &running);
        while ((msg = curl_multi_info_read(hs->multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
            curl_multi_remove_handle(hs->multi, j->h);
            unlink_running(hs, j);
            job_verdict(hs, j, msg->data.result);
        }
        curl_multi_poll(hs->multi, NULL, 0, closing ? 50 : 1000, NULL);
    }
}

/* ==== the handshaker ==== */

struct kz_handshaker *kz_handshaker_new(const struct kz_config *cfg)
{
    struct kz_handshaker *hs = kz_calloc(1, sizeof(*hs));
    int i;

    hs->cfg = cfg;
    hs->resolve_tail = &hs->resolve_q;
    pthread_mutex_init(&hs->lock, NULL);
    pthread_cond_init(&hs->more, NULL);
    hs->multi = curl_multi_init();
    if (!hs->multi)
        goto fail;
    for (i = 0; i < RESOLVERS; i++) {
        if (pthread_create(&hs->resolver[i], NULL, resolver_main, hs))
            goto fail;
        hs->n_resolvers++;
    }
    if (pthread_create(&hs->outbound, NULL, outbound_main, hs))
        goto fail;
    hs->outbound_started = true;
    return hs;
fail:
    kz_handshaker_free(hs);
    return NULL;
}

void kz_handshaker_close(struct kz_handshaker *hs)
{
    pthread_mutex_lock(&hs->lock);
    __atomic_store_n(&hs->closing, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&hs->more);
    pthread_mutex_unlock(&hs->lock);
    if (hs->multi)
        curl_multi_wakeup(hs->multi);
}

void kz_handshaker_free(struct kz_handshaker *hs)
{
    int i;

    if (!hs)
        return;
    kz_handshaker_close(hs);
    for (i = 0; i < hs->n_resolvers; i++)
        pthread_join(hs->resolver[i], NULL);
    if (hs->outbound_started) {
        curl_multi_wakeup(hs->multi);
        pthread_join(hs->outbound, NULL);
    }
    /* Without an outbound thread (it failed to start), resolved jobs end here. */
    while (hs->ready_q) {
        struct job *j = hs->ready_q;

        hs->ready_q = j->next;
        job_end_closing(j);
    }
    if (hs->multi)
        curl_multi_cleanup(hs->multi);
    pthread_cond_destroy(&hs->more);
    pthread_mutex_destroy(&hs->lock);
    kz_free(hs);
}

enum kz_err kz_handshake_start(struct kz_handshaker *hs, const char *url,
                               kz_handshake_done_fn *done, void *arg)
{
    struct job *j = kz_calloc(1, sizeof(*j));

    j->hs = hs;
    j->url = kz_strdup(url);
    kz_buf_init(&j->full, KZ_URL_MAX + 64);
    kz_buf_init(&j->body, HANDSHAKE_BODY_MAX);
    j->done = done;
    j->arg = arg;
    /* Checked and queued under one lock: once closing is set, no job can slip in behind the
     * threads' last look at the queues. */
    pthread_mutex_lock(&hs->lock);
    if (hs->closing || hs->count >= KZ_HANDSHAKES_MAX) {
        pthread_mutex_unlock(&hs->lock);
        job_free(j);
        return KZ_ERR_BUSY;
    }
    hs->count++;
    *hs->resolve_tail = j;
    hs->resolve_tail = &j->next;
    pthread_cond_signal(&hs->more);
    pthread_mutex_unlock(&hs->lock);
    return KZ_OK;
}

int kz_handshaker_count(struct kz_handshaker *hs)
{
    int n;

    pthread_mutex_lock(&hs->lock);
    n = hs->count;
    pthread_mutex_unlock(&hs->lock);
    return n;
}
