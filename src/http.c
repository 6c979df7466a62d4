/* http.c — libmicrohttpd adapter. */
#include "http.h"
#include "alloc.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Lingering close, off the worker threads: after an answer sent before the body was read (an
 * early 413, a refused framing), the client may still be sending. Closing a socket with unread
 * data makes the kernel send RST, and a client then often loses the answer it has not read yet.
 * So the socket (a dup of MHD's descriptor; MHD closes its own at once) gets its write side shut
 * (FIN after the answer) and is read and discarded here, by one thread for all of them, until the
 * client closes, LINGER_MS pass or LINGER_BYTES arrive. A worker never waits for a trickle. */
#define LINGER_MAX 256
#define LINGER_MS 2000
#define LINGER_BYTES (4u * 1024 * 1024)

struct lingering_sock {
    int fd;
    int64_t deadline_ms;
    size_t bytes;
};

struct kz_http {
    struct MHD_Daemon *d;
    struct kz_api *api;
    struct kz_metrics *m;
    char *tls_cert, *tls_key; /* PEM text, owned */
    pthread_t linger_thread;
    bool linger_started;
    int linger_wake[2]; /* pipe: a new socket arrived, or stop */
    pthread_mutex_t linger_lock;
    struct lingering_sock lingering[LINGER_MAX]; /* fd -1: free slot; guarded by linger_lock */
    bool linger_stop;
    atomic_int active; /* requests begun and not yet reported completed (answer sent or aborted) */
    atomic_bool closing; /* kz_http_quiesce was called: refuse new connections */
};

/* Per-request state, created on the first callback and freed when MHD reports completion. */
struct conn {
    struct kz_http *h;
    struct MHD_Connection *c;
    struct kz_req req;
    struct kz_buf body;
    int64_t started_us;
    bool too_big;
    bool early;   /* answered before reading the body (413, bad framing): linger, then close */
    bool handled; /* kz_api_handle has run */
    /* PENDING hand-back, see complete() */
    pthread_mutex_t lock;
    bool ready; /* the answer is in req */
    bool suspended;
    char method[16];
    char path[256];
};

static const char *get_header(void *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static const char *get_query(void *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

/* Any thread (the store writer): the api finished a PENDING request. The lock orders this
 * against handler() suspending the connection, so a resume never precedes its suspend. */
static void complete(struct kz_req *req)
{
    struct conn *cs = (struct conn *)((char *)req - offsetof(struct conn, req));

    pthread_mutex_lock(&cs->lock);
    cs->ready = true;
    if (cs->suspended) {
        cs->suspended = false;
        MHD_resume_connection(cs->c);
    }
    pthread_mutex_unlock(&cs->lock);
}

#define HANDOVER_MIN (64 * 1024)

static enum MHD_Result send_answer(struct conn *cs)
{
    struct kz_req *req = &cs->req;
    struct MHD_Response *r;
    enum MHD_Result ok;

    /* A large answer (a page of deliveries: up to 4 MiB) is handed to libmicrohttpd, not copied,
     * so a slow reader holds one copy of it, not two; small ones keep the buffer for reuse. */
    if (req->out.len > HANDOVER_MIN) {
        size_t len = req->out.len;

        r = MHD_create_response_from_buffer_with_free_callback(len, kz_buf_take(&req->out),
                                                               kz_free);
    } else {
        r = MHD_create_response_from_buffer(
            req->out.len, req->out.data ? req->out.data : (void *)"", MHD_RESPMEM_MUST_COPY);
    }
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", req->content_type);
    if (req->retry_after[0])
        MHD_add_response_header(r, "Retry-After", req->retry_after);
    if (req->allow)
        MHD_add_response_header(r, "Allow", req->allow);
    for (size_t i = 0; req->headers[i] && req->headers[i + 1]; i += 2)
        MHD_add_response_header(r, req->headers[i], req->headers[i + 1]);
    if (req->status == 413 || cs->early)
        MHD_add_response_header(r, "Connection", "close");
    ok = MHD_queue_response(cs->c, (unsigned)req->status, r);
    MHD_destroy_response(r);
    return ok;
}

static void error_answer(struct conn *cs, int status, const char *code, const char *msg)
{
    struct kz_buf *b = &cs->req.out;

    cs->req.status = status;
    kz_buf_reset(b);
    kz_buf_puts(b, "{\"message\":");
    kz_buf_json_str(b, msg, strlen(msg));
    kz_buf_printf(b, ",\"errorCode\":\"%s\",\"errorCategoryKey\":\"%s\"}", code,
                  status >= 500 ? "ServerError" : "ClientError");
}

/* ==== request framing ==== */

struct framing {
    unsigned te;      /* Transfer-Encoding headers */
    bool te_chunked;  /* the only one is exactly "chunked" */
    unsigned cl;      /* Content-Length headers */
    bool cl_conflict; /* two Content-Length values differ, or one is a list of different values */
    char cl_first[24];
};

/* True when s[0..n) is the same decimal number as `first` (both trimmed of blanks). */
static bool same_length(const char *s, size_t n, const char *first)
{
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return n == strlen(first) && !memcmp(s, first, n);
}

static enum MHD_Result framing_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    struct framing *f = cls;

    (void)kind;
    if (!value)
        value = "";
    if (!strcasecmp(key, "Transfer-Encoding")) {
        f->te++;
        f->te_chunked = f->te == 1 && !strcasecmp(value, "chunked");
    } else if (!strcasecmp(key, "Content-Length")) {
        const char *p = value, *comma;

        /* A value may itself be a list ("5, 5") after a proxy merged duplicates. */
        do {
            size_t n;

            comma = strchr(p, ',');
            n = comma ? (size_t)(comma - p) : strlen(p);
            if (!f->cl_first[0]) {
                while (n && (*p == ' ' || *p == '\t')) {
                    p++;
                    n--;
                }
                while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
                    n--;
                if (n >= sizeof(f->cl_first) || !n)
                    f->cl_conflict = true;
                else
                    memcpy(f->cl_first, p, n);
            } else if (!same_length(p, n, f->cl_first)) {
                f->cl_conflict = true;
            }
            p = comma ? comma + 1 : p + n;
        } while (comma);
        f->cl++;
    }
    return MHD_YES;
}

/* A request whose body length two parties could read differently is refused, so that kzhook and
 * a proxy in front of it never disagree on where the next request starts (request smuggling):
 * Content-Length together with Transfer-Encoding, Content-Length values that differ, and a
 * Transfer-Encoding other than a single "chunked" (the only one libmicrohttpd decodes).
 * Returns the message of the 400, or NULL when the framing is unambiguous. */
static const char *framing_error(struct MHD_Connection *c)
{
    struct framing f;

    memset(&f, 0, sizeof(f));
    MHD_get_connection_values(c, MHD_HEADER_KIND, framing_iter, &f);
    if (f.te && f.cl)
        return "request has both Content-Length and Transfer-Encoding";
    if (f.cl_conflict)
        return "request has conflicting Content-Length values";
    if (f.te && !f.te_chunked)
        return "unsupported Transfer-Encoding (only a single \"chunked\" is accepted)";
    return NULL;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls)
{
    struct kz_http *h = cls;
    struct conn *cs = *con_cls;
    enum kz_err e;

    (void)version;
    if (!cs) {
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        const union MHD_ConnectionInfo *ci;

        cs = kz_calloc(1, sizeof(*cs));
        atomic_fetch_add(&h->active, 1);
        cs->h = h;
        cs->c = c;
        cs->started_us = kz_mono_us();
        pthread_mutex_init(&cs->lock, NULL);
        kz_buf_init(&cs->body, KZ_BODY_MAX);
        kz_req_init(&cs->req);
        snprintf(cs->method, sizeof(cs->method), "%s", method);
        snprintf(cs->path, sizeof(cs->path), "%s", url);
        cs->req.method = cs->method;
        cs->req.path = url;
        cs->req.header = get_header;
        cs->req.query = get_query;
        cs->req.conn = c;
        cs->req.complete = complete;
        ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr) {
            const struct sockaddr *sa = ci->client_addr;

            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, cs->req.remote_ip,
                          sizeof(cs->req.remote_ip));
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr,
                          cs->req.remote_ip, sizeof(cs->req.remote_ip));
        }
        *con_cls = cs;
        /* Ambiguous framing is answered before a byte of the body is read; the connection is
         * closed after the answer (Connection: close), so nothing after it is parsed. */
        {
            const char *why = framing_error(c);

            if (why) {
                cs->early = true;
                cs->handled = true;
                cs->ready = true;
                error_answer(cs, 400, "InvalidParameters", why);
                return send_answer(cs);
            }
        }
        /* A declared body over the cap is refused before a byte of it is read; MHD closes the
         * connection after this answer. */
        if (cl && strtoull(cl, NULL, 10) > KZ_BODY_MAX) {
            cs->too_big = true;
            cs->early = true;
            cs->handled = true;
            cs->ready = true;
            error_answer(cs, 413, "PayloadTooLarge", "request body over 1 MiB");
            return send_answer(cs);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        /* A chunked body over the cap is drained without keeping it. */
        if (!cs->too_big && kz_buf_append(&cs->body, upload, *upload_size))
            cs->too_big = true;
        *upload_size = 0;
        return MHD_YES;
    }
    if (!cs->handled) {
        cs->handled = true;
        if (cs->too_big) {
            cs->ready = true;
            error_answer(cs, 413, "PayloadTooLarge", "request body over 1 MiB");
            return send_answer(cs);
        }
        cs->req.body = cs->body.data ? cs->body.data : "";
        cs->req.body_len = cs->body.len;
        e = kz_api_handle(h->api, &cs->req);
        if (e == KZ_ERR_PENDING) {
            pthread_mutex_lock(&cs->lock);
            if (!cs->ready) {
                cs->suspended = true;
                MHD_suspend_connection(c);
                pthread_mutex_unlock(&cs->lock);
                return MHD_YES;
            }
            pthread_mutex_unlock(&cs->lock);
        }
        cs->ready = true;
        return send_answer(cs);
    }
    /* Called again after a resume. */
    pthread_mutex_lock(&cs->lock);
    if (!cs->ready) {
        pthread_mutex_unlock(&cs->lock);
        return MHD_YES;
    }
    pthread_mutex_unlock(&cs->lock);
    return send_answer(cs);
}

/* ==== lingering close ==== */

/* Worker thread, from completed(): hands a dup of the connection's socket to the linger thread.
 * When every slot is taken, or dup fails, MHD's plain close stands. */
static void linger_add(struct kz_http *h, struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd;
    size_t i;

    if (!h->linger_started || !ci || ci->connect_fd < 0)
        return;
    fd = fcntl(ci->connect_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return;
    /* FIN right after the answer: the client sees its end at once, whatever it still sends. */
    shutdown(fd, SHUT_WR);
    pthread_mutex_lock(&h->linger_lock);
    for (i = 0; i < LINGER_MAX; i++) {
        if (h->lingering[i].fd < 0) {
            h->lingering[i].fd = fd;
            h->lingering[i].deadline_ms = kz_mono_ms() + LINGER_MS;
            h->lingering[i].bytes = 0;
            fd = -1;
            break;
        }
    }
    pthread_mutex_unlock(&h->linger_lock);
    if (fd >= 0) {
        close(fd);
        return;
    }
    if (write(h->linger_wake[1], "x", 1) < 0) {
        /* the pipe is full: the thread is awake already */
    }
}

/* The linger thread: reads and discards what lingering sockets still receive, closing each when
 * its client closes, it errs, or its time or byte budget runs out. */
static void *linger_main(void *arg)
{
    struct kz_http *h = arg;
    struct pollfd p[LINGER_MAX + 1];
    size_t slot[LINGER_MAX + 1];
    char scratch[16384];

    for (;;) {
        size_t n = 0, i;
        int64_t now = kz_mono_ms();
        bool stop;

        pthread_mutex_lock(&h->linger_lock);
        stop = h->linger_stop;
        for (i = 0; i < LINGER_MAX; i++) {
            struct lingering_sock *l = &h->lingering[i];

            if (l->fd < 0)
                continue;
            if (stop || now >= l->deadline_ms || l->bytes >= LINGER_BYTES) {
                close(l->fd);
                l->fd = -1;
                continue;
            }
            p[n].fd = l->fd;
            p[n].events = POLLIN;
            p[n].revents = 0;
            slot[n++] = i;
        }
        pthread_mutex_unlock(&h->linger_lock);
        if (stop)
            return NULL;
        p[n].fd = h->linger_wake[0];
        p[n].events = POLLIN;
        p[n].revents = 0;
        if (poll(p, (nfds_t)n + 1, n ? 100 : -1) < 0)
            continue;
        if (p[n].revents) {
            while (read(h->linger_wake[0], scratch, sizeof(scratch)) > 0)
                ;
        }
        for (i = 0; i < n; i++) {
            ssize_t got = 0;
            bool done = false;

            if (!p[i].revents)
                continue;
            /* Bounded per round, so one fast sender cannot starve the others. */
            while (got < (ssize_t)(4 * sizeof(scratch))) {
                ssize_t r = recv(p[i].fd, scratch, sizeof(scratch), MSG_DONTWAIT);

                if (r > 0) {
                    got += r;
                    continue;
                }
                done = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
                break;
            }
            pthread_mutex_lock(&h->linger_lock);
            h->lingering[slot[i]].bytes += (size_t)got;
            if (done) {
                close(h->lingering[slot[i]].fd);
                h->lingering[slot[i]].fd = -1;
            }
            pthread_mutex_unlock(&h->linger_lock);
        }
    }
}

static bool linger_start(struct kz_http *h)
{
    size_t i;

    for (i = 0; i < LINGER_MAX; i++)
        h->lingering[i].fd = -1;
    pthread_mutex_init(&h->linger_lock, NULL);
    if (pipe(h->linger_wake))
        return false;
    for (i = 0; i < 2; i++) {
        fcntl(h->linger_wake[i], F_SETFD, FD_CLOEXEC);
        fcntl(h->linger_wake[i], F_SETFL, O_NONBLOCK);
    }
    if (pthread_create(&h->linger_thread, NULL, linger_main, h)) {
        close(h->linger_wake[0]);
        close(h->linger_wake[1]);
        return false;
    }
    h->linger_started = true;
    return true;
}

static void linger_stop(struct kz_http *h)
{
    if (!h->linger_started)
        return;
    pthread_mutex_lock(&h->linger_lock);
    h->linger_stop = true;
    pthread_mutex_unlock(&h->linger_lock);
    if (write(h->linger_wake[1], "x", 1) < 0) {
        /* full pipe: the thread wakes anyway */
    }
    pthread_join(h->linger_thread, NULL);
    close(h->linger_wake[0]);
    close(h->linger_wake[1]);
    h->linger_started = false;
}

/* MHD_AcceptPolicyCallback: after kz_http_quiesce, every new connection is closed at once. */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct kz_http *h = cls;

    (void)addr;
    (void)addrlen;
    return atomic_load(&h->closing) ? MHD_NO : MHD_YES;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    struct kz_http *h = cls;
    struct conn *cs = *con_cls;
    char path[300], method[40];
    int status;

    if (!cs)
        return;
    if (cs->early)
        linger_add(h, c);
    status = cs->req.status;
    if (status >= 100 && status < 600)
        atomic_fetch_add(&h->m->http_requests[status / 100], 1);
    kz_log("info", "request",
           "\"method\":\"%s\",\"path\":\"%s\",\"status\":%d,\"durationMs\":%.3f,"
           "\"applicationId\":\"%s\",\"remote\":\"%s\"%s",
           kz_log_esc(cs->method, method, sizeof(method)), kz_log_esc(cs->path, path, sizeof(path)),
           status, (double)(kz_mono_us() - cs->started_us) / 1000.0, cs->req.app_id,
           cs->req.remote_ip,
           toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : ",\"aborted\":true");
    kz_req_cleanup(&cs->req);
    kz_buf_cleanup(&cs->body);
    pthread_mutex_destroy(&cs->lock);
    kz_free(cs);
    *con_cls = NULL;
    atomic_fetch_sub(&h->active, 1);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512], esc[700];

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    kz_log("warn", "http", "\"detail\":\"%s\"", kz_log_esc(msg, esc, sizeof(esc)));
}

static char *read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    struct kz_buf b;
    char chunk[4096];
    size_t n;

    if (!f) {
        snprintf(err, errlen, "cannot open %s", path);
        return NULL;
    }
    kz_buf_init(&b, 1024 * 1024);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (kz_buf_append(&b, chunk, n)) {
            snprintf(err, errlen, "%s is too large", path);
            fclose(f);
            kz_buf_cleanup(&b);
            return NULL;
        }
    }
    fclose(f);
    return kz_buf_take(&b);
}

enum kz_err kz_http_start(struct kz_http **out, const struct kz_config *cfg, struct kz_api *api,
                          struct kz_metrics *m, char *err, size_t errlen)
{
    struct kz_http *h = kz_calloc(1, sizeof(*h));
    struct sockaddr_storage ss;
    unsigned int flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                         MHD_USE_ERROR_LOG | MHD_USE_TURBO;
    socklen_t sslen;
    unsigned int per_ip;

    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, cfg->listen_host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)cfg->listen_port);
        sslen = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, cfg->listen_host, &((struct sockaddr_in6 *)&ss)->sin6_addr) ==
               1) {
        ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)cfg->listen_port);
        flags |= MHD_USE_IPv6;
        sslen = sizeof(struct sockaddr_in6);
    } else if (!strcmp(cfg->listen_host, "localhost")) {
        ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)cfg->listen_port);
        sslen = sizeof(struct sockaddr_in);
    } else {
        snprintf(err, errlen, "--listen host must be an IP address or localhost: %s",
                 cfg->listen_host);
        kz_free(h);
        return KZ_ERR_INVALID;
    }
    (void)sslen;
    h->api = api;
    h->m = m;
    if (cfg->tls_cert) {
        h->tls_cert = read_file(cfg->tls_cert, err, errlen);
        h->tls_key = h->tls_cert ? read_file(cfg->tls_key, err, errlen) : NULL;
        if (!h->tls_key) {
            kz_free(h->tls_cert);
            kz_free(h);
            return KZ_ERR_INVALID;
        }
        flags |= MHD_USE_TLS;
    }
    /* One client address may hold at most this many connections, so that a slowloris from one
     * address (headers dribbled a byte at a time never trip MHD's idle timeout) cannot take
     * every slot. */
    per_ip = cfg->max_connections_per_ip
                 ? (unsigned int)cfg->max_connections_per_ip
                 : (unsigned int)(cfg->max_connections - cfg->max_connections / 4);
    if (!linger_start(h)) {
        snprintf(err, errlen, "cannot start the lingering-close thread");
        kz_free(h->tls_cert);
        kz_free(h->tls_key);
        kz_free(h);
        return KZ_ERR_IO;
    }
    h->d = MHD_start_daemon(
        flags, (uint16_t)cfg->listen_port, accept_policy, h, handler, h, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, MHD_OPTION_SOCK_ADDR, &ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)cfg->threads, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(64 * 1024), MHD_OPTION_NOTIFY_COMPLETED, completed, h,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip, MHD_OPTION_LISTEN_BACKLOG_SIZE,
        (unsigned int)1024, cfg->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, h->tls_cert,
        MHD_OPTION_HTTPS_MEM_KEY, h->tls_key, MHD_OPTION_END);
    if (!h->d) {
        linger_stop(h);
        snprintf(err, errlen, "cannot listen on %s:%d (address in use, or bad TLS files?)",
                 cfg->listen_host, cfg->listen_port);
        kz_free(h->tls_cert);
        kz_free(h->tls_key);
        kz_free(h);
        return KZ_ERR_IO;
    }
    *out = h;
    return KZ_OK;
}

/* Not MHD_quiesce_daemon: with a thread pool on epoll, libmicrohttpd 0.9.75 lets a worker remove
 * the listen socket from its epoll set while quiesce removes it too, and the loser aborts the
 * process ("Failed to remove listen FD from epoll set"). The accept policy is read on the
 * accepting worker, so a flag is race-free. */
void kz_http_quiesce(struct kz_http *h)
{
    if (h)
        atomic_store(&h->closing, true);
}

int kz_http_active(struct kz_http *h)
{
    return h ? atomic_load(&h->active) : 0;
}

void kz_http_stop(struct kz_http *h)
{
    if (!h)
        return;
    if (h->d)
        MHD_stop_daemon(h->d);
    linger_stop(h);
    kz_free(h->tls_cert);
    kz_free(h->tls_key);
    kz_free(h);
}
