/* id.h — random identifiers and the character-set check for identifiers taken from URL paths.
 * Randomness comes from OpenSSL's CSPRNG (RAND_bytes); a failing generator aborts the process,
 * because handing out a guessable id or token is worse than stopping. Any thread may call.
 */
#ifndef KZ_ID_H
#define KZ_ID_H

#include "kz.h"

/** Writes a random (version 4) UUID in lower-case 8-4-4-4-12 form plus NUL (37 bytes). */
void kz_id_uuid4(char out[37]);

/**
 * Writes `nchars` random characters from the 64-character URL-safe alphabet [A-Za-z0-9_-]
 * (6 bits each, uniformly distributed) followed by a NUL, so `out` must hold `nchars` + 1
 * bytes. `nchars` 0 writes just the NUL.
 */
void kz_id_token(char *out, size_t nchars);

/**
 * True when `s` is 1..`maxlen` characters, each from [A-Za-z0-9._:@+=~-], and is not "." or
 * ".." (dot segments would be rewritten by URL normalizers along the way). Used to validate
 * ids taken from request paths before they reach logs or queries. NULL is not safe.
 * Reads at most `maxlen` + 1 bytes of `s`.
 */
bool kz_id_is_safe(const char *s, size_t maxlen);

#endif
