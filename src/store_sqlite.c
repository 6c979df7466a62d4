/* store_sqlite.c — the SQLite backend of the store (store_impl.h).
 *
 * Connections: one write connection, used only by the writer thread (write_batch), and a pool of
 * up to READ_MAX read connections opened on demand and shared by every reader thread. Each
 * connection is used by one thread at a time, so they are opened SQLITE_OPEN_NOMUTEX. WAL lets
 * readers run beside the writer and see only committed data; synchronous=FULL makes each COMMIT
 * durable (one fsync of the WAL per batch).
 *
 * Every statement is prepared once per connection (lazily, SQLITE_PREPARE_PERSISTENT) and reset
 * for reuse; strings are bound with explicit lengths, NULL pointers as SQL NULL. Every SQLite
 * return code is checked; failures are logged (statement name, code, SQLite's message, never a
 * bound value) and mapped to enum kz_err.
 */
#include "store_impl.h"
#include "alloc.h"
#include "log.h"

#include <sqlite3.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_MAX 8 /* read connections at most */
#define BUSY_TIMEOUT_MS 5000
#define WRITER_CACHE_KIB "16384" /* page cache of the write connection: indexes of big backlogs */

/* ==== schema ==== */

/* Migrations, in order; migrations[i] takes the schema from version i to i + 1. Never edit one
 * that has shipped: append a new one. Each runs in its own transaction at open. */
static const char *const migrations[] = {
    /* 1: initial schema. Times are epoch-ms integers. */
    "CREATE TABLE meta ("
    "  key TEXT PRIMARY KEY,"
    "  value TEXT NOT NULL);"
    "INSERT INTO meta(key, value) VALUES ('webhooks_version', '0');"
    "CREATE TABLE applications ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT,"
    "  object_ids_json TEXT,"
    "  secret_hash TEXT,"
    "  refresh_hash TEXT,"
    "  created_at INTEGER);"
    "CREATE TABLE access_tokens ("
    "  token_hash TEXT PRIMARY KEY,"
    "  application_id TEXT,"
    "  expires_at INTEGER);"
    "CREATE INDEX access_tokens_app ON access_tokens(application_id);"
    "CREATE TABLE webhooks ("
    "  id TEXT PRIMARY KEY,"
    "  application_id TEXT,"
    "  object_type INTEGER,"
    "  object_id TEXT,"
    "  event_mask INTEGER,"
    "  callback_url TEXT,"
    "  callback_token TEXT,"
    "  callback_context TEXT,"
    "  signing_secret TEXT,"
    "  ts_ms INTEGER,"
    "  validity_ms INTEGER,"
    "  active INTEGER);"
    "CREATE INDEX webhooks_object ON webhooks(application_id, object_type, object_id);"
    "CREATE TABLE events ("
    "  seq INTEGER PRIMARY KEY,"
    "  event_id TEXT UNIQUE NOT NULL,"
    "  event_type INTEGER,"
    "  group_id TEXT,"
    "  action_id TEXT,"
    "  action_package_id TEXT,"
    "  from_user TEXT,"
    "  from_user_id TEXT,"
    "  from_user_name TEXT,"
    "  from_user_pic TEXT,"
    "  data_json TEXT,"
    "  n_deliveries INTEGER,"
    "  created_at INTEGER);"
    "CREATE TABLE deliveries ("
    "  id INTEGER PRIMARY KEY,"
    "  webhook_id TEXT,"
    "  event_seq INTEGER,"
    "  state INTEGER,"
    "  attempts INTEGER,"
    "  next_attempt_at INTEGER,"
    "  lease_until INTEGER,"
    "  last_status INTEGER,"
    "  last_error TEXT,"
    "  last_response TEXT,"
    "  created_at INTEGER,"
    "  updated_at INTEGER);"
    "CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);"
    "CREATE INDEX deliveries_webhook ON deliveries(webhook_id, id);"
    "CREATE INDEX deliveries_event ON deliveries(event_seq);",
    /* 2: what a delivery's body took from its webhook, frozen when a PUT changes it, so that
     * every attempt of a delivery sends the same bytes (README "Publishing and delivery"). snap =
     * 0: use the webhook. */
    "ALTER TABLE deliveries ADD COLUMN snap INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE deliveries ADD COLUMN snap_object_type INTEGER;"
    "ALTER TABLE deliveries ADD COLUMN snap_object_id TEXT;"
    "ALTER TABLE deliveries ADD COLUMN snap_context TEXT;",
    /* 3: the pending rows of each webhook, for claims that must pass over excluded endpoints
     * (docs/internals/STORE.md, CLAIM). Partial: a row leaves it when it is claimed. */
    "CREATE INDEX deliveries_pending ON deliveries(webhook_id, next_attempt_at) WHERE state = 0;",
    /* 4: delivery controls (README.md "Delivery controls"): extra headers and the event filter
     * as JSON text, and the secret a rotation replaced with the end of its overlap. */
    "ALTER TABLE webhooks ADD COLUMN headers_json TEXT;"
    "ALTER TABLE webhooks ADD COLUMN filter_json TEXT;"
    "ALTER TABLE webhooks ADD COLUMN prev_secret TEXT;"
    "ALTER TABLE webhooks ADD COLUMN prev_secret_expires INTEGER NOT NULL DEFAULT 0;",
    /* 5: what real Kaizala callbacks carry besides the documented fields (isBotfromUser,
     * sourceGroupId), and the publisher's traceparent, sent with every attempt. Rows of earlier
     * versions: not a bot, sourceGroupId = groupId (envelope.c), no traceparent. */
    "ALTER TABLE events ADD COLUMN is_bot INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE events ADD COLUMN source_group_id TEXT;"
    "ALTER TABLE events ADD COLUMN traceparent TEXT;",
    /* 6: the attempt history (every attempt, kept as long as its delivery: the trigger deletes
     * it with the delivery, whichever statement does), and what the disable rule compares: when
     * a delivery's first attempt started, when its webhook's last successful attempt ended. */
    "CREATE TABLE delivery_attempts ("
    "  id INTEGER PRIMARY KEY,"
    "  delivery_id INTEGER NOT NULL,"
    "  at INTEGER NOT NULL,"
    "  duration_ms INTEGER NOT NULL,"
    "  status INTEGER,"
    "  error TEXT,"
    "  response TEXT);"
    "CREATE INDEX delivery_attempts_delivery ON delivery_attempts(delivery_id, id);"
    "CREATE TRIGGER deliveries_attempts_gc AFTER DELETE ON deliveries BEGIN"
    "  DELETE FROM delivery_attempts WHERE delivery_id = old.id; END;"
    "ALTER TABLE deliveries ADD COLUMN first_attempt_at INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE webhook_success ("
    "  webhook_id TEXT NOT NULL,"
    "  node_id TEXT NOT NULL,"
    "  at INTEGER NOT NULL,"
    "  PRIMARY KEY (webhook_id, node_id));"
    "CREATE TRIGGER webhooks_success_gc AFTER DELETE ON webhooks BEGIN"
    "  DELETE FROM webhook_success WHERE webhook_id = old.id; END;",
    /* 7: node identities and which node claimed an inflight delivery (PostgreSQL's schema; a
     * SQLite store has one node and writes no heartbeats, docs/internals/STORE.md). */
    "CREATE TABLE nodes ("
    "  id TEXT PRIMARY KEY,"
    "  incarnation TEXT NOT NULL,"
    "  started_at INTEGER NOT NULL,"
    "  heartbeat_at INTEGER NOT NULL);"
    "ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;"
    "CREATE INDEX deliveries_claimed ON deliveries(claimed_by) WHERE state = 1;",
    /* 8: statistics (README "Console and statistics"): each node's counts per minute and per
     * webhook and hour, written by the node alone (no contention), summed when read; the failing
     * state of each webhook (partial index: only failing ones are listed). Never the deliveries
     * table: /admin/v1/stats costs the same at any size. */
    "CREATE TABLE stats_minute ("
    "  minute INTEGER NOT NULL,"
    "  node_id TEXT NOT NULL,"
    "  published INTEGER NOT NULL,"
    "  succeeded INTEGER NOT NULL,"
    "  failed INTEGER NOT NULL,"
    "  dead INTEGER NOT NULL,"
    "  hist TEXT NOT NULL,"
    "  PRIMARY KEY (minute, node_id));"
    "CREATE TABLE webhook_stats ("
    "  webhook_id TEXT NOT NULL,"
    "  hour INTEGER NOT NULL,"
    "  node_id TEXT NOT NULL,"
    "  succeeded INTEGER NOT NULL,"
    "  failed INTEGER NOT NULL,"
    "  dead INTEGER NOT NULL,"
    "  PRIMARY KEY (webhook_id, hour, node_id));"
    "CREATE INDEX webhook_stats_hour ON webhook_stats(hour);"
    "CREATE TABLE webhook_state ("
    "  webhook_id TEXT PRIMARY KEY,"
    "  last_ok_at INTEGER NOT NULL,"
    "  last_fail_at INTEGER NOT NULL,"
    "  failing_since INTEGER,"
    "  last_error TEXT);"
    "CREATE INDEX webhook_state_failing ON webhook_state(failing_since)"
    "  WHERE failing_since IS NOT NULL;",
    /* 9: rateLimit and ordered (README.md "Delivery controls"). The gated webhooks (either set)
     * have an index of their own; each has a gate row (created by its first claim, deleted with
     * it): its shared token bucket and the delivery an ordered claim handed out last. The open
     * (pending or inflight) rows of each webhook in id order give an ordered webhook its oldest
     * delivery not yet final in one seek. */
    "ALTER TABLE webhooks ADD COLUMN rate_limit INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE webhooks ADD COLUMN ordered INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX webhooks_gated ON webhooks(id) WHERE rate_limit > 0 OR ordered <> 0;"
    "CREATE TABLE webhook_gates ("
    "  webhook_id TEXT PRIMARY KEY,"
    "  tokens INTEGER NOT NULL DEFAULT 0,"
    "  refilled_at INTEGER NOT NULL DEFAULT 0,"
    "  last_id INTEGER NOT NULL DEFAULT 0);"
    "CREATE TRIGGER webhooks_gates_gc AFTER DELETE ON webhooks BEGIN"
    "  DELETE FROM webhook_gates WHERE webhook_id = old.id; END;"
    "CREATE INDEX deliveries_open ON deliveries(webhook_id, id) WHERE state <= 1;",
};

/* ==== statements ==== */

/* Column lists shared by every statement that reads a whole webhook or event row; row_webhook()
 * and row_event() read them in this order. */
#define WH_COLS                                                                                    \
    "w.id, w.application_id, w.object_type, w.object_id, w.event_mask, w.callback_url, "           \
    "w.callback_token, w.callback_context, w.signing_secret, w.ts_ms, w.validity_ms, w.active, "   \
    "w.headers_json, w.filter_json, w.prev_secret, w.prev_secret_expires, w.rate_limit, w.ordered"
#define WH_NCOLS 18
#define EV_COLS                                                                                    \
    "e.seq, e.event_id, e.event_type, e.group_id, e.action_id, e.action_package_id, "              \
    "e.from_user, e.from_user_id, e.from_user_name, e.from_user_pic, e.data_json, e.created_at, "  \
    "e.is_bot, e.source_group_id, e.traceparent"
#define CLAIM_WEBHOOKS_MAX 4096 /* webhooks one claim with exclusions looks at */
#define APP_COLS "id, name, object_ids_json, secret_hash, refresh_hash, created_at"
/* what a claim reads: claim_rows() takes them in this order */
#define CLAIM_COLS                                                                                 \
    "d.id, d.attempts, d.created_at, d.snap, d.snap_object_type, d.snap_object_id,"                \
    " d.snap_context, " WH_COLS ", " EV_COLS

enum stmt_id {
    /* transaction control: write connection */
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_SAVEPOINT,
    S_SP_RELEASE,
    S_SP_ROLLBACK,
    S_VERSION_BUMP,
    S_VERSION_GET,
    /* writes */
    S_META_SET,
    S_APP_INSERT,
    S_APP_DELETE,
    S_APP_DEL_DELIVERIES,
    S_APP_DEL_WEBHOOKS,
    S_APP_DEL_TOKENS,
    S_TOKEN_PURGE,
    S_TOKEN_TRIM,
    S_TOKEN_INSERT,
    S_APP_EXISTS,
    S_WH_COUNT_APP,
    S_WH_INSERT,
    S_WH_UPDATE,
    S_WH_ROTATE,
    S_DLV_SNAP,
    S_WH_DELETE,
    S_WH_DEL_DELIVERIES,
    S_WH_ACTIVE,
    S_EV_INSERT,
    S_EV_LOOKUP,
    S_DLV_INSERT,
    S_CLAIM_SELECT,
    S_CLAIM_WH_NEXT,
    S_CLAIM_WH_SELECT,
    S_CLAIM_MARK,
    S_GATE_LIST,
    S_GATE_HEAD,
    S_GATE_ONE,
    S_GATE_SAVE,
    S_COMPLETE,
    S_ATT_INSERT,
    S_WH_SUCCESS,
    S_WH_DISABLE,
    S_RETRY_CHECK,
    S_RETRY,
    S_REPLAY,
    S_LEASE_EXPIRED,
    S_LEASE_ALL,
    S_RELEASE_OWN,
    S_NODE_UPSERT,
    S_PRUNE_DLV,
    S_PRUNE_EV_SCAN,
    S_PRUNE_EV_ORPHAN,
    S_STATS_MINUTE_SET,
    S_STATS_WH_SET,
    S_STATS_STATE_MERGE,
    S_STATS_PRUNE_MINUTES,
    S_STATS_PRUNE_WH,
    S_STATS_PRUNE_STATE,
    /* reads: read connections */
    S_PING,
    S_META_GET,
    S_APP_GET,
    S_APP_LIST,
    S_TOKEN_GET,
    S_WH_GET,
    S_WH_LIST_APP,
    S_WH_LIST_ALL,
    S_DLV_LIST,
    S_DLV_GET,
    S_ATT_LIST,
    S_DLV_OF_EVENT,
    S_BACKLOG,
    S_NEXT_DUE,
    S_STATS_MINUTES,
    S_WH_HEALTH_SUM,
    S_WH_HEALTH_STATE,
    S_FAILING_LIST,
    S__COUNT
};

static const char *const stmt_sql[S__COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SAVEPOINT] = "SAVEPOINT op",
    [S_SP_RELEASE] = "RELEASE op",
    [S_SP_ROLLBACK] = "ROLLBACK TO op",
    [S_VERSION_BUMP] = "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
                       " WHERE key = 'webhooks_version'",
    [S_VERSION_GET] = "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'webhooks_version'",

    [S_META_SET] = "INSERT INTO meta(key, value) VALUES (?1, ?2)"
                   " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    [S_APP_INSERT] = "INSERT INTO applications(" APP_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_APP_DELETE] = "DELETE FROM applications WHERE id = ?1",
    [S_APP_DEL_DELIVERIES] = "DELETE FROM deliveries WHERE webhook_id IN"
                             " (SELECT id FROM webhooks WHERE application_id = ?1)",
    [S_APP_DEL_WEBHOOKS] = "DELETE FROM webhooks WHERE application_id = ?1",
    [S_APP_DEL_TOKENS] = "DELETE FROM access_tokens WHERE application_id = ?1",
    [S_TOKEN_PURGE] = "DELETE FROM access_tokens WHERE application_id = ?1 AND expires_at < ?2",
    [S_TOKEN_TRIM] = "DELETE FROM access_tokens WHERE token_hash IN (SELECT token_hash"
                     " FROM access_tokens WHERE application_id = ?1 AND expires_at >= ?2"
                     " ORDER BY expires_at DESC, token_hash DESC LIMIT -1 OFFSET ?3)",
    [S_APP_EXISTS] = "SELECT 1 FROM applications WHERE id = ?1",
    [S_WH_COUNT_APP] = "SELECT count(*) FROM webhooks WHERE application_id = ?1",
    [S_TOKEN_INSERT] = "INSERT INTO access_tokens(token_hash, application_id, expires_at)"
                       " VALUES (?1, ?2, ?3)",
    [S_WH_INSERT] = "INSERT INTO webhooks(id, application_id, object_type, object_id, event_mask,"
                    " callback_url, callback_token, callback_context, signing_secret, ts_ms,"
                    " validity_ms, active, headers_json, filter_json, rate_limit, ordered)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
                    " ?15, ?16)",
    [S_WH_UPDATE] = "UPDATE webhooks SET object_type = ?1, object_id = ?2, event_mask = ?3,"
                    " callback_url = ?4, callback_token = ?5, callback_context = ?6,"
                    " signing_secret = COALESCE(?7, signing_secret), validity_ms = ?8,"
                    " active = ?9, headers_json = ?12, filter_json = ?13, rate_limit = ?14,"
                    " ordered = ?15"
                    " WHERE id = ?10 AND (?11 = '' OR application_id = ?11)",
    [S_WH_ROTATE] = "UPDATE webhooks SET"
                    " prev_secret = CASE WHEN ?5 > ?4 THEN signing_secret END,"
                    " prev_secret_expires = CASE WHEN ?5 > ?4 THEN ?5 ELSE 0 END,"
                    " signing_secret = ?3"
                    " WHERE id = ?1 AND (?2 = '' OR application_id = ?2)",
    /* Before a webhook's objectType/objectId/callBackContext change, its unfinished deliveries
     * keep the values their body was (or will first be) built from. */
    [S_DLV_SNAP] = "UPDATE deliveries SET snap = 1, snap_object_type = w.object_type,"
                   " snap_object_id = w.object_id, snap_context = w.callback_context"
                   " FROM webhooks AS w WHERE w.id = ?1 AND deliveries.webhook_id = ?1"
                   " AND deliveries.snap = 0 AND deliveries.state <> 2"
                   " AND (w.object_type <> ?2 OR w.object_id IS NOT ?3"
                   " OR w.callback_context IS NOT ?4)",
    [S_WH_DELETE] = "DELETE FROM webhooks WHERE id = ?1 AND (?2 = '' OR application_id = ?2)",
    [S_WH_DEL_DELIVERIES] = "DELETE FROM deliveries WHERE webhook_id = ?1",
    [S_WH_ACTIVE] = "UPDATE webhooks SET active = ?2 WHERE id = ?1",
    [S_EV_INSERT] = "INSERT INTO events(event_id, event_type, group_id, action_id,"
                    " action_package_id, from_user, from_user_id, from_user_name, from_user_pic,"
                    " data_json, n_deliveries, created_at, is_bot, source_group_id, traceparent)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                    " ON CONFLICT(event_id) DO NOTHING",
    [S_EV_LOOKUP] = "SELECT seq, n_deliveries FROM events WHERE event_id = ?1",
    [S_DLV_INSERT] = "INSERT INTO deliveries(webhook_id, event_seq, state, attempts,"
                     " next_attempt_at, lease_until, last_status, created_at, updated_at,"
                     " claimed_by)"
                     " SELECT ?1, ?2, ?3, 0, ?4, ?5, 0, ?4, ?4, ?6"
                     " WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?1)",
    /* CROSS JOIN pins deliveries as the outer loop, so the scan walks deliveries_due in
     * (next_attempt_at, id) order and stops after LIMIT rows: no sort, no full scan. */
    [S_CLAIM_SELECT] = "SELECT " CLAIM_COLS " FROM deliveries AS d"
                       " CROSS JOIN webhooks AS w ON w.id = d.webhook_id"
                       " CROSS JOIN events AS e ON e.seq = d.event_seq"
                       " WHERE d.state = 0 AND d.next_attempt_at <= ?1"
                       " AND w.rate_limit = 0 AND w.ordered = 0" /* gated: claim_gated's */
                       " ORDER BY d.next_attempt_at, d.id LIMIT ?2",
    /* The next webhook (in id order) after ?1 that has pending rows: one seek. */
    [S_CLAIM_WH_NEXT] = "SELECT webhook_id FROM deliveries INDEXED BY deliveries_pending"
                        " WHERE state = 0 AND webhook_id > ?1 ORDER BY webhook_id LIMIT 1",
    /* S_CLAIM_SELECT for one webhook. */
    [S_CLAIM_WH_SELECT] = "SELECT " CLAIM_COLS " FROM deliveries AS d INDEXED BY deliveries_pending"
                          " CROSS JOIN webhooks AS w ON w.id = d.webhook_id"
                          " CROSS JOIN events AS e ON e.seq = d.event_seq"
                          " WHERE d.webhook_id = ?3 AND d.state = 0 AND d.next_attempt_at <= ?1"
                          " ORDER BY d.next_attempt_at, d.id LIMIT ?2",
    [S_CLAIM_MARK] = "UPDATE deliveries SET state = 1, lease_until = ?1, updated_at = ?2,"
                     " claimed_by = ?4 WHERE id = ?3",
    /* The gated webhooks (rateLimit or ordered) with due rows, in id order, with their gate. */
    [S_GATE_LIST] = "SELECT w.id, w.rate_limit, w.ordered, w.active, w.validity_ms,"
                    " COALESCE(g.tokens, 0), COALESCE(g.refilled_at, 0), COALESCE(g.last_id, 0)"
                    " FROM webhooks AS w INDEXED BY webhooks_gated"
                    " LEFT JOIN webhook_gates AS g ON g.webhook_id = w.id"
                    " WHERE (w.rate_limit > 0 OR w.ordered <> 0)"
                    " AND EXISTS (SELECT 1 FROM deliveries AS d INDEXED BY deliveries_pending"
                    " WHERE d.webhook_id = w.id AND d.state = 0 AND d.next_attempt_at <= ?1)"
                    " ORDER BY w.id LIMIT ?2",
    /* An ordered webhook's oldest open delivery, and the state of the one handed out last. */
    [S_GATE_HEAD] = "SELECT (SELECT x.state FROM deliveries AS x WHERE x.id = ?2),"
                    " h.id, h.state, h.next_attempt_at FROM (SELECT 1) LEFT JOIN"
                    " (SELECT d.id, d.state, d.next_attempt_at FROM deliveries AS d"
                    " INDEXED BY deliveries_open WHERE d.webhook_id = ?1 AND d.state <= 1"
                    " ORDER BY d.id LIMIT 1) AS h ON 1 = 1",
    [S_GATE_ONE] = "SELECT " CLAIM_COLS " FROM deliveries AS d"
                   " CROSS JOIN webhooks AS w ON w.id = d.webhook_id"
                   " CROSS JOIN events AS e ON e.seq = d.event_seq"
                   " WHERE d.id = ?1 AND d.state = 0",
    [S_GATE_SAVE] = "INSERT INTO webhook_gates(webhook_id, tokens, refilled_at, last_id)"
                    " VALUES (?1, ?2, ?3, ?4) ON CONFLICT(webhook_id) DO UPDATE SET"
                    " tokens = excluded.tokens, refilled_at = excluded.refilled_at,"
                    " last_id = excluded.last_id",
    [S_COMPLETE] = "UPDATE deliveries SET state = ?1, attempts = ?2,"
                   " next_attempt_at = CASE WHEN ?1 = 0 THEN ?3 ELSE next_attempt_at END,"
                   " last_status = ?4, last_error = ?5, last_response = ?6, updated_at = ?7,"
                   " lease_until = 0,"
                   " first_attempt_at = CASE WHEN first_attempt_at = 0 THEN ?9"
                   " ELSE first_attempt_at END"
                   " WHERE id = ?8 AND state = 1",
    [S_ATT_INSERT] = "INSERT INTO delivery_attempts(delivery_id, at, duration_ms, status, error,"
                     " response) VALUES (?1, ?2, ?3, NULLIF(?4, 0), ?5, ?6)",
    [S_WH_SUCCESS] = "INSERT INTO webhook_success(webhook_id, node_id, at) SELECT ?1, ?3, ?2"
                     " WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?1)"
                     " ON CONFLICT(webhook_id, node_id) DO UPDATE SET at = excluded.at"
                     " WHERE at < excluded.at",
    /* the disable rule: nothing to the webhook succeeded since the delivery's first attempt */
    [S_WH_DISABLE] = "UPDATE webhooks SET active = 0 WHERE id = ?1 AND active <> 0"
                     " AND NOT EXISTS (SELECT 1 FROM webhook_success WHERE webhook_id = ?1"
                     " AND at > (SELECT CASE WHEN first_attempt_at > 0"
                     " THEN first_attempt_at ELSE created_at END FROM deliveries WHERE id = ?2))",
    [S_RETRY_CHECK] = "SELECT d.state, w.active, w.validity_ms FROM deliveries AS d"
                      " JOIN webhooks AS w ON w.id = d.webhook_id"
                      " WHERE d.id = ?1 AND d.webhook_id = ?2",
    [S_RETRY] = "UPDATE deliveries SET state = 0, next_attempt_at = ?3, lease_until = 0,"
                " updated_at = ?3, attempts = CASE WHEN state = 0 THEN attempts ELSE 0 END,"
                " first_attempt_at = CASE WHEN state = 0 THEN first_attempt_at ELSE 0 END"
                " WHERE id = ?1 AND webhook_id = ?2 AND state <> 1",
    [S_REPLAY] = "UPDATE deliveries SET state = 0, next_attempt_at = ?3, attempts = 0,"
                 " lease_until = 0, updated_at = ?3, first_attempt_at = 0"
                 " WHERE webhook_id = ?1 AND created_at >= ?2 AND state IN (0, 3, 4)",
    /* as on PostgreSQL: not the rows of a node whose heartbeat is younger than ?2 (none here) */
    [S_LEASE_EXPIRED] =
        "UPDATE deliveries AS d SET state = 0, next_attempt_at = ?1, lease_until = 0,"
        " updated_at = ?1 WHERE d.state = 1 AND d.lease_until < ?1"
        " AND NOT EXISTS (SELECT 1 FROM nodes AS n WHERE n.id = d.claimed_by"
        " AND n.heartbeat_at >= ?2)",
    [S_LEASE_ALL] = "UPDATE deliveries SET state = 0, next_attempt_at = ?1, lease_until = 0,"
                    " updated_at = ?1 WHERE state = 1",
    /* keeps next_attempt_at: the rows go back in their place in the due order */
    [S_RELEASE_OWN] = "UPDATE deliveries SET state = 0, lease_until = 0,"
                      " updated_at = ?1 WHERE state = 1 AND claimed_by = ?2",
    [S_NODE_UPSERT] = "INSERT INTO nodes(id, incarnation, started_at, heartbeat_at)"
                      " VALUES (?1, ?2, ?3, ?3) ON CONFLICT (id) DO UPDATE SET"
                      " incarnation = excluded.incarnation, started_at = excluded.started_at,"
                      " heartbeat_at = excluded.heartbeat_at",
    /* A succeeded delivery was attempted at or after next_attempt_at, so
     * updated_at < before implies next_attempt_at < before: the extra term turns the scan
     * into an index range instead of a walk over every succeeded row. */
    [S_PRUNE_DLV] = "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                    " WHERE state = 2 AND next_attempt_at < ?1 AND updated_at < ?1 LIMIT ?2)"
                    " RETURNING event_seq",
    [S_PRUNE_EV_SCAN] = "SELECT seq, created_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    [S_PRUNE_EV_ORPHAN] = "DELETE FROM events WHERE seq = ?1 AND created_at < ?2"
                          " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)",

    [S_PING] = "SELECT 1",
    [S_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [S_APP_GET] = "SELECT " APP_COLS " FROM applications WHERE id = ?1",
    [S_APP_LIST] = "SELECT " APP_COLS " FROM applications ORDER BY rowid",
    [S_TOKEN_GET] = "SELECT application_id, expires_at FROM access_tokens WHERE token_hash = ?1",
    [S_WH_GET] = "SELECT " WH_COLS " FROM webhooks AS w WHERE w.id = ?1",
    /* rowid order is creation order: rowids only grow while rows exist, and we never VACUUM. */
    [S_WH_LIST_APP] = "SELECT " WH_COLS " FROM webhooks AS w WHERE w.application_id = ?1"
                      " AND (?2 < 0 OR w.object_type = ?2)"
                      " AND (?3 IS NULL OR w.object_id = ?3) ORDER BY w.rowid",
    [S_WH_LIST_ALL] = "SELECT " WH_COLS " FROM webhooks AS w"
                      " WHERE (?1 < 0 OR w.object_type = ?1)"
                      " AND (?2 IS NULL OR w.object_id = ?2) ORDER BY w.rowid",
    [S_DLV_LIST] = "SELECT d.id, d.webhook_id, d.event_seq, e.event_id, e.event_type, d.state,"
                   " d.attempts, d.last_status, d.last_error, d.last_response,"
                   " d.next_attempt_at, d.created_at, d.updated_at"
                   " FROM deliveries AS d CROSS JOIN events AS e ON e.seq = d.event_seq"
                   " WHERE d.webhook_id = ?1 AND d.id < ?2 AND d.state BETWEEN ?3 AND ?4"
                   " ORDER BY d.id DESC LIMIT ?5",
    [S_DLV_GET] = "SELECT d.id, d.webhook_id, d.event_seq, e.event_id, e.event_type, d.state,"
                  " d.attempts, d.last_status, d.last_error, d.last_response,"
                  " d.next_attempt_at, d.created_at, d.updated_at, d.snap, d.snap_object_type,"
                  " d.snap_object_id, d.snap_context, " WH_COLS ", " EV_COLS
                  " FROM deliveries AS d CROSS JOIN webhooks AS w ON w.id = d.webhook_id"
                  " CROSS JOIN events AS e ON e.seq = d.event_seq"
                  " WHERE d.id = ?1 AND d.webhook_id = ?2",
    /* the newest ?2, read back oldest first by the caller */
    [S_ATT_LIST] = "SELECT at, duration_ms, status, error, response FROM delivery_attempts"
                   " WHERE delivery_id = ?1 ORDER BY id DESC LIMIT ?2",
    [S_DLV_OF_EVENT] = "SELECT d.id FROM events AS e CROSS JOIN deliveries AS d"
                       " ON d.event_seq = e.seq WHERE e.event_id = ?2 AND d.webhook_id = ?1",
    [S_BACKLOG] = "SELECT"
                  " (SELECT count(*) FROM deliveries AS d WHERE state = 0 AND next_attempt_at <= ?1"
                  " AND EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = d.webhook_id)),"
                  " (SELECT count(*) FROM deliveries WHERE state = 0 AND next_attempt_at > ?1),"
                  " (SELECT count(*) FROM deliveries WHERE state = 1)",
    /* Rows of a webhook deleted by a concurrent transaction (another node's DELETE racing a
     * publish) are never claimed: they must not make "next due" say "now" forever. */
    [S_NEXT_DUE] = "SELECT next_attempt_at FROM deliveries AS d WHERE state = 0"
                   " AND EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = d.webhook_id)"
                   " ORDER BY next_attempt_at LIMIT 1",
    [S_STATS_MINUTE_SET] =
        "INSERT INTO stats_minute(minute, node_id, published, succeeded, failed, dead, hist)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(minute, node_id) DO UPDATE SET"
        " published = excluded.published, succeeded = excluded.succeeded,"
        " failed = excluded.failed, dead = excluded.dead, hist = excluded.hist",
    [S_STATS_WH_SET] =
        "INSERT INTO webhook_stats(webhook_id, hour, node_id, succeeded, failed, dead)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        " ON CONFLICT(webhook_id, hour, node_id) DO UPDATE SET"
        " succeeded = excluded.succeeded, failed = excluded.failed,"
        " dead = excluded.dead",
    /* the latest success or failure wins; failing since the first failure after the latest
     * success, whichever node saw it (store.h, struct kz_stats_webhook) */
    [S_STATS_STATE_MERGE] =
        "INSERT INTO webhook_state(webhook_id, last_ok_at, last_fail_at, failing_since, last_error)"
        " VALUES (?1, ?2, ?3, NULLIF(?4, 0), ?5) ON CONFLICT(webhook_id) DO UPDATE SET"
        " last_ok_at = MAX(last_ok_at, excluded.last_ok_at),"
        " last_fail_at = MAX(last_fail_at, excluded.last_fail_at),"
        " last_error = CASE WHEN excluded.last_fail_at > last_fail_at"
        "   THEN excluded.last_error ELSE last_error END,"
        " failing_since = CASE WHEN MAX(last_fail_at, excluded.last_fail_at)"
        "     <= MAX(last_ok_at, excluded.last_ok_at) THEN NULL"
        "   ELSE MIN(CASE WHEN failing_since > MAX(last_ok_at, excluded.last_ok_at)"
        "              THEN failing_since ELSE MAX(last_fail_at, excluded.last_fail_at) END,"
        "            CASE WHEN excluded.failing_since > MAX(last_ok_at, excluded.last_ok_at)"
        "              THEN excluded.failing_since ELSE MAX(last_fail_at, excluded.last_fail_at) "
        "END)"
        "   END",
    [S_STATS_PRUNE_MINUTES] = "DELETE FROM stats_minute WHERE minute < ?1",
    [S_STATS_PRUNE_WH] = "DELETE FROM webhook_stats WHERE hour < ?1 - 3600000",
    [S_STATS_PRUNE_STATE] = "DELETE FROM webhook_state WHERE NOT EXISTS"
                            " (SELECT 1 FROM webhooks AS w WHERE w.id = webhook_state.webhook_id)",
    [S_STATS_MINUTES] = "SELECT minute, published, succeeded, failed, dead, hist FROM stats_minute"
                        " WHERE minute >= ?1 ORDER BY minute",
    [S_WH_HEALTH_SUM] = "SELECT COALESCE(SUM(succeeded), 0), COALESCE(SUM(failed), 0),"
                        " COALESCE(SUM(dead), 0) FROM webhook_stats"
                        " WHERE webhook_id = ?1 AND hour >= ?2",
    [S_WH_HEALTH_STATE] = "SELECT COALESCE(failing_since, 0), last_ok_at, last_fail_at, last_error"
                          " FROM webhook_state WHERE webhook_id = ?1",
    [S_FAILING_LIST] =
        "SELECT w.id, w.application_id, w.callback_url, s.failing_since, s.last_error"
        " FROM webhook_state AS s JOIN webhooks AS w ON w.id = s.webhook_id"
        " WHERE s.failing_since IS NOT NULL ORDER BY s.failing_since, s.webhook_id LIMIT ?1",
};

/* One SQLite connection and its statement cache. */
struct conn {
    sqlite3 *db;
    sqlite3_stmt *stmt[S__COUNT];
    struct conn *next; /* free list of the read pool */
};

struct kz_backend {
    char *path;
    struct conn *wr;      /* writer thread only (and open/close) */
    int64_t prune_cursor; /* events.seq where the orphan-event sweep resumes: writer only */
    bool sync_normal;     /* the write connection runs synchronous=NORMAL now: writer only */
    bool sp_open;         /* the savepoint "op" exists in the current transaction: writer only */
    char node_id[KZ_NODE_ID_MAX + 1]; /* this node (node_start): writer only */
    bool has_node;

    pthread_mutex_t pool_mu; /* guards the read pool */
    pthread_cond_t pool_cv;  /* a read connection was returned */
    struct conn *idle;       /* idle read connections */
    size_t n_read;           /* read connections open or being opened */
};

/* ==== errors ==== */

static enum kz_err map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return KZ_ERR_BUSY;
    case SQLITE_CONSTRAINT:
        return KZ_ERR_CONFLICT;
    case SQLITE_NOMEM:
        return KZ_ERR_NOMEM;
    case SQLITE_TOOBIG:
        return KZ_ERR_TOOBIG;
    default:
        return KZ_ERR_DB;
    }
}

/* Logs a failed SQLite call on connection `c` and maps its code. Constraint violations are the
 * caller's answer (a duplicate id), not a store failure, so they are not logged. SQLite's message
 * names tables and constraints, never bound values. */
static enum kz_err fail(struct conn *c, const char *what, int rc)
{
    char emsg[256];

    if ((rc & 0xff) != SQLITE_CONSTRAINT)
        kz_log("error", "store: sqlite call failed", "\"what\":\"%s\",\"rc\":%d,\"err\":\"%s\"",
               what, rc,
               kz_log_esc(c ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc), emsg, sizeof(emsg)));
    return map_rc(rc);
}

/* ==== statement helpers ==== */

/* A statement being bound and run. Binding is positional (?1, ?2... in call order), and once
 * any call fails `rc` keeps the first error and later calls do nothing, so a sequence of binds
 * needs one check, done by the step helpers. */
struct bind {
    struct conn *c;
    sqlite3_stmt *q;
    int i;
    int rc;
};

/* Fetches statement `id` of `c`, preparing it on first use. */
static void prep(struct conn *c, enum stmt_id id, struct bind *b)
{
    b->c = c;
    b->i = 0;
    b->q = c->stmt[id];
    b->rc = SQLITE_OK;
    if (b->q)
        return;
    b->rc =
        sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->stmt[id], NULL);
    b->q = c->stmt[id];
    if (!b->rc && !b->q)
        b->rc = SQLITE_MISUSE; /* empty SQL: a bug in stmt_sql */
}

static void b_textn(struct bind *b, const char *s, size_t n)
{
    int i = ++b->i;

    if (b->rc)
        return;
    if (!s)
        b->rc = sqlite3_bind_null(b->q, i);
    else
        b->rc = sqlite3_bind_text64(b->q, i, s, n, SQLITE_STATIC, SQLITE_UTF8);
}

static void b_text(struct bind *b, const char *s)
{
    b_textn(b, s, s ? strlen(s) : 0);
}

/* A fixed-size char array field: never reads past `size`. */
static void b_fixed(struct bind *b, const char *s, size_t size)
{
    b_textn(b, s, strnlen(s, size));
}

static void b_int(struct bind *b, int64_t v)
{
    int i = ++b->i;

    if (b->rc)
        return;
    b->rc = sqlite3_bind_int64(b->q, i, v);
}

/* Resets the statement for reuse and drops its bindings (they may point at borrowed memory).
 * sqlite3_reset() repeats the last step's error, which the caller already has. */
static void finish(struct bind *b)
{
    if (!b->q)
        return;
    (void)sqlite3_reset(b->q);
    (void)sqlite3_clear_bindings(b->q);
}

/* Next row: SQLITE_ROW, SQLITE_DONE, or an error (binding errors included). */
static int step(struct bind *b)
{
    if (b->rc)
        return b->rc;
    return sqlite3_step(b->q);
}

/* Runs a statement that returns no rows. SQLITE_OK or the error; the statement is finished. */
static int run(struct bind *b)
{
    int rc = step(b);

    finish(b);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs statement `id` that takes no parameters. */
static int run_plain(struct conn *c, enum stmt_id id)
{
    struct bind b;

    prep(c, id, &b);
    return run(&b);
}

/* Column text as a new string (NULL for SQL NULL). */
static char *col_dup(sqlite3_stmt *q, int col)
{
    const unsigned char *s = sqlite3_column_text(q, col);

    if (!s)
        return NULL;
    return kz_strndup((const char *)s, (size_t)sqlite3_column_bytes(q, col));
}

/* Column text into a fixed array; "" for NULL. false (and a truncated copy) when it does not fit,
 * which means a row we did not write: callers report KZ_ERR_DB. */
static bool col_fixed(sqlite3_stmt *q, int col, char *dst, size_t size)
{
    const unsigned char *s = sqlite3_column_text(q, col);
    size_t n = s ? (size_t)sqlite3_column_bytes(q, col) : 0;
    bool fits = n < size;

    if (!fits)
        n = size - 1;
    if (n)
        memcpy(dst, s, n);
    dst[n] = '\0';
    return fits;
}

/* Reads WH_COLS starting at column `c0` into `w` (which owns its strings afterwards). */
static bool row_webhook(sqlite3_stmt *q, int c0, struct kz_webhook *w)
{
    bool ok = col_fixed(q, c0, w->id, sizeof(w->id));

    ok = col_fixed(q, c0 + 1, w->app_id, sizeof(w->app_id)) && ok;
    w->object_type = (enum kz_objtype)sqlite3_column_int(q, c0 + 2);
    w->object_id = col_dup(q, c0 + 3);
    w->event_mask = (uint32_t)sqlite3_column_int64(q, c0 + 4);
    w->callback_url = col_dup(q, c0 + 5);
    w->callback_token = col_dup(q, c0 + 6);
    w->callback_context = col_dup(q, c0 + 7);
    w->signing_secret = col_dup(q, c0 + 8);
    w->ts_ms = sqlite3_column_int64(q, c0 + 9);
    w->validity_ms = sqlite3_column_int64(q, c0 + 10);
    w->active = sqlite3_column_int(q, c0 + 11) != 0;
    w->headers_json = col_dup(q, c0 + 12);
    w->filter_json = col_dup(q, c0 + 13);
    w->prev_secret = col_dup(q, c0 + 14);
    w->prev_expires = sqlite3_column_int64(q, c0 + 15);
    w->rate_limit = sqlite3_column_int(q, c0 + 16);
    w->ordered = sqlite3_column_int(q, c0 + 17) != 0;
    return ok;
}

/* Reads EV_COLS starting at column `c0` into `e` (which owns its strings afterwards). */
static void row_event(sqlite3_stmt *q, int c0, struct kz_event *e)
{
    e->seq = sqlite3_column_int64(q, c0);
    e->event_id = col_dup(q, c0 + 1);
    e->event_type = (enum kz_evtype)sqlite3_column_int(q, c0 + 2);
    e->group_id = col_dup(q, c0 + 3);
    e->action_id = col_dup(q, c0 + 4);
    e->action_package_id = col_dup(q, c0 + 5);
    e->from_user = col_dup(q, c0 + 6);
    e->from_user_id = col_dup(q, c0 + 7);
    e->from_user_name = col_dup(q, c0 + 8);
    e->from_user_pic = col_dup(q, c0 + 9);
    e->data_json = col_dup(q, c0 + 10);
    e->created_at = sqlite3_column_int64(q, c0 + 11);
    e->is_bot = sqlite3_column_int(q, c0 + 12) != 0;
    e->source_group_id = col_dup(q, c0 + 13);
    e->traceparent = col_dup(q, c0 + 14);
}

static bool row_app(sqlite3_stmt *q, struct kz_app *a)
{
    bool ok = col_fixed(q, 0, a->id, sizeof(a->id));

    a->name = col_dup(q, 1);
    a->object_ids_json = col_dup(q, 2);
    ok = col_fixed(q, 3, a->secret_hash, sizeof(a->secret_hash)) && ok;
    ok = col_fixed(q, 4, a->refresh_hash, sizeof(a->refresh_hash)) && ok;
    a->created_at = sqlite3_column_int64(q, 5);
    return ok;
}

/* ==== connections ==== */

/* Creates every missing directory above the file `path` (mode 0700: the database holds signing
 * secrets). */
static int make_parent_dirs(const char *path)
{
    char *dir = kz_strdup(path);
    char *p;
    char saved;
    int result = 0;

    p = strrchr(dir, '/');
    if (!p || p == dir)
        goto out;
    *p = '\0';
    for (p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        saved = *p;
        *p = '\0';
        if (mkdir(dir, 0700) && errno != EEXIST) {
            result = -1;
            goto out;
        }
        *p = saved;
        if (!saved)
            break;
    }
out:
    kz_free(dir);
    return result;
}

/* Runs one PRAGMA (or any statement whose rows are ignored but the first, which is copied to
 * `first` when given). */
static int pragma(sqlite3 *db, const char *sql, char *first, size_t firstlen)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);

    if (rc)
        goto out;
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW && first) {
        const unsigned char *s = sqlite3_column_text(q, 0);

        snprintf(first, firstlen, "%s", s ? (const char *)s : "");
    }
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(q);
    if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
out:
    sqlite3_finalize(q);
    return rc;
}

static void conn_close(struct conn *c)
{
    size_t i;
    int rc;

    if (!c)
        return;
    for (i = 0; i < S__COUNT; i++)
        sqlite3_finalize(c->stmt[i]);
    rc = sqlite3_close(c->db);
    if (rc)
        kz_log("error", "store: sqlite close failed", "\"rc\":%d", rc);
    kz_free(c);
}

/* Opens a connection to the database file `path` with the pragmas every connection needs;
 * `writer` adds the writer-only settings. */
static enum kz_err conn_open(const char *path, bool writer, struct conn **out, char *err,
                             size_t errlen)
{
    enum kz_err result = KZ_ERR_DB;
    struct conn *c = kz_calloc(1, sizeof(*c));
    char mode[32] = "";
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (writer ? SQLITE_OPEN_CREATE : 0);
    const char *what = "open";
    int rc;

    rc = sqlite3_open_v2(path, &c->db, flags, NULL);
    if (rc)
        goto fail;
    what = "extended result codes";
    rc = sqlite3_extended_result_codes(c->db, 1);
    if (rc)
        goto fail;
    what = "busy_timeout";
    rc = sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    if (rc)
        goto fail;
    what = "journal_mode";
    rc = pragma(c->db, "PRAGMA journal_mode=WAL", mode, sizeof(mode));
    if (rc)
        goto fail;
    if (strcmp(mode, "wal")) {
        snprintf(err, errlen, "store: %s: cannot enable WAL (journal_mode is %s)", path, mode);
        goto out;
    }
    what = "synchronous";
    rc = pragma(c->db, "PRAGMA synchronous=FULL", NULL, 0);
    if (rc)
        goto fail;
    if (writer) {
        what = "writer pragmas";
        rc = pragma(c->db, "PRAGMA temp_store=MEMORY", NULL, 0);
        if (!rc)
            rc = pragma(c->db, "PRAGMA cache_size=-" WRITER_CACHE_KIB, NULL, 0);
        if (rc)
            goto fail;
    } else {
        what = "query_only";
        rc = pragma(c->db, "PRAGMA query_only=1", NULL, 0);
        if (rc)
            goto fail;
    }
    *out = c;
    c = NULL;
    result = KZ_OK;
    goto out;
fail:
    result = map_rc(rc);
    snprintf(err, errlen, "store: %s: %s: %s", path, what,
             c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
out:
    conn_close(c);
    return result;
}

/* Brings the schema to the newest version. Each step runs under BEGIN IMMEDIATE and re-reads the
 * version inside it, so two processes opening the same file at once migrate it exactly once. */
static enum kz_err migrate(struct conn *c, char *err, size_t errlen)
{
    const int64_t newest = (int64_t)KZ_ARRAY_LEN(migrations);
    enum kz_err result = KZ_OK;
    sqlite3_stmt *q = NULL;
    char *emsg = NULL;
    int64_t version;
    int rc;

    rc = sqlite3_exec(c->db,
                      "CREATE TABLE IF NOT EXISTS schema_version"
                      " (version INTEGER NOT NULL)",
                      NULL, NULL, &emsg);
    if (rc)
        goto fail;
    rc = sqlite3_prepare_v2(c->db, "SELECT COALESCE(MAX(version), 0) FROM schema_version", -1, &q,
                            NULL);
    if (rc)
        goto fail;
    for (;;) {
        char sql[96];

        rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, &emsg);
        if (rc)
            goto fail;
        rc = sqlite3_step(q);
        if (rc != SQLITE_ROW)
            goto fail;
        version = sqlite3_column_int64(q, 0);
        rc = sqlite3_reset(q);
        if (rc)
            goto fail;
        if (version > newest) {
            snprintf(err, errlen, "store: schema version %lld is newer than this binary (%lld)",
                     (long long)version, (long long)newest);
            result = KZ_ERR_DB;
            goto rollback;
        }
        if (version == newest)
            break;
        rc = sqlite3_exec(c->db, migrations[version], NULL, NULL, &emsg);
        if (rc)
            goto fail;
        snprintf(sql, sizeof(sql), "INSERT INTO schema_version(version) VALUES (%lld)",
                 (long long)(version + 1));
        rc = sqlite3_exec(c->db, sql, NULL, NULL, &emsg);
        if (rc)
            goto fail;
        rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, &emsg);
        if (rc)
            goto fail;
        kz_log("info", "store: schema migrated", "\"version\":%lld", (long long)(version + 1));
    }
    rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, &emsg);
    if (rc)
        goto fail;
    goto out;
fail:
    result = map_rc(rc);
    snprintf(err, errlen, "store: migration failed: %s", emsg ? emsg : sqlite3_errmsg(c->db));
rollback:
    if (!sqlite3_get_autocommit(c->db))
        (void)sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL); /* best effort: closing next */
out:
    sqlite3_free(emsg);
    sqlite3_finalize(q);
    return result;
}

/* Reads meta webhooks_version on the write connection (inside or outside a transaction). */
static int read_version(struct conn *c, int64_t *out)
{
    struct bind b;
    int rc;

    prep(c, S_VERSION_GET, &b);
    rc = step(&b);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(b.q, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        *out = 0;
        rc = SQLITE_OK;
    }
    finish(&b);
    return rc;
}

static enum kz_err sq_open(struct kz_backend **out, const char *url, char *err, size_t errlen)
{
    enum kz_err result = KZ_ERR_INVALID;
    struct kz_backend *be = NULL;
    int fd;

    if (!sqlite3_threadsafe()) {
        snprintf(err, errlen, "store: SQLite was built without thread support");
        goto out;
    }
    if (!*url || !strcmp(url, ":memory:") || !strncmp(url, "file:", 5)) {
        snprintf(err, errlen, "store: the SQLite store needs a plain file path");
        goto out;
    }
    if (make_parent_dirs(url)) {
        snprintf(err, errlen, "store: cannot create the directory of %s: %s", url, strerror(errno));
        result = KZ_ERR_IO;
        goto out;
    }
    /* Created here rather than by SQLite so that it is private (0600); SQLite gives the -wal
     * and -shm files the same mode. */
    fd = open(url, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "store: cannot open %s: %s", url, strerror(errno));
        result = KZ_ERR_IO;
        goto out;
    }
    close(fd);

    be = kz_calloc(1, sizeof(*be));
    be->path = kz_strdup(url);
    pthread_mutex_init(&be->pool_mu, NULL);
    pthread_cond_init(&be->pool_cv, NULL);
    result = conn_open(be->path, true, &be->wr, err, errlen);
    if (result)
        goto out;
    result = migrate(be->wr, err, errlen);
    if (result)
        goto out;
    *out = be;
    be = NULL;
out:
    if (be) {
        conn_close(be->wr);
        pthread_cond_destroy(&be->pool_cv);
        pthread_mutex_destroy(&be->pool_mu);
        kz_free(be->path);
        kz_free(be);
    }
    return result;
}

static void sq_close(struct kz_backend *be)
{
    struct conn *c;
    size_t n = 0;

    if (!be)
        return;
    while ((c = be->idle)) {
        be->idle = c->next;
        conn_close(c);
        n++;
    }
    KZ_ASSERT(n == be->n_read); /* no read may still be running */
    conn_close(be->wr);
    pthread_cond_destroy(&be->pool_cv);
    pthread_mutex_destroy(&be->pool_mu);
    kz_free(be->path);
    kz_free(be);
}

/* Takes an idle read connection, opening one when fewer than READ_MAX exist, else waiting for
 * one to come back. */
static enum kz_err acquire(struct kz_backend *be, struct conn **out)
{
    enum kz_err result;
    struct conn *c = NULL;
    char err[256];

    pthread_mutex_lock(&be->pool_mu);
    while (!be->idle && be->n_read >= READ_MAX)
        pthread_cond_wait(&be->pool_cv, &be->pool_mu);
    if (be->idle) {
        c = be->idle;
        be->idle = c->next;
        pthread_mutex_unlock(&be->pool_mu);
        *out = c;
        return KZ_OK;
    }
    be->n_read++; /* reserve the slot; open outside the lock */
    pthread_mutex_unlock(&be->pool_mu);

    result = conn_open(be->path, false, &c, err, sizeof(err));
    if (result) {
        char emsg[300];

        kz_log("error", "store: cannot open a read connection", "\"err\":\"%s\"",
               kz_log_esc(err, emsg, sizeof(emsg)));
        pthread_mutex_lock(&be->pool_mu);
        be->n_read--;
        pthread_cond_signal(&be->pool_cv);
        pthread_mutex_unlock(&be->pool_mu);
        return result;
    }
    *out = c;
    return KZ_OK;
}

static void release(struct kz_backend *be, struct conn *c)
{
    pthread_mutex_lock(&be->pool_mu);
    c->next = be->idle;
    be->idle = c;
    pthread_cond_signal(&be->pool_cv);
    pthread_mutex_unlock(&be->pool_mu);
}

/* ==== write ops (writer thread) ==== */

/* Each op_* is a backend op function (store_impl.h): the op is valid and cleaned, it runs
 * inside the op's savepoint on the write connection, and store.c rolls it back on failure. */

static enum kz_err op_meta_set(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct bind b;
    int rc;

    prep(c, S_META_SET, &b);
    b_text(&b, op->u.meta.key);
    b_text(&b, op->u.meta.value);
    rc = run(&b);
    return rc ? fail(c, "meta set", rc) : KZ_OK;
}

static enum kz_err op_app_create(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    const struct kz_app *a = &op->u.app;
    struct bind b;
    int rc;

    prep(c, S_APP_INSERT, &b);
    b_fixed(&b, a->id, sizeof(a->id));
    b_text(&b, a->name);
    b_text(&b, a->object_ids_json);
    b_fixed(&b, a->secret_hash, sizeof(a->secret_hash));
    b_fixed(&b, a->refresh_hash, sizeof(a->refresh_hash));
    b_int(&b, a->created_at);
    rc = run(&b);
    return rc ? fail(c, "app insert", rc) : KZ_OK;
}

/* Runs a statement whose only parameter is `id`; `*changes` gets the rows it changed. */
static int run_by_id(struct conn *c, enum stmt_id sid, const char *id, int64_t *changes)
{
    struct bind b;
    int rc;

    prep(c, sid, &b);
    b_text(&b, id);
    rc = run(&b);
    if (!rc && changes)
        *changes = sqlite3_changes64(c->db);
    return rc;
}

static enum kz_err op_app_delete(struct kz_backend *be, struct kz_op *op, bool *bump)
{
    struct conn *c = be->wr;
    const char *id = op->u.id;
    int64_t changed = 0;
    int rc;

    rc = run_by_id(c, S_APP_DELETE, id, &changed);
    if (rc)
        return fail(c, "app delete", rc);
    if (!changed)
        return KZ_ERR_NOTFOUND;
    rc = run_by_id(c, S_APP_DEL_DELIVERIES, id, NULL);
    if (rc)
        return fail(c, "app delete deliveries", rc);
    rc = run_by_id(c, S_APP_DEL_WEBHOOKS, id, &changed);
    if (rc)
        return fail(c, "app delete webhooks", rc);
    if (changed)
        *bump = true;
    rc = run_by_id(c, S_APP_DEL_TOKENS, id, NULL);
    return rc ? fail(c, "app delete tokens", rc) : KZ_OK;
}

/* The write lock taken at BEGIN IMMEDIATE serialises every batch, of every process: the counts
 * below cannot change before the insert. */
static enum kz_err op_token_add(struct kz_backend *be, struct kz_op *op, int keep_live)
{
    struct conn *c = be->wr;
    int64_t now = kz_now_ms();
    struct bind b;
    int rc;

    prep(c, S_TOKEN_PURGE, &b);
    b_text(&b, op->u.token.app_id);
    b_int(&b, now);
    rc = run(&b);
    if (rc)
        return fail(c, "token purge", rc);
    prep(c, S_TOKEN_TRIM, &b);
    b_text(&b, op->u.token.app_id);
    b_int(&b, now);
    b_int(&b, keep_live > 0 ? keep_live - 1 : 0);
    rc = run(&b);
    if (rc)
        return fail(c, "token trim", rc);
    prep(c, S_TOKEN_INSERT, &b);
    b_text(&b, op->u.token.hash);
    b_text(&b, op->u.token.app_id);
    b_int(&b, op->u.token.expires_at);
    rc = run(&b);
    return rc ? fail(c, "token insert", rc) : KZ_OK;
}

/* `*out` gets the single integer the bound statement returns (0 when no row). */
static int run_int(struct bind *b, int64_t *out)
{
    int rc = step(b);

    *out = 0;
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(b->q, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    finish(b);
    return rc;
}

static enum kz_err op_webhook_insert(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    const struct kz_webhook *w = &op->u.webhook;
    int64_t n = 0;
    struct bind b;
    int rc;

    prep(c, S_APP_EXISTS, &b);
    b_fixed(&b, w->app_id, sizeof(w->app_id));
    rc = run_int(&b, &n);
    if (rc)
        return fail(c, "webhook app check", rc);
    if (!n)
        return KZ_ERR_AUTH;
    if (op->u.max_per_app > 0) {
        prep(c, S_WH_COUNT_APP, &b);
        b_fixed(&b, w->app_id, sizeof(w->app_id));
        rc = run_int(&b, &n);
        if (rc)
            return fail(c, "webhook count", rc);
        if (n >= op->u.max_per_app)
            return KZ_ERR_QUOTA;
    }
    prep(c, S_WH_INSERT, &b);
    b_fixed(&b, w->id, sizeof(w->id));
    b_fixed(&b, w->app_id, sizeof(w->app_id));
    b_int(&b, w->object_type);
    b_text(&b, w->object_id);
    b_int(&b, w->event_mask);
    b_text(&b, w->callback_url);
    b_text(&b, w->callback_token);
    b_text(&b, w->callback_context);
    b_text(&b, w->signing_secret);
    b_int(&b, w->ts_ms);
    b_int(&b, w->validity_ms);
    b_int(&b, w->active);
    b_text(&b, w->headers_json);
    b_text(&b, w->filter_json);
    b_int(&b, w->rate_limit);
    b_int(&b, w->ordered);
    rc = run(&b);
    return rc ? fail(c, "webhook insert", rc) : KZ_OK;
}

/* Replaces the mutable columns. id, app_id and ts_ms never change; signing_secret changes only
 * when the op carries one (NULL keeps the stored secret). */
static enum kz_err op_webhook_update(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    const struct kz_webhook *w = &op->u.webhook;
    struct bind b;
    int rc;

    prep(c, S_DLV_SNAP, &b);
    b_fixed(&b, w->id, sizeof(w->id));
    b_int(&b, w->object_type);
    b_text(&b, w->object_id);
    b_text(&b, w->callback_context);
    rc = run(&b);
    if (rc)
        return fail(c, "webhook update snapshot", rc);
    prep(c, S_WH_UPDATE, &b);
    b_int(&b, w->object_type);
    b_text(&b, w->object_id);
    b_int(&b, w->event_mask);
    b_text(&b, w->callback_url);
    b_text(&b, w->callback_token);
    b_text(&b, w->callback_context);
    b_text(&b, w->signing_secret);
    b_int(&b, w->validity_ms);
    b_int(&b, w->active);
    b_fixed(&b, w->id, sizeof(w->id));
    b_fixed(&b, w->app_id, sizeof(w->app_id));
    b_text(&b, w->headers_json);
    b_text(&b, w->filter_json);
    b_int(&b, w->rate_limit);
    b_int(&b, w->ordered);
    rc = run(&b);
    if (rc)
        return fail(c, "webhook update", rc);
    return sqlite3_changes64(c->db) ? KZ_OK : KZ_ERR_NOTFOUND;
}

static enum kz_err op_webhook_rotate(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct bind b;
    int rc;

    prep(c, S_WH_ROTATE, &b);
    b_text(&b, op->u.rotate.id);
    b_text(&b, op->u.rotate.app_id ? op->u.rotate.app_id : "");
    b_text(&b, op->u.rotate.secret);
    b_int(&b, op->u.rotate.now);
    b_int(&b, op->u.rotate.expires);
    rc = run(&b);
    if (rc)
        return fail(c, "webhook rotate", rc);
    return sqlite3_changes64(c->db) ? KZ_OK : KZ_ERR_NOTFOUND;
}

static enum kz_err op_webhook_delete(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct bind b;
    int rc;

    prep(c, S_WH_DELETE, &b);
    b_text(&b, op->u.del.id);
    b_text(&b, op->u.del.app_id ? op->u.del.app_id : "");
    rc = run(&b);
    if (rc)
        return fail(c, "webhook delete", rc);
    if (!sqlite3_changes64(c->db))
        return KZ_ERR_NOTFOUND;
    rc = run_by_id(c, S_WH_DEL_DELIVERIES, op->u.del.id, NULL);
    return rc ? fail(c, "webhook delete deliveries", rc) : KZ_OK;
}

static enum kz_err op_webhook_active(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct bind b;
    int rc;

    prep(c, S_WH_ACTIVE, &b);
    b_text(&b, op->u.active.id);
    b_int(&b, op->u.active.flag);
    rc = run(&b);
    if (rc)
        return fail(c, "webhook active", rc);
    return sqlite3_changes64(c->db) ? KZ_OK : KZ_ERR_NOTFOUND;
}

/* Inserts one event and its deliveries, or, when event_id is already stored (by an earlier
 * batch or earlier in this one), reports the stored event and inserts nothing. */
static enum kz_err publish_one(struct conn *c, struct kz_publish_item *it, int64_t now,
                               int64_t lease_until, const char *node_id)
{
    const struct kz_event *e = &it->ev;
    int64_t created = e->created_at ? e->created_at : now;
    struct bind b;
    size_t i;
    int rc;

    if (it->delivery_ids)
        memset(it->delivery_ids, 0, it->n_targets * sizeof(*it->delivery_ids));
    prep(c, S_EV_INSERT, &b);
    b_text(&b, e->event_id);
    b_int(&b, e->event_type);
    b_text(&b, e->group_id);
    b_text(&b, e->action_id);
    b_text(&b, e->action_package_id);
    b_text(&b, e->from_user);
    b_text(&b, e->from_user_id);
    b_text(&b, e->from_user_name);
    b_text(&b, e->from_user_pic);
    b_text(&b, e->data_json);
    b_int(&b, (int64_t)it->n_targets);
    b_int(&b, created);
    b_int(&b, e->is_bot);
    b_text(&b, e->source_group_id);
    b_text(&b, e->traceparent);
    rc = run(&b);
    if (rc)
        return fail(c, "event insert", rc);

    if (!sqlite3_changes64(c->db)) {
        prep(c, S_EV_LOOKUP, &b);
        b_text(&b, e->event_id);
        rc = step(&b);
        if (rc == SQLITE_ROW) {
            it->seq = sqlite3_column_int64(b.q, 0);
            it->deliveries = sqlite3_column_int(b.q, 1);
            it->duplicate = true;
            rc = SQLITE_OK;
        }
        finish(&b);
        if (rc == SQLITE_DONE)
            return KZ_ERR_DB; /* the insert conflicted, so the row must exist */
        return rc ? fail(c, "event lookup", rc) : KZ_OK;
    }

    it->seq = sqlite3_last_insert_rowid(c->db);
    it->deliveries = (int)it->n_targets;
    it->duplicate = false;
    for (i = 0; i < it->n_targets; i++) {
        bool leased = it->target_leased && it->target_leased[i]; /* store.c: only when active */

        prep(c, S_DLV_INSERT, &b);
        b_text(&b, it->webhook_ids[i]);
        b_int(&b, it->seq);
        b_int(&b, leased ? KZ_D_INFLIGHT : it->target_active[i] ? KZ_D_PENDING : KZ_D_SKIPPED);
        b_int(&b, created);
        b_int(&b, leased ? lease_until : 0);
        b_text(&b, leased ? node_id : NULL);
        rc = run(&b);
        if (rc)
            return fail(c, "delivery insert", rc);
        if (it->delivery_ids)
            it->delivery_ids[i] =
                leased && sqlite3_changes64(c->db) ? sqlite3_last_insert_rowid(c->db) : 0;
    }
    return KZ_OK;
}

/* One statement per event and per delivery: on SQLite a statement is a function call, so a set
 * would gain nothing (publish_sets is false: store.c hands over one op at a time). */
static enum kz_err op_publish(struct kz_backend *be, struct kz_op **ops, size_t n)
{
    int64_t now = kz_now_ms();
    enum kz_err result;
    size_t i;
    size_t k;

    for (k = 0; k < n; k++) {
        for (i = 0; i < ops[k]->u.publish.n; i++) {
            result = publish_one(be->wr, &ops[k]->u.publish.items[i], now,
                                 ops[k]->u.publish.lease_until, be->node_id);
            if (result)
                return result;
        }
    }
    return KZ_OK;
}

/* Selects the due rows in (next_attempt_at, id) order with their webhook and event, then marks
 * them inflight. The exclusion list goes through a temp table so that the statement stays
 * prepared whatever its length. Rows are collected before any UPDATE runs, so the SELECT never
 * walks rows it is changing. */
/* Appends the rows of a bound claim statement to *rows (n used, cap allocated). Sets *bad when a
 * row's webhook id does not fit. Returns the last step's code (SQLITE_DONE when all is well). */
static int claim_rows(struct bind *b, struct kz_claimed **rows, size_t *n, size_t *cap, size_t hint,
                      bool *bad)
{
    int rc;

    while ((rc = step(b)) == SQLITE_ROW) {
        struct kz_claimed *r;

        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : (hint < 64 ? hint : 64);
            *rows = kz_realloc(*rows, *cap * sizeof(**rows));
        }
        r = &(*rows)[(*n)++];
        memset(r, 0, sizeof(*r));
        r->delivery_id = sqlite3_column_int64(b->q, 0);
        r->attempts = sqlite3_column_int(b->q, 1);
        r->created_at = sqlite3_column_int64(b->q, 2);
        if (!row_webhook(b->q, 7, &r->wh))
            *bad = true;
        row_event(b->q, 7 + WH_NCOLS, &r->ev);
        if (sqlite3_column_int(b->q, 3)) {
            r->wh.object_type = (enum kz_objtype)sqlite3_column_int(b->q, 4);
            kz_free(r->wh.object_id);
            r->wh.object_id = col_dup(b->q, 5);
            kz_free(r->wh.callback_context);
            r->wh.callback_context = col_dup(b->q, 6);
        }
    }
    finish(b);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The webhooks with pending rows that are not excluded, in id order, at most CLAIM_WEBHOOKS_MAX,
 * found by seeking from one webhook's entries in deliveries_pending to the next's: the excluded
 * webhooks' rows are never walked. `ids` gets kz_strdup'd strings. */
static int claim_webhooks(struct conn *c, const struct kz_op *op, char **ids, size_t *n)
{
    size_t ne = op->u.claim.n_exclude;
    const char **ex = kz_malloc((ne ? ne : 1) * sizeof(*ex));
    const char *from = ""; /* the scan resumes after this id */
    char *skipped = NULL;  /* the last excluded id seen (ids owns the others) */
    struct bind b;
    int rc = SQLITE_DONE;

    memcpy(ex, op->u.claim.exclude, ne * sizeof(*ex));
    qsort(ex, ne, sizeof(*ex), cmp_str);
    *n = 0;
    while (*n < CLAIM_WEBHOOKS_MAX) {
        char *id;

        prep(c, S_CLAIM_WH_NEXT, &b);
        b_text(&b, from);
        rc = step(&b);
        id = rc == SQLITE_ROW ? col_dup(b.q, 0) : NULL;
        finish(&b);
        if (!id)
            break;
        rc = SQLITE_DONE;
        if (bsearch(&id, ex, ne, sizeof(*ex), cmp_str)) {
            kz_free(skipped);
            skipped = id;
        } else {
            ids[(*n)++] = id;
        }
        from = id;
    }
    kz_free(skipped);
    kz_free(ex);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* Marks rows[from..n) of a claim inflight, leased and recorded as claimed by `node`. */
static int claim_mark(struct conn *c, const struct kz_op *op, const struct kz_claimed *rows,
                      size_t from, size_t n, const char *node)
{
    struct bind b;
    size_t i;
    int rc;

    for (i = from; i < n; i++) {
        prep(c, S_CLAIM_MARK, &b);
        b_int(&b, op->u.claim.lease_until);
        b_int(&b, op->u.claim.now);
        b_int(&b, rows[i].delivery_id);
        b_text(&b, node);
        rc = run(&b);
        if (rc)
            return rc;
    }
    return SQLITE_OK;
}

static enum kz_err op_claim(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct kz_claimed *rows = NULL;
    size_t n = 0;
    size_t cap = 0;
    struct bind b;
    size_t i;
    int64_t now = op->u.claim.now;
    size_t limit = op->u.claim.limit;
    bool bad = false;
    int rc;

    if (!op->u.claim.n_exclude) {
        /* the oldest due rows, whoever they are for */
        prep(c, S_CLAIM_SELECT, &b);
        b_int(&b, now);
        b_int(&b, kz_store_clamp_size(limit));
        rc = claim_rows(&b, &rows, &n, &cap, limit, &bad);
    } else {
        /* Some endpoints are at their cap: walking the due index in time order would pass over
         * every due row of theirs, on every claim (docs/PERFORMANCE.md, finding 2). Instead,
         * each other webhook with pending rows gets a share of `limit`, oldest rows first. */
        char **ids = kz_malloc(CLAIM_WEBHOOKS_MAX * sizeof(*ids));
        size_t nids = 0;

        rc = claim_webhooks(c, op, ids, &nids);
        if (rc) {
            for (i = 0; i < nids; i++)
                kz_free(ids[i]);
            kz_free(ids);
            return fail(c, "claim webhooks", rc);
        }
        rc = SQLITE_DONE;
        for (i = 0; i < nids; i++) {
            size_t share = (limit + nids - 1) / nids;

            if (rc == SQLITE_DONE && n < limit) {
                prep(c, S_CLAIM_WH_SELECT, &b);
                b_int(&b, now);
                b_int(&b, kz_store_clamp_size(share < limit - n ? share : limit - n));
                b_text(&b, ids[i]);
                rc = claim_rows(&b, &rows, &n, &cap, limit, &bad);
            }
            kz_free(ids[i]);
        }
        kz_free(ids);
    }
    /* Hand the rows to the op first so that kz_claim_cleanup frees them on any failure. */
    op->u.claim.out = rows;
    op->u.claim.n_out = n;
    if (rc != SQLITE_DONE)
        return fail(c, "claim select", rc);
    if (bad) {
        kz_log("error", "store: claimed row with an oversized id", "\"rows\":%zu", n);
        return KZ_ERR_DB;
    }
    rc = claim_mark(c, op, rows, 0, n, be->has_node ? be->node_id : NULL);
    if (rc)
        return fail(c, "claim mark", rc);
    return KZ_OK;
}

/* Marks rows[from..n) inflight. */

/* Reads the gated webhooks with due rows that the claim does not exclude (at most KZ_GATES_MAX)
 * into *gates (kz_realloc'd, *ng entries). */
static int gate_list(struct conn *c, const struct kz_op *op, struct kz_gate **gates, size_t *ng)
{
    size_t ne = op->u.claim.n_exclude, cap = 0;
    const char **ex = NULL;
    int64_t now = op->u.claim.now;
    struct bind b;
    int rc;

    if (ne) {
        ex = kz_malloc(ne * sizeof(*ex));
        memcpy(ex, op->u.claim.exclude, ne * sizeof(*ex));
        qsort(ex, ne, sizeof(*ex), cmp_str);
    }
    prep(c, S_GATE_LIST, &b);
    b_int(&b, now);
    b_int(&b, kz_store_clamp_size(KZ_GATES_MAX + ne));
    while (*ng < KZ_GATES_MAX && (rc = step(&b)) == SQLITE_ROW) {
        struct kz_gate g;
        const char *id = g.webhook_id;

        memset(&g, 0, sizeof(g));
        if (!col_fixed(b.q, 0, g.webhook_id, sizeof(g.webhook_id)) ||
            (ne && bsearch(&id, ex, ne, sizeof(*ex), cmp_str)))
            continue;
        g.rate_limit = sqlite3_column_int(b.q, 1);
        g.ordered = sqlite3_column_int(b.q, 2) != 0;
        g.deliverable = sqlite3_column_int(b.q, 3) != 0 && sqlite3_column_int64(b.q, 4) > now;
        g.tokens = sqlite3_column_int64(b.q, 5);
        g.refilled_at = sqlite3_column_int64(b.q, 6);
        g.last_id = sqlite3_column_int64(b.q, 7);
        g.now = now;
        g.due_now = now;
        if (*ng == cap) {
            cap = cap ? cap * 2 : 8;
            *gates = kz_realloc(*gates, cap * sizeof(**gates));
        }
        (*gates)[(*ng)++] = g;
    }
    if (*ng == KZ_GATES_MAX)
        rc = SQLITE_DONE;
    finish(&b);
    kz_free(ex);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* An ordered webhook's head: its oldest pending or inflight delivery, and whether the one its
 * gate handed out last is still inflight. */
static int gate_head(struct conn *c, struct kz_gate *g)
{
    struct bind b;
    int rc;

    prep(c, S_GATE_HEAD, &b);
    b_text(&b, g->webhook_id);
    b_int(&b, g->last_id);
    rc = step(&b);
    if (rc == SQLITE_ROW) {
        g->last_inflight = sqlite3_column_type(b.q, 0) != SQLITE_NULL &&
                           sqlite3_column_int(b.q, 0) == KZ_D_INFLIGHT;
        g->head_found = sqlite3_column_type(b.q, 1) != SQLITE_NULL;
        g->head_id = sqlite3_column_int64(b.q, 1);
        g->head_pending = sqlite3_column_int(b.q, 2) == KZ_D_PENDING;
        g->head_due = sqlite3_column_int64(b.q, 3);
        rc = SQLITE_OK;
    }
    finish(&b);
    return rc;
}

/* The claim rules of the gated webhooks (store_impl.h, claim_gated). SQLite has one writer, so
 * the gates need no lock: nothing else claims while this transaction runs. */
static enum kz_err op_claim_gated(struct kz_backend *be, struct kz_op *op, size_t limit,
                                  struct kz_claimed **rows, size_t *n, size_t *cap, char ***ids,
                                  size_t *n_ids)
{
    struct conn *c = be->wr;
    struct kz_gate *gates = NULL;
    size_t ng = 0, i;
    bool bad = false;
    struct bind b;
    int rc;

    rc = gate_list(c, op, &gates, &ng);
    if (rc) {
        kz_free(gates);
        return fail(c, "claim gates", rc);
    }
    if (ng)
        *ids = kz_malloc(ng * sizeof(**ids));
    for (i = 0; i < ng && !rc; i++) {
        struct kz_gate *g = &gates[i];
        size_t before = *n;

        (*ids)[(*n_ids)++] = kz_strdup(g->webhook_id);
        if (g->ordered && g->deliverable) {
            rc = gate_head(c, g);
            if (rc)
                break;
        }
        if (kz_gate_allow(g, limit - *n)) {
            if (g->head_only) {
                prep(c, S_GATE_ONE, &b);
                b_int(&b, g->head_id);
            } else {
                prep(c, S_CLAIM_WH_SELECT, &b);
                b_int(&b, op->u.claim.now);
                b_int(&b, kz_store_clamp_size(g->allow));
                b_text(&b, g->webhook_id);
            }
            rc = claim_rows(&b, rows, n, cap, g->allow, &bad);
            if (rc != SQLITE_DONE)
                break;
            rc = claim_mark(c, op, *rows, before, *n, be->has_node ? be->node_id : NULL);
            if (rc)
                break;
        }
        if (g->head_only && *n > before)
            g->last_id = g->head_id;
        kz_gate_charge(g, *n - before, &op->u.claim.held, &op->u.claim.held_until);
        if (g->deliverable && (g->rate_limit > 0 || *n > before)) {
            prep(c, S_GATE_SAVE, &b);
            b_text(&b, g->webhook_id);
            b_int(&b, g->tokens);
            b_int(&b, g->refilled_at);
            b_int(&b, g->last_id);
            rc = run(&b);
        }
    }
    kz_free(gates);
    if (rc)
        return fail(c, "claim gated", rc);
    if (bad) {
        kz_log("error", "store: claimed row with an oversized id", "\"rows\":%zu", *n);
        return KZ_ERR_DB;
    }
    return KZ_OK;
}

/* Each attempt: the row update and, when it applied and a request was made, the attempt row
 * (prepared statements, one row each); then the successes; then the disable rule for the rows
 * that turned dead, after the successes of this same op. */
static enum kz_err op_complete(struct kz_backend *be, struct kz_op *op, const struct kz_success *ok,
                               size_t n_ok, bool *disabled, bool *bump)
{
    struct conn *c = be->wr;
    int64_t now = kz_now_ms();
    struct bind b;
    size_t i;
    int rc;

    for (i = 0; i < op->u.complete.n; i++) {
        const struct kz_attempt *a = &op->u.complete.items[i];
        int64_t changed;

        prep(c, S_COMPLETE, &b);
        b_int(&b, a->state);
        b_int(&b, a->attempts);
        b_int(&b, a->next_attempt_at);
        b_int(&b, a->status);
        b_text(&b, a->error);
        if (a->response)
            b_textn(&b, a->response, a->response_len);
        else
            b_text(&b, NULL);
        b_int(&b, now);
        b_int(&b, a->delivery_id);
        b_int(&b, a->at);
        rc = run(&b);
        if (rc)
            return fail(c, "complete", rc);
        changed = sqlite3_changes64(c->db);
        /* a row no longer inflight (a replay or delete came first) keeps its outcome dropped */
        disabled[i] = changed && a->state == KZ_D_DEAD; /* a candidate, decided below */
        if (!changed || !a->at)
            continue;
        prep(c, S_ATT_INSERT, &b);
        b_int(&b, a->delivery_id);
        b_int(&b, a->at);
        b_int(&b, a->duration_ms);
        b_int(&b, a->status);
        b_text(&b, a->error);
        if (a->response)
            b_textn(&b, a->response, a->response_len);
        else
            b_text(&b, NULL);
        rc = run(&b);
        if (rc)
            return fail(c, "attempt insert", rc);
    }
    for (i = 0; i < n_ok; i++) {
        prep(c, S_WH_SUCCESS, &b);
        b_text(&b, ok[i].webhook_id);
        b_int(&b, ok[i].at);
        b_text(&b, be->has_node ? be->node_id : "");
        rc = run(&b);
        if (rc)
            return fail(c, "webhook success", rc);
    }
    for (i = 0; i < op->u.complete.n; i++) {
        const struct kz_attempt *a = &op->u.complete.items[i];

        if (!disabled[i])
            continue;
        prep(c, S_WH_DISABLE, &b);
        b_fixed(&b, a->webhook_id, sizeof(a->webhook_id));
        b_int(&b, a->delivery_id);
        rc = run(&b);
        if (rc)
            return fail(c, "webhook disable", rc);
        disabled[i] = sqlite3_changes64(c->db) > 0;
        if (disabled[i])
            *bump = true;
    }
    return KZ_OK;
}

static enum kz_err op_retry(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    int64_t state, active, validity;
    struct bind b;
    int rc;

    prep(c, S_RETRY_CHECK, &b);
    b_int(&b, op->u.retry.delivery_id);
    b_text(&b, op->u.retry.webhook_id);
    rc = step(&b);
    if (rc != SQLITE_ROW) {
        finish(&b);
        return rc == SQLITE_DONE ? KZ_ERR_NOTFOUND : fail(c, "retry check", rc);
    }
    state = sqlite3_column_int64(b.q, 0);
    active = sqlite3_column_int64(b.q, 1);
    validity = sqlite3_column_int64(b.q, 2);
    finish(&b);
    if (!active || validity <= op->u.retry.now)
        return KZ_ERR_CONFLICT;
    if (state == KZ_D_INFLIGHT)
        return KZ_OK;
    prep(c, S_RETRY, &b);
    b_int(&b, op->u.retry.delivery_id);
    b_text(&b, op->u.retry.webhook_id);
    b_int(&b, op->u.retry.now);
    rc = run(&b);
    if (rc)
        return fail(c, "retry", rc);
    op->u.retry.requeued = sqlite3_changes64(c->db) > 0;
    return KZ_OK;
}

static enum kz_err op_replay(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct bind b;
    int rc;

    prep(c, S_REPLAY, &b);
    b_text(&b, op->u.replay.webhook_id);
    b_int(&b, op->u.replay.since);
    b_int(&b, op->u.replay.now);
    rc = run(&b);
    if (rc)
        return fail(c, "replay", rc);
    op->u.replay.requeued = sqlite3_changes64(c->db);
    return KZ_OK;
}

static enum kz_err op_release(struct kz_backend *be, struct kz_op *op, int64_t dead_ms)
{
    struct conn *c = be->wr;
    struct bind b;
    int rc;

    if (op->u.release.own && !be->has_node) {
        op->u.release.released = 0;
        return KZ_OK;
    }
    prep(c,
         op->u.release.all   ? S_LEASE_ALL
         : op->u.release.own ? S_RELEASE_OWN
                             : S_LEASE_EXPIRED,
         &b);
    b_int(&b, op->u.release.now);
    if (op->u.release.own)
        b_text(&b, be->node_id);
    else if (!op->u.release.all)
        b_int(&b, dead_ms < 0 ? INT64_MAX : kz_now_ms() - dead_ms);
    rc = run(&b);
    if (rc)
        return fail(c, "release", rc);
    op->u.release.released = sqlite3_changes64(c->db);
    return KZ_OK;
}

/* Registers this node and takes back what it (or, with `all`, anyone) had claimed. */
static enum kz_err op_node_start(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct bind b;
    int rc;

    prep(c, S_NODE_UPSERT, &b);
    b_text(&b, op->u.node.id);
    b_text(&b, op->u.node.incarnation);
    b_int(&b, kz_now_ms());
    rc = run(&b);
    if (rc)
        return fail(c, "node start", rc);
    snprintf(be->node_id, sizeof(be->node_id), "%s", op->u.node.id);
    be->has_node = true;
    prep(c, op->u.node.all ? S_LEASE_ALL : S_RELEASE_OWN, &b);
    b_int(&b, op->u.node.now);
    if (!op->u.node.all)
        b_text(&b, op->u.node.id);
    rc = run(&b);
    if (rc)
        return fail(c, "node resume", rc);
    op->u.node.resumed = sqlite3_changes64(c->db);
    return KZ_OK;
}

/* Deletes event `seq` if it is older than `before` and has no delivery left. */
static int drop_orphan_event(struct conn *c, int64_t seq, int64_t before, int64_t *dropped)
{
    struct bind b;
    int rc;

    prep(c, S_PRUNE_EV_ORPHAN, &b);
    b_int(&b, seq);
    b_int(&b, before);
    rc = run(&b);
    if (!rc)
        *dropped += sqlite3_changes64(c->db);
    return rc;
}

/* Retention, bounded by `limit` rows per step so the writer never holds a long transaction:
 * 1. delete up to `limit` succeeded deliveries last touched before `before`, and the events they
 *    leave without deliveries;
 * 2. sweep up to `limit` further events from a cursor for orphans older than `before` (events
 *    that matched no webhook, or lost their deliveries to a webhook or app delete). The sweep
 *    stops at the first event inside the retention window or at the end of the table and then
 *    restarts from the beginning, so every call is bounded and every orphan is reached. */
static enum kz_err op_prune(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    enum kz_err result = KZ_OK;
    int64_t before = op->u.prune.before;
    size_t limit = op->u.prune.limit;
    int64_t *seqs = NULL;
    size_t n = 0;
    size_t i;
    int64_t dropped = 0;
    bool wrap = false;
    struct bind b;
    int rc;

    seqs = kz_malloc(limit * sizeof(*seqs));

    prep(c, S_PRUNE_DLV, &b);
    b_int(&b, before);
    b_int(&b, (int64_t)limit);
    while ((rc = step(&b)) == SQLITE_ROW && n < limit)
        seqs[n++] = sqlite3_column_int64(b.q, 0);
    finish(&b);
    if (rc != SQLITE_DONE) {
        result = fail(c, "prune deliveries", rc);
        goto out;
    }
    op->u.prune.pruned = (int64_t)n;
    for (i = 0; i < n && dropped < (int64_t)limit; i++) { /* a repeated seq is a no-op */
        rc = drop_orphan_event(c, seqs[i], before, &dropped);
        if (rc) {
            result = fail(c, "prune event", rc);
            goto out;
        }
    }

    n = 0;
    prep(c, S_PRUNE_EV_SCAN, &b);
    b_int(&b, be->prune_cursor);
    b_int(&b, (int64_t)limit);
    while ((rc = step(&b)) == SQLITE_ROW) {
        if (sqlite3_column_int64(b.q, 1) >= before) {
            wrap = true;
            break;
        }
        seqs[n++] = sqlite3_column_int64(b.q, 0);
    }
    finish(&b);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        result = fail(c, "prune event scan", rc);
        goto out;
    }
    if (rc == SQLITE_DONE && n < limit)
        wrap = true;
    for (i = 0; i < n && dropped < (int64_t)limit; i++) {
        rc = drop_orphan_event(c, seqs[i], before, &dropped);
        if (rc) {
            result = fail(c, "prune event", rc);
            goto out;
        }
    }
    /* The cursor only advances when the batch commits; a rolled-back sweep is simply redone. */
    if (wrap)
        be->prune_cursor = 0;
    else if (i)
        be->prune_cursor = seqs[i - 1];
out:
    kz_free(seqs);
    return result;
}

/* ==== batch primitives (writer thread; store_impl.h) ====
 * BEGIN IMMEDIATE takes the write lock up front, so no statement of the batch waits for a lock
 * (no lock_wait). Some errors (I/O, disk full, out of memory) make SQLite roll the whole
 * transaction back by itself: `lost` sees that through sqlite3_get_autocommit. */

static enum kz_err op_stats_add(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct bind b;
    char hist[KZ_STATS_HIST_TEXT];
    size_t i;
    int rc = SQLITE_OK;

    for (i = 0; i < op->u.stats.n_minutes && !rc; i++) {
        const struct kz_stats_minute *m = &op->u.stats.minutes[i];

        kz_stats_hist_format(m->hist, hist);
        prep(c, S_STATS_MINUTE_SET, &b);
        b_int(&b, m->minute);
        b_text(&b, op->u.stats.node_id);
        b_int(&b, m->published);
        b_int(&b, m->succeeded);
        b_int(&b, m->failed);
        b_int(&b, m->dead);
        b_text(&b, hist);
        rc = run(&b);
    }
    for (i = 0; i < op->u.stats.n_webhooks && !rc; i++) {
        const struct kz_stats_webhook *w = &op->u.stats.webhooks[i];

        prep(c, S_STATS_WH_SET, &b);
        b_fixed(&b, w->webhook_id, sizeof(w->webhook_id));
        b_int(&b, w->hour);
        b_text(&b, op->u.stats.node_id);
        b_int(&b, w->succeeded);
        b_int(&b, w->failed);
        b_int(&b, w->dead);
        rc = run(&b);
        if (rc)
            break;
        prep(c, S_STATS_STATE_MERGE, &b);
        b_fixed(&b, w->webhook_id, sizeof(w->webhook_id));
        b_int(&b, w->last_ok_at);
        b_int(&b, w->last_fail_at);
        b_int(&b, w->fail_since);
        b_text(&b, w->last_error);
        rc = run(&b);
    }
    if (!rc && op->u.stats.prune_before > 0) {
        prep(c, S_STATS_PRUNE_MINUTES, &b);
        b_int(&b, op->u.stats.prune_before);
        rc = run(&b);
        if (!rc) {
            prep(c, S_STATS_PRUNE_WH, &b);
            b_int(&b, op->u.stats.prune_before);
            rc = run(&b);
        }
        if (!rc)
            rc = run_plain(c, S_STATS_PRUNE_STATE);
    }
    return rc ? fail(c, "stats add", rc) : KZ_OK;
}

static enum kz_err sq_begin(struct kz_backend *be, bool lazy)
{
    struct conn *c = be->wr;
    int rc;

    if (lazy != be->sync_normal) {
        rc = sqlite3_exec(c->db, lazy ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL",
                          NULL, NULL, NULL);
        if (rc)
            return fail(c, "synchronous", rc);
        be->sync_normal = lazy;
    }
    be->sp_open = false;
    rc = run_plain(c, S_BEGIN);
    return rc ? fail(c, "begin", rc) : KZ_OK;
}

static enum kz_err sq_savepoint(struct kz_backend *be)
{
    struct conn *c = be->wr;
    int rc;

    if (be->sp_open) {
        rc = run_plain(c, S_SP_RELEASE);
        if (rc)
            return fail(c, "release savepoint", rc);
        be->sp_open = false;
    }
    rc = run_plain(c, S_SAVEPOINT);
    if (rc)
        return fail(c, "savepoint", rc);
    be->sp_open = true;
    return KZ_OK;
}

static enum kz_err sq_rollback_to(struct kz_backend *be)
{
    int rc = run_plain(be->wr, S_SP_ROLLBACK);

    return rc ? fail(be->wr, "rollback to savepoint", rc) : KZ_OK;
}

static bool sq_lost(struct kz_backend *be)
{
    return sqlite3_get_autocommit(be->wr->db);
}

/* SQLite has no other node to tell: `due` is not used. */
static enum kz_err sq_commit(struct kz_backend *be, bool bump, bool due, int64_t *version)
{
    struct conn *c = be->wr;
    int64_t v = 0;
    int rc;

    (void)due;
    if (be->sp_open) {
        rc = run_plain(c, S_SP_RELEASE);
        if (rc)
            return fail(c, "release savepoint", rc);
        be->sp_open = false;
    }
    if (bump) {
        rc = run_plain(c, S_VERSION_BUMP);
        if (rc)
            return fail(c, "webhooks_version bump", rc);
    }
    rc = read_version(c, &v);
    if (rc)
        return fail(c, "webhooks_version read", rc);
    rc = run_plain(c, S_COMMIT);
    if (rc)
        return fail(c, "commit", rc);
    *version = v;
    return KZ_OK;
}

static void sq_rollback(struct kz_backend *be)
{
    int rc;

    be->sp_open = false;
    if (sqlite3_get_autocommit(be->wr->db))
        return;
    rc = run_plain(be->wr, S_ROLLBACK);
    if (rc)
        (void)fail(be->wr, "rollback", rc);
}

/* ==== reads (any thread) ==== */

static enum kz_err sq_ping(struct kz_backend *be)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_PING, &b);
    rc = step(&b);
    finish(&b);
    if (rc != SQLITE_ROW)
        result = fail(c, "ping", rc);
    release(be, c);
    return result;
}

static enum kz_err sq_meta_get(struct kz_backend *be, const char *key, struct kz_buf *out)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    kz_buf_reset(out);
    prep(c, S_META_GET, &b);
    b_text(&b, key);
    rc = step(&b);
    if (rc == SQLITE_ROW)
        result =
            kz_buf_append(out, sqlite3_column_text(b.q, 0), (size_t)sqlite3_column_bytes(b.q, 0));
    else if (rc == SQLITE_DONE)
        result = KZ_ERR_NOTFOUND;
    else
        result = fail(c, "meta get", rc);
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_app_get(struct kz_backend *be, const char *id, struct kz_app *out)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_APP_GET, &b);
    b_text(&b, id);
    rc = step(&b);
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof(*out));
        if (!row_app(b.q, out)) {
            kz_app_cleanup(out);
            result = KZ_ERR_DB;
        }
    } else if (rc == SQLITE_DONE) {
        result = KZ_ERR_NOTFOUND;
    } else {
        result = fail(c, "app get", rc);
    }
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_app_list(struct kz_backend *be, void (*fn)(void *, const struct kz_app *),
                               void *arg)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_APP_LIST, &b);
    while ((rc = step(&b)) == SQLITE_ROW) {
        struct kz_app a;
        bool ok;

        memset(&a, 0, sizeof(a));
        ok = row_app(b.q, &a);

        if (ok)
            fn(arg, &a);
        kz_app_cleanup(&a);
        if (!ok) {
            result = KZ_ERR_DB;
            break;
        }
    }
    if (!result && rc != SQLITE_DONE)
        result = fail(c, "app list", rc);
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_token_get(struct kz_backend *be, const char *hash, char app_id[40],
                                int64_t *expires_at)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_TOKEN_GET, &b);
    b_text(&b, hash);
    rc = step(&b);
    if (rc == SQLITE_ROW) {
        if (!col_fixed(b.q, 0, app_id, 40))
            result = KZ_ERR_DB;
        *expires_at = sqlite3_column_int64(b.q, 1);
    } else if (rc == SQLITE_DONE) {
        result = KZ_ERR_NOTFOUND;
    } else {
        result = fail(c, "token get", rc);
    }
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_webhook_get(struct kz_backend *be, const char *id, struct kz_webhook *out)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_WH_GET, &b);
    b_text(&b, id);
    rc = step(&b);
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof(*out));
        if (!row_webhook(b.q, 0, out)) {
            kz_webhook_cleanup(out);
            result = KZ_ERR_DB;
        }
    } else if (rc == SQLITE_DONE) {
        result = KZ_ERR_NOTFOUND;
    } else {
        result = fail(c, "webhook get", rc);
    }
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_webhook_list(struct kz_backend *be, const char *app_id, int object_type,
                                   const char *object_id,
                                   void (*fn)(void *, const struct kz_webhook *), void *arg)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    if (app_id) {
        prep(c, S_WH_LIST_APP, &b);
        b_text(&b, app_id);
    } else {
        prep(c, S_WH_LIST_ALL, &b);
    }
    b_int(&b, object_type < 0 ? -1 : object_type);
    b_text(&b, object_id);
    while ((rc = step(&b)) == SQLITE_ROW) {
        struct kz_webhook w;
        bool ok;

        memset(&w, 0, sizeof(w));
        ok = row_webhook(b.q, 0, &w);
        if (ok)
            fn(arg, &w);
        kz_webhook_cleanup(&w);
        if (!ok) {
            result = KZ_ERR_DB;
            break;
        }
    }
    if (!result && rc != SQLITE_DONE)
        result = fail(c, "webhook list", rc);
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_delivery_list(struct kz_backend *be, const char *webhook_id, int state,
                                    int64_t cursor, size_t limit,
                                    void (*fn)(void *, const struct kz_delivery *), void *arg)
{
    struct conn *c;
    struct bind b;
    enum kz_err result;
    int lo = state;
    int hi = state;
    int rc;

    if (state < 0) {
        lo = KZ_D_PENDING;
        hi = KZ_D_SKIPPED;
    } else if (state == KZ_D_PENDING) {
        hi = KZ_D_INFLIGHT; /* the API shows inflight as pending */
    } else if (state > KZ_D_SKIPPED) {
        return KZ_ERR_INVALID;
    }
    if (!webhook_id)
        return KZ_ERR_INVALID;
    result = acquire(be, &c);
    if (result)
        return result;
    prep(c, S_DLV_LIST, &b);
    b_text(&b, webhook_id);
    b_int(&b, cursor > 0 ? cursor : INT64_MAX);
    b_int(&b, lo);
    b_int(&b, hi);
    b_int(&b, kz_store_clamp_size(limit));
    while ((rc = step(&b)) == SQLITE_ROW) {
        struct kz_delivery d;
        bool ok;

        memset(&d, 0, sizeof(d));
        d.id = sqlite3_column_int64(b.q, 0);
        ok = col_fixed(b.q, 1, d.webhook_id, sizeof(d.webhook_id));
        d.event_seq = sqlite3_column_int64(b.q, 2);
        ok = col_fixed(b.q, 3, d.event_id, sizeof(d.event_id)) && ok;
        d.event_type = (enum kz_evtype)sqlite3_column_int(b.q, 4);
        d.state = (enum kz_dstate)sqlite3_column_int(b.q, 5);
        d.attempts = sqlite3_column_int(b.q, 6);
        d.last_status = sqlite3_column_int(b.q, 7);
        d.last_error = col_dup(b.q, 8);
        d.last_response = col_dup(b.q, 9);
        d.next_attempt_at = sqlite3_column_int64(b.q, 10);
        d.created_at = sqlite3_column_int64(b.q, 11);
        d.updated_at = sqlite3_column_int64(b.q, 12);
        if (ok)
            fn(arg, &d);
        kz_delivery_cleanup(&d);
        if (!ok) {
            result = KZ_ERR_DB;
            break;
        }
    }
    if (!result && rc != SQLITE_DONE)
        result = fail(c, "delivery list", rc);
    finish(&b);
    release(be, c);
    return result;
}

/* Reads the delivery (S_DLV_GET) and then its newest attempts on one read connection. The two
 * statements are not one snapshot: an attempt recorded in between may show in the history
 * already (the history and the `attempts` counter differ anyway after a replay or retry). */
static enum kz_err sq_delivery_get(struct kz_backend *be, const char *webhook_id,
                                   int64_t delivery_id, struct kz_delivery_detail *out)
{
    struct kz_delivery *d = &out->d;
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    size_t cap = 0;
    bool ok;
    int rc;

    if (result)
        return result;
    prep(c, S_DLV_GET, &b);
    b_int(&b, delivery_id);
    b_text(&b, webhook_id);
    rc = step(&b);
    if (rc != SQLITE_ROW) {
        result = rc == SQLITE_DONE ? KZ_ERR_NOTFOUND : fail(c, "delivery get", rc);
        finish(&b);
        goto out;
    }
    d->id = sqlite3_column_int64(b.q, 0);
    ok = col_fixed(b.q, 1, d->webhook_id, sizeof(d->webhook_id));
    d->event_seq = sqlite3_column_int64(b.q, 2);
    ok = col_fixed(b.q, 3, d->event_id, sizeof(d->event_id)) && ok;
    d->event_type = (enum kz_evtype)sqlite3_column_int(b.q, 4);
    d->state = (enum kz_dstate)sqlite3_column_int(b.q, 5);
    d->attempts = sqlite3_column_int(b.q, 6);
    d->last_status = sqlite3_column_int(b.q, 7);
    d->last_error = col_dup(b.q, 8);
    d->last_response = col_dup(b.q, 9);
    d->next_attempt_at = sqlite3_column_int64(b.q, 10);
    d->created_at = sqlite3_column_int64(b.q, 11);
    d->updated_at = sqlite3_column_int64(b.q, 12);
    ok = row_webhook(b.q, 17, &out->wh) && ok;
    row_event(b.q, 17 + WH_NCOLS, &out->ev);
    if (sqlite3_column_int(b.q, 13)) {
        out->wh.object_type = (enum kz_objtype)sqlite3_column_int(b.q, 14);
        kz_free(out->wh.object_id);
        out->wh.object_id = col_dup(b.q, 15);
        kz_free(out->wh.callback_context);
        out->wh.callback_context = col_dup(b.q, 16);
    }
    finish(&b);
    if (!ok) {
        result = KZ_ERR_DB;
        goto out;
    }
    prep(c, S_ATT_LIST, &b);
    b_int(&b, delivery_id);
    b_int(&b, KZ_ATTEMPTS_SHOWN);
    while ((rc = step(&b)) == SQLITE_ROW) {
        struct kz_attempt_row *a;

        if (out->n_attempts == cap) {
            cap = cap ? cap * 2 : 8;
            out->attempts = kz_realloc(out->attempts, cap * sizeof(*out->attempts));
        }
        a = &out->attempts[out->n_attempts++];
        a->at = sqlite3_column_int64(b.q, 0);
        a->duration_ms = sqlite3_column_int64(b.q, 1);
        a->status = sqlite3_column_int(b.q, 2);
        a->error = col_dup(b.q, 3);
        a->response = col_dup(b.q, 4);
    }
    finish(&b);
    if (rc != SQLITE_DONE)
        result = fail(c, "attempt list", rc);
out:
    release(be, c);
    if (result) {
        kz_delivery_detail_cleanup(out);
        return result;
    }
    kz_attempts_oldest_first(out);
    return KZ_OK;
}

static enum kz_err sq_delivery_of_event(struct kz_backend *be, const char *webhook_id,
                                        const char *event_id, int64_t *delivery_id)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_DLV_OF_EVENT, &b);
    b_text(&b, webhook_id);
    b_text(&b, event_id);
    rc = step(&b);
    if (rc == SQLITE_ROW)
        *delivery_id = sqlite3_column_int64(b.q, 0);
    else if (rc == SQLITE_DONE)
        result = KZ_ERR_NOTFOUND;
    else
        result = fail(c, "delivery of event", rc);
    finish(&b);
    release(be, c);
    return result;
}

/* Three counts over ranges of deliveries_due: index-only, but linear in the backlog. */
static enum kz_err sq_backlog(struct kz_backend *be, int64_t now, int64_t *due, int64_t *scheduled,
                              int64_t *inflight)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_BACKLOG, &b);
    b_int(&b, now);
    rc = step(&b);
    if (rc == SQLITE_ROW) {
        *due = sqlite3_column_int64(b.q, 0);
        *scheduled = sqlite3_column_int64(b.q, 1);
        *inflight = sqlite3_column_int64(b.q, 2);
    } else {
        result = fail(c, "backlog", rc);
    }
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_next_due(struct kz_backend *be, int64_t *at)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_NEXT_DUE, &b);
    rc = step(&b);
    if (rc == SQLITE_ROW)
        *at = sqlite3_column_int64(b.q, 0);
    else if (rc == SQLITE_DONE)
        *at = -1;
    else
        result = fail(c, "next due", rc);
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_stats_minutes(struct kz_backend *be, int64_t since,
                                    void (*fn)(void *, const struct kz_stats_minute *), void *arg)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_STATS_MINUTES, &b);
    b_int(&b, since);
    while ((rc = step(&b)) == SQLITE_ROW) {
        struct kz_stats_minute m;

        m.minute = sqlite3_column_int64(b.q, 0);
        m.published = sqlite3_column_int64(b.q, 1);
        m.succeeded = sqlite3_column_int64(b.q, 2);
        m.failed = sqlite3_column_int64(b.q, 3);
        m.dead = sqlite3_column_int64(b.q, 4);
        if (!kz_stats_hist_parse((const char *)sqlite3_column_text(b.q, 5), m.hist)) {
            result = KZ_ERR_DB;
            break;
        }
        fn(arg, &m);
    }
    if (!result && rc != SQLITE_DONE)
        result = fail(c, "stats minutes", rc);
    finish(&b);
    release(be, c);
    return result;
}

static enum kz_err sq_webhook_health(struct kz_backend *be, const char *id, int64_t since_hour,
                                     struct kz_webhook_health *out)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_WH_HEALTH_SUM, &b);
    b_text(&b, id);
    b_int(&b, since_hour);
    rc = step(&b);
    if (rc == SQLITE_ROW) {
        out->succeeded = sqlite3_column_int64(b.q, 0);
        out->failed = sqlite3_column_int64(b.q, 1);
        out->dead = sqlite3_column_int64(b.q, 2);
        rc = SQLITE_OK;
    }
    finish(&b);
    if (!rc) {
        prep(c, S_WH_HEALTH_STATE, &b);
        b_text(&b, id);
        rc = step(&b);
        if (rc == SQLITE_ROW) {
            out->failing_since = sqlite3_column_int64(b.q, 0);
            out->last_ok_at = sqlite3_column_int64(b.q, 1);
            out->last_fail_at = sqlite3_column_int64(b.q, 2);
            out->last_error = col_dup(b.q, 3);
        }
        rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
        finish(&b);
    }
    if (rc)
        result = fail(c, "webhook health", rc);
    release(be, c);
    return result;
}

static enum kz_err sq_failing_list(struct kz_backend *be, size_t limit,
                                   void (*fn)(void *, const struct kz_failing *), void *arg)
{
    struct conn *c;
    struct bind b;
    enum kz_err result = acquire(be, &c);
    int rc;

    if (result)
        return result;
    prep(c, S_FAILING_LIST, &b);
    b_int(&b, kz_store_clamp_size(limit));
    while ((rc = step(&b)) == SQLITE_ROW) {
        struct kz_failing f;

        if (!col_fixed(b.q, 0, f.id, sizeof(f.id)) ||
            !col_fixed(b.q, 1, f.app_id, sizeof(f.app_id))) {
            result = KZ_ERR_DB;
            break;
        }
        f.callback_url = (const char *)sqlite3_column_text(b.q, 2);
        f.failing_since = sqlite3_column_int64(b.q, 3);
        f.last_error = (const char *)sqlite3_column_text(b.q, 4);
        fn(arg, &f);
    }
    if (!result && rc != SQLITE_DONE)
        result = fail(c, "failing list", rc);
    finish(&b);
    release(be, c);
    return result;
}

const struct kz_backend_ops kz_store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .begin = sq_begin,
    .savepoint = sq_savepoint,
    .rollback_to = sq_rollback_to,
    .lost = sq_lost,
    .lock_wait = NULL,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .meta_set = op_meta_set,
    .app_create = op_app_create,
    .app_delete = op_app_delete,
    .token_add = op_token_add,
    .webhook_insert = op_webhook_insert,
    .webhook_update = op_webhook_update,
    .webhook_rotate = op_webhook_rotate,
    .webhook_delete = op_webhook_delete,
    .webhook_active = op_webhook_active,
    .publish = op_publish,
    .publish_sets = false,
    .claim = op_claim,
    .claim_gated = op_claim_gated,
    .complete = op_complete,
    .retry = op_retry,
    .replay = op_replay,
    .release = op_release,
    .prune = op_prune,
    .node_start = op_node_start,
    .stats_add = op_stats_add,
    .on_notify = NULL,
    .ping = sq_ping,
    .meta_get = sq_meta_get,
    .app_get = sq_app_get,
    .app_list = sq_app_list,
    .token_get = sq_token_get,
    .webhook_get = sq_webhook_get,
    .webhook_list = sq_webhook_list,
    .delivery_list = sq_delivery_list,
    .delivery_get = sq_delivery_get,
    .delivery_of_event = sq_delivery_of_event,
    .backlog = sq_backlog,
    .next_due = sq_next_due,
    .stats_minutes = sq_stats_minutes,
    .webhook_health = sq_webhook_health,
    .failing_list = sq_failing_list,
};
