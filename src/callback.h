/* callback.h — the callback URL handshake (README.md "Callback URL handshake"):
 * GET <url>?validationToken=<32 url-safe chars> must answer 2xx within --validation-timeout with
 * the token as its whitespace-trimmed body.
 *
 * Handshakes never run on an API worker: kz_handshake_start() queues one and returns at once.
 * A few resolver threads do the blocking part (parse, DNS, the SSRF guard: kz_target_check),
 * then one outbound thread runs every handshake's HTTP exchange on a libcurl multi handle, with
 * the same easy-handle setup as deliveries (outbound.h: address pinning, open-socket guard,
 * trust store). Each handshake ends with exactly one call of its `done`, on one of those
 * threads.
 *
 * Threads: kz_handshake_start and kz_handshaker_close from any thread; new/free from the thread
 * that owns the api. `done` must not block for long (it runs beside other handshakes). */
#ifndef KZ_CALLBACK_H
#define KZ_CALLBACK_H

#include "outbound.h"

/* Handshakes queued or running at once, all applications together; one more is refused. */
#define KZ_HANDSHAKES_MAX 1024

/** How a handshake ended. */
struct kz_handshake_result {
    /* KZ_OK: the receiver echoed the token. KZ_ERR_INVALID or KZ_ERR_UNSAFE with `bad_url`: the
     * URL or its address was refused before any request. KZ_ERR_INVALID without: the receiver
     * failed the handshake. KZ_ERR_BUSY: the handshaker is shutting down. */
    enum kz_err e;
    bool bad_url;
    char why[300]; /* a short reason (never contains secrets); "" on success */
};

/** Called once per handshake, on a handshaker thread; `r` is valid during the call only. */
typedef void kz_handshake_done_fn(void *arg, const struct kz_handshake_result *r);

struct kz_handshaker;

/** Starts the resolver threads and the outbound thread over borrowed `cfg` (which must hold the
 * trust store). NULL when threads or the multi handle cannot be created. */
struct kz_handshaker *kz_handshaker_new(const struct kz_config *cfg);
/** From now on every start is refused with KZ_ERR_BUSY, and every handshake still queued or
 * running ends at once with KZ_ERR_BUSY (a DNS lookup in progress ends when it returns). */
void kz_handshaker_close(struct kz_handshaker *hs);
/** Closes (if not yet), waits for the threads, frees. NULL-safe. */
void kz_handshaker_free(struct kz_handshaker *hs);

/** Queues a handshake of `url` (copied). KZ_OK: done(arg, ...) will be called exactly once,
 * maybe before this returns. KZ_ERR_BUSY (closing, or KZ_HANDSHAKES_MAX in progress): done is
 * never called. */
enum kz_err kz_handshake_start(struct kz_handshaker *hs, const char *url,
                               kz_handshake_done_fn *done, void *arg);

/** Handshakes queued or running (tests, /metrics). */
int kz_handshaker_count(struct kz_handshaker *hs);

#endif
