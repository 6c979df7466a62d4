/* openapi.h — docs/openapi.json, embedded into the binary at build time: the Makefile generates
 * $(BUILD)/gen/openapi_json.c from the file (od + sed), so GET /openapi.json serves exactly the
 * bytes in the repository and needs no file beside the binary. Read-only data; any thread. */
#ifndef KZ_OPENAPI_H
#define KZ_OPENAPI_H

#include <stddef.h>

/** The bytes of docs/openapi.json, followed by one NUL that kz_openapi_json_len does not count. */
extern const unsigned char kz_openapi_json[];
/** The length of docs/openapi.json in bytes. */
extern const size_t kz_openapi_json_len;

#endif
