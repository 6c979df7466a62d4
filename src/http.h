/* http.h — the libmicrohttpd adapter: turns connections into struct kz_req for the api layer.
 * epoll + a thread pool, keep-alive (libmicrohttpd 0.9.75 keeps a connection alive only when the
 * response is queued on a later handler call than the first), a 1 MiB body cap answered 413 before
 * the body is read, connection limits and timeouts, optional TLS, suspend/resume for answers that
 * arrive later (publishes). One JSON log line per request. */
#ifndef KZ_HTTP_H
#define KZ_HTTP_H

#include "api.h"

struct kz_http;

/** Starts listening per cfg (listen address, TLS, threads). Writes a message to `err` on failure.
 */
enum kz_err kz_http_start(struct kz_http **out, const struct kz_config *cfg, struct kz_api *api,
                          struct kz_metrics *m, char *err, size_t errlen);
/** Requests begun and not yet completed (their answer written, or the client gone). Any thread. */
int kz_http_active(struct kz_http *h);
/** Stops taking new connections (first step of a graceful shutdown): each one accepted from now
 * on is closed at once; connections already open keep being served. Any thread. */
void kz_http_quiesce(struct kz_http *h);
/** Stops the daemon, waiting for running handlers. NULL-safe. */
void kz_http_stop(struct kz_http *h);

#endif
