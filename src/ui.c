/* ui.c — serves the embedded console files (ui.h). */
#include "ui.h"
#include "api_internal.h"

#include <string.h>
#include <strings.h>

/* No inline script or style, no eval, nothing from another origin; uPlot sets its styles through
 * the CSSOM, which style-src does not restrict. */
#define CSP                                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "              \
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "                   \
    "frame-ancestors 'none'"

static const char *type_of(const char *name)
{
    const char *dot = strrchr(name, '.');

    if (!dot)
        return "application/octet-stream";
    if (!strcmp(dot, ".html"))
        return "text/html; charset=utf-8";
    if (!strcmp(dot, ".css"))
        return "text/css; charset=utf-8";
    if (!strcmp(dot, ".js"))
        return "text/javascript; charset=utf-8";
    if (!strcmp(dot, ".svg"))
        return "image/svg+xml";
    return "application/octet-stream";
}

/* The headers of every console answer, errors included; `etag` is set per answer. */
static void headers(struct kz_req *req, const char *cache, const char *etag, const char *location)
{
    size_t n = 0;

    req->headers[n++] = "Content-Security-Policy";
    req->headers[n++] = CSP;
    req->headers[n++] = "X-Frame-Options";
    req->headers[n++] = "DENY";
    req->headers[n++] = "X-Content-Type-Options";
    req->headers[n++] = "nosniff";
    req->headers[n++] = "Referrer-Policy";
    req->headers[n++] = "no-referrer";
    req->headers[n++] = "Cache-Control";
    req->headers[n++] = cache;
    if (etag) {
        req->headers[n++] = "ETag";
        req->headers[n++] = etag;
    }
    if (location) {
        req->headers[n++] = "Location";
        req->headers[n++] = location;
    }
    req->headers[n] = NULL;
}

enum kz_err kz_ui_serve(struct kz_req *req)
{
    const char *p = req->path, *name, *inm;
    const struct kz_ui_asset *a;

    /* the request came by "/ui": skip doubled slashes as the router does */
    while (*p == '/')
        p++;
    name = p + 2;
    headers(req, "no-store", NULL, NULL);
    if (strcmp(req->method, "GET") && strcmp(req->method, "HEAD"))
        return kz_api_method_not_allowed(req, "GET");
    if (!*name) {
        headers(req, "no-store", NULL, "/ui/");
        req->status = 308;
        req->content_type = "text/plain; charset=utf-8";
        kz_buf_reset(&req->out);
        kz_buf_puts(&req->out, "/ui/\n");
        return KZ_OK;
    }
    if (*name != '/')
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such endpoint");
    while (*name == '/')
        name++;
    if (!*name)
        name = "index.html";
    for (a = kz_ui_assets; a->name; a++) {
        if (!strcmp(a->name, name))
            break;
    }
    if (!a->name)
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no console file %s", name);
    /* revalidated every time (a new binary may serve new files under the same names), answered
     * 304 when unchanged */
    headers(req, "no-cache", a->etag, NULL);
    inm = req->header(req->conn, "If-None-Match");
    kz_buf_reset(&req->out);
    req->content_type = type_of(a->name);
    if (inm && strstr(inm, a->etag)) {
        req->status = 304;
        return KZ_OK;
    }
    req->status = 200;
    if (kz_buf_append(&req->out, a->data, a->len))
        return kz_api_internal(req, KZ_ERR_NOMEM);
    return KZ_OK;
}
