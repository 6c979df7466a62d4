/* envelope.h — the bytes of a delivery (README "Publishing and delivery"): the Kaizala envelope,
 * built from the stored event and webhook rows with a fixed field order, so every attempt sends
 * identical bytes without a body being stored per delivery. `data` is spliced in as stored (compact
 * JSON). Also the check of the traceparent header a publish passes on to its deliveries. Pure; any
 * thread. */
#ifndef KZ_ENVELOPE_H
#define KZ_ENVELOPE_H

#include "buf.h"
#include "model.h"

/** Appends the envelope of `ev` for webhook `wh` to `out`, in the field order of real Kaizala
 * callbacks (README.md, "Migrating a Kaizala connector"):
 * {"subscriptionId","objectId","objectType","eventType","eventId","data","context" (when set),
 *  "fromUser","fromUserId","isBotfromUser","fromUserName","fromUserProfilePic",
 *  "groupId" (when set),"sourceGroupId" (when set; else the groupId, when that is set)}
 * (the fromUser* fields are "" when the event had none; isBotfromUser is true or false).
 * KZ_ERR_TOOBIG if over out->max; `out` may then hold part of the envelope. */
enum kz_err kz_envelope_build(const struct kz_webhook *wh, const struct kz_event *ev,
                              struct kz_buf *out);

/** Whether `s` (`len` bytes) is a W3C Trace Context `traceparent` value kzhook passes on:
 * version "00": exactly "00-" 32 lower-hex trace-id "-" 16 lower-hex parent-id "-" 2 lower-hex
 * flags (55 bytes), neither id all zeros; a higher version (2 lower-hex digits, not "ff"): the
 * same first 55 bytes, then nothing or "-" and printable ASCII, at most KZ_TRACEPARENT_MAX bytes
 * in all (forward compatibility, as the specification asks). Anything else (upper-case hex,
 * version "ff", a version-00 value with more after the flags) is false. Pure; any thread. */
bool kz_traceparent_valid(const char *s, size_t len);

#endif
