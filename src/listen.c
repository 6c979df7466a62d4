/* listen.c — `kzhook listen` (listen.h). */
#include "listen.h"
#include "alloc.h"
#include "buf.h"
#include "kz.h"
#include "sign.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BODY_MAX (2 * 1024 * 1024)

struct listener {
    unsigned char key[128];
    size_t keylen;
    bool have_key;
    long count;
    pthread_mutex_t mu; /* one delivery printed at a time */
};

struct upload {
    struct kz_buf body;
    bool too_big;
};

static enum MHD_Result print_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)cls;
    (void)kind;
    printf("  %s: %s\n", key, value ? value : "");
    return MHD_YES;
}

/* "verified", "NOT verified" or why it was not checked. */
static const char *verify(struct listener *l, struct MHD_Connection *c, const struct kz_buf *body)
{
    const char *id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "webhook-id");
    const char *ts = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "webhook-timestamp");
    const char *sigs = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "webhook-signature");
    char want[KZ_SIGN_V1_SIZE];
    char *end;
    long long t;
    const char *p;

    if (!l->have_key)
        return "not checked (start with --secret whsec_... to check it)";
    if (!id || !ts || !sigs)
        return "NOT verified: webhook-id, webhook-timestamp or webhook-signature missing";
    t = strtoll(ts, &end, 10);
    if (*end || end == ts)
        return "NOT verified: webhook-timestamp is not a number";
    if (kz_sign_v1(l->key, l->keylen, id, t, body->data ? body->data : "", body->len, want,
                   sizeof(want)))
        return "NOT verified: could not compute the signature";
    /* space-separated "v1,<base64>" entries: new secret first during a rotation */
    for (p = sigs; *p;) {
        size_t n = strcspn(p, " ");
        char one[KZ_SIGN_V1_SIZE];

        if (n < sizeof(one)) {
            memcpy(one, p, n);
            one[n] = '\0';
            if (kz_ct_streq(one, want))
                return "verified";
        }
        p += n;
        while (*p == ' ')
            p++;
    }
    return "NOT verified: no signature matches --secret";
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ok;

    MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *size, void **state)
{
    struct listener *l = cls;
    struct upload *u = *state;
    const char *token;

    (void)version;
    if (!u) {
        u = kz_calloc(1, sizeof(*u));
        kz_buf_init(&u->body, BODY_MAX);
        *state = u;
        return MHD_YES;
    }
    if (*size) {
        if (!u->too_big && kz_buf_append(&u->body, data, *size))
            u->too_big = true;
        *size = 0;
        return MHD_YES;
    }
    token = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "validationToken");
    pthread_mutex_lock(&l->mu);
    if (!strcmp(method, "GET") && token) {
        printf("=== handshake %s: answered validationToken %s\n", url, token);
        fflush(stdout);
        pthread_mutex_unlock(&l->mu);
        return answer(c, 200, token);
    }
    printf("=== delivery %ld: %s %s\n", ++l->count, method, url);
    MHD_get_connection_values(c, MHD_HEADER_KIND, print_header, NULL);
    if (u->too_big) {
        printf("  (body over %d bytes, not shown)\n", BODY_MAX);
    } else {
        json_t *doc = json_loadb(u->body.data ? u->body.data : "", u->body.len, 0, NULL);
        char *pretty = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;

        printf("signature: %s\n", verify(l, c, &u->body));
        if (pretty)
            printf("%s\n", pretty);
        else
            printf("%.*s\n", (int)u->body.len, u->body.data ? u->body.data : "");
        kz_free(pretty);
        json_decref(doc);
    }
    fflush(stdout);
    pthread_mutex_unlock(&l->mu);
    return answer(c, 200, "ok");
}

static void done(void *cls, struct MHD_Connection *c, void **state,
                 enum MHD_RequestTerminationCode why)
{
    struct upload *u = *state;

    (void)cls;
    (void)c;
    (void)why;
    if (u) {
        kz_buf_cleanup(&u->body);
        kz_free(u);
    }
    *state = NULL;
}

/* A numeric IPv4 or IPv6 address and port into `ss`; -1 when `host` is not one. */
static int parse_addr(const char *host, int port, struct sockaddr_storage *ss)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;

    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    return -1;
}

static void listen_usage(void)
{
    fputs("usage: kzhook listen [--host 127.0.0.1] [--port 9000] [--secret whsec_...]\n", stderr);
}

int kz_listen_main(int argc, char **argv)
{
    struct listener l;
    const char *host = "127.0.0.1", *secret = NULL;
    long port = 9000;
    struct sockaddr_storage ss;
    struct MHD_Daemon *d;
    sigset_t sigs;
    int sig = 0, i;

    memset(&l, 0, sizeof(l));
    for (i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!strcmp(argv[i], "--port") && v) {
            char *end;

            port = strtol(v, &end, 10);
            if (*end || port < 1 || port > 65535) {
                fprintf(stderr, "kzhook listen: --port must be 1..65535\n");
                return 2;
            }
            i++;
        } else if (!strcmp(argv[i], "--host") && v) {
            host = v;
            i++;
        } else if (!strcmp(argv[i], "--secret") && v) {
            secret = v;
            i++;
        } else {
            listen_usage();
            return 2;
        }
    }
    if (secret) {
        if (strncmp(secret, "whsec_", 6) ||
            kz_sign_key_decode(secret, l.key, sizeof(l.key), &l.keylen)) {
            fprintf(stderr, "kzhook listen: --secret must be a signingSecret (whsec_<base64>)\n");
            return 2;
        }
        l.have_key = true;
    }
    memset(&ss, 0, sizeof(ss));
    if (parse_addr(host, (int)port, &ss)) {
        fprintf(stderr, "kzhook listen: --host must be an IP address\n");
        return 2;
    }
    pthread_mutex_init(&l.mu, NULL);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                             (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
                         0, NULL, NULL, handle, &l, MHD_OPTION_SOCK_ADDR, &ss,
                         MHD_OPTION_NOTIFY_COMPLETED, done, NULL, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "kzhook listen: cannot listen on %s:%ld\n", host, port);
        pthread_mutex_destroy(&l.mu);
        return 1;
    }
    printf("kzhook listen: receiving on http://%s%s%s:%ld/ (signature %s); Ctrl-C stops\n",
           strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port,
           l.have_key ? "checked with --secret" : "not checked: no --secret");
    fflush(stdout);
    while (sig != SIGINT && sig != SIGTERM)
        sigwait(&sigs, &sig);
    MHD_stop_daemon(d);
    pthread_mutex_destroy(&l.mu);
    return 0;
}
