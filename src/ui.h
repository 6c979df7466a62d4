/* ui.h — the web console at /ui/ (README "Console and statistics"): HTML, CSS and ES modules
 * embedded into the binary at build time (the Makefile writes build/gen/ui_assets.c from ui/ and
 * uPlot's dist files), so nothing beside the binary is read at run time and nothing is fetched
 * from another host. Every answer carries a Content-Security-Policy without unsafe-inline or
 * unsafe-eval, X-Frame-Options: DENY, nosniff and no-referrer. */
#ifndef KZ_UI_H
#define KZ_UI_H

#include "api.h"

#include <stddef.h>

/** One embedded file. */
struct kz_ui_asset {
    const char *name; /* path under /ui/, e.g. "index.html", "vendor/uPlot.esm.js" */
    const unsigned char *data;
    size_t len;
    const char *etag; /* a checksum of the content, computed at build time */
};

/** The embedded files, ended by an entry whose name is NULL (generated). */
extern const struct kz_ui_asset kz_ui_assets[];

/** Answers GET/HEAD `path` (the request path, starting with "/ui"): the file, 304 when
 * If-None-Match names its ETag, a redirect from "/ui" to "/ui/", or the JSON 404/405. */
enum kz_err kz_ui_serve(struct kz_req *req);

#endif
