/* alloc.h — allocation wrappers (docs/STYLE.md rule 7): abort on OOM, so callers never check for
 * NULL. Every build counts live allocations; tests assert the count is 0 after shutdown.
 * Thread-safe: any thread may call any function here. */
#ifndef KZ_ALLOC_H
#define KZ_ALLOC_H

#include <stddef.h>
#include <stdint.h>

/** malloc that never returns NULL (aborts on OOM). kz_malloc(0) returns a unique pointer. */
void *kz_malloc(size_t n);
/** calloc that never returns NULL; aborts on overflow of n*size. */
void *kz_calloc(size_t n, size_t size);
/** realloc that never returns NULL. kz_realloc(NULL, n) == kz_malloc(n). */
void *kz_realloc(void *p, size_t n);
/** Free; NULL-safe. */
void kz_free(void *p);
/** Copy of the NUL-terminated `s`; kz_strdup(NULL) returns NULL. Caller frees. */
char *kz_strdup(const char *s);
/** Copy of `n` bytes plus a NUL. Caller frees. */
char *kz_strndup(const char *s, size_t n);
/** Number of allocations made through this module and not yet freed. */
int64_t kz_alloc_live(void);

#endif
