/* callback.h — the callback URL handshake of CONTRACT §4.5:
 * GET <url>?validationToken=<32 url-safe chars> must answer 2xx within --validation-timeout with
 * the token as its whitespace-trimmed body. Blocking (runs on an MHD worker thread). */
#ifndef KZ_CALLBACK_H
#define KZ_CALLBACK_H

#include "outbound.h"

/** KZ_OK when the receiver at `url` (already checked into `t`) echoes a fresh token; otherwise
 * KZ_ERR_INVALID with a short reason in `why` (never contains secrets). */
enum kz_err kz_callback_validate(const struct kz_config *cfg, const char *url,
                                 const struct kz_target *t, char *why, size_t whylen);

#endif
