/* envelope.h — the bytes of a delivery (README "Publishing and delivery"): the Kaizala envelope,
 * built from the stored event and webhook rows with a fixed field order, so every attempt sends
 * identical bytes without a body being stored per delivery. `data` is spliced in as stored (compact
 * JSON). Pure; any thread. */
#ifndef KZ_ENVELOPE_H
#define KZ_ENVELOPE_H

#include "buf.h"
#include "model.h"

/** Appends the envelope of `ev` for webhook `wh` to `out`:
 * {"subscriptionId","objectId","objectType","eventType","eventId","groupId" (when set),"data",
 *  "context" (when set),"fromUser","fromUserId","fromUserName","fromUserProfilePic"}
 * (the fromUser* fields are "" when the event had none). KZ_ERR_TOOBIG if over out->max. */
enum kz_err kz_envelope_build(const struct kz_webhook *wh, const struct kz_event *ev,
                              struct kz_buf *out);

#endif
