/* alloc.c — the only file that calls malloc/free (docs/STYLE.md rule 7).
 * A size header in front of each block is avoided: we count blocks, not bytes, with one atomic. */
#include "alloc.h"
#include "kz.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_llong live_blocks;

void *kz_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (!p)
        kz_panic(__FILE__, __LINE__, "out of memory allocating %zu bytes", n);
    atomic_fetch_add_explicit(&live_blocks, 1, memory_order_relaxed);
    return p;
}

void *kz_calloc(size_t n, size_t size)
{
    void *p;

    if (size && n > SIZE_MAX / size)
        kz_panic(__FILE__, __LINE__, "calloc overflow %zu x %zu", n, size);
    p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        kz_panic(__FILE__, __LINE__, "out of memory allocating %zu x %zu bytes", n, size);
    atomic_fetch_add_explicit(&live_blocks, 1, memory_order_relaxed);
    return p;
}

void *kz_realloc(void *p, size_t n)
{
    void *q;

    if (!p)
        return kz_malloc(n);
    q = realloc(p, n ? n : 1);
    if (!q)
        kz_panic(__FILE__, __LINE__, "out of memory reallocating %zu bytes", n);
    return q;
}

void kz_free(void *p)
{
    if (!p)
        return;
    atomic_fetch_sub_explicit(&live_blocks, 1, memory_order_relaxed);
    free(p);
}

char *kz_strdup(const char *s)
{
    if (!s)
        return NULL;
    return kz_strndup(s, strlen(s));
}

char *kz_strndup(const char *s, size_t n)
{
    char *p = kz_malloc(n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

int64_t kz_alloc_live(void)
{
    return atomic_load_explicit(&live_blocks, memory_order_relaxed);
}
