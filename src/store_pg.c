/* store_pg.c — the PostgreSQL backend of the store (store_impl.h), for one node or many sharing
 * one database. The op semantics are those of store_sqlite.c (docs/internals/STORE.md); what
 * differs is how they are run:
 *
 * Connections. One write connection (writer thread only), a pool of up to READ_MAX read
 * connections shared by the reader threads, and, once someone registers a notify callback, one
 * LISTEN connection owned by its own thread. Every connection is opened with libpq defaults the
 * URL may override (connect_timeout, keepalives, application_name) and client_encoding UTF8.
 * A connection found dead (server restart, network) is dropped; the next user reconnects, with a
 * backoff of 100 ms doubling to 5 s between failed attempts. While the server is down every read
 * and write fails at once with KZ_ERR_DB (the API answers 503) and nothing is half-applied: a
 * batch that failed was rolled back by the server. A batch whose connection died during COMMIT is
 * resolved with txid_status() on a new connection, so "failed" always means "not committed".
 *
 * Write batches. One transaction per batch (synchronous_commit stays on: COMMIT is durable).
 * Every op but PUBLISH runs inside a savepoint, as on SQLite. PUBLISH ops are group-committed as
 * sets: every PUBLISH of the batch up to the next op that could observe their rows (a webhook or
 * app delete, a replay, a prune) is run as ONE statement (events via INSERT … SELECT FROM
 * unnest(…) ON CONFLICT (event_id) DO NOTHING RETURNING, their deliveries in the same statement),
 * plus one lookup of the originals when some event_ids already existed. Items are validated
 * before any SQL, so an invalid op fails alone; if the set statement itself fails (say invalid
 * UTF-8 in one event), the set is rolled back and its ops are re-run one by one, each in its own
 * savepoint. Moving a PUBLISH before an op it commutes with is invisible to callers: every op of a
 * batch was in flight at once.
 *
 * Claims use FOR UPDATE SKIP LOCKED, so nodes claim disjoint rows without waiting on each other.
 * A batch that changed webhooks, inserted pending deliveries, replayed or released rows sends
 * pg_notify('kzhook', 'webhooks'|'due') in its transaction; the LISTEN thread of every other node
 * turns that into its callback.
 *
 * Row locks between nodes. A COMPLETE batch locks the delivery rows it finishes; a webhook PUT or
 * DELETE, a replay or an app delete on another node locks all of one webhook's rows, in another
 * order. Those "wide" ops run with lock_timeout 100 ms and are retried from their savepoint, so
 * a lock cycle is broken by the wide op within 100 ms instead of by PostgreSQL's deadlock check
 * (1 s, and found again on every immediate retry). A COMPLETE chosen as a deadlock victim is
 * retried the same way.
 *
 * Statements are prepared once per connection (lazily) and bound as text; arrays travel as
 * PostgreSQL array literals. Failures are logged with the statement name, SQLSTATE and the
 * server's primary message (never a bound value, never DETAIL, which can quote values).
 */
#include "store_impl.h"
#include "alloc.h"
#include "log.h"

#include <libpq-fe.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_MAX 4                    /* read connections at most */
#define BACKOFF_MIN_MS 100            /* first wait after a failed connect */
#define BACKOFF_MAX_MS 5000           /* longest wait between connect attempts */
#define MIGRATE_LOCK 0x6b7a686f6f6bLL /* pg_advisory_lock key ("kzhook") held while migrating */
#define ARRAY_MAX ((size_t)1 << 31)   /* bytes of one array parameter at most */
#define COMMIT_PROBES 10              /* txid_status() attempts after a connection died in COMMIT */
#define PMAX 24                       /* parameters of one statement at most */
#define CHANNEL "kzhook"              /* LISTEN/NOTIFY channel */

/* ==== schema ==== */

/* Migrations, in order; migrations[i] takes the schema from version i to i + 1. Never edit one
 * that has shipped: append a new one. The shape is SQLite's; `created_seq` gives apps and
 * webhooks the creation order that SQLite's rowid gives, and deliveries_due carries `id` so that
 * the claim's ORDER BY next_attempt_at, id is an index walk. */
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
    "  created_at BIGINT,"
    "  created_seq BIGSERIAL NOT NULL);"
    "CREATE INDEX applications_order ON applications(created_seq);"
    "CREATE TABLE access_tokens ("
    "  token_hash TEXT PRIMARY KEY,"
    "  application_id TEXT,"
    "  expires_at BIGINT);"
    "CREATE INDEX access_tokens_app ON access_tokens(application_id);"
    "CREATE TABLE webhooks ("
    "  id TEXT PRIMARY KEY,"
    "  application_id TEXT,"
    "  object_type INTEGER,"
    "  object_id TEXT,"
    "  event_mask BIGINT,"
    "  callback_url TEXT,"
    "  callback_token TEXT,"
    "  callback_context TEXT,"
    "  signing_secret TEXT,"
    "  ts_ms BIGINT,"
    "  validity_ms BIGINT,"
    "  active INTEGER,"
    "  created_seq BIGSERIAL NOT NULL);"
    "CREATE INDEX webhooks_object ON webhooks(application_id, object_type, object_id);"
    "CREATE TABLE events ("
    "  seq BIGSERIAL PRIMARY KEY,"
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
    "  created_at BIGINT);"
    "CREATE TABLE deliveries ("
    "  id BIGSERIAL PRIMARY KEY,"
    "  webhook_id TEXT,"
    "  event_seq BIGINT,"
    "  state INTEGER,"
    "  attempts INTEGER,"
    "  next_attempt_at BIGINT,"
    "  lease_until BIGINT,"
    "  last_status INTEGER,"
    "  last_error TEXT,"
    "  last_response TEXT,"
    "  created_at BIGINT,"
    "  updated_at BIGINT);"
    "CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at, id);"
    "CREATE INDEX deliveries_webhook ON deliveries(webhook_id, id);"
    "CREATE INDEX deliveries_event ON deliveries(event_seq);",
    /* 2: a delivery's webhook-derived body fields, frozen when a PUT changes them (see SQLite). */
    "ALTER TABLE deliveries ADD COLUMN snap INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE deliveries ADD COLUMN snap_object_type INTEGER;"
    "ALTER TABLE deliveries ADD COLUMN snap_object_id TEXT;"
    "ALTER TABLE deliveries ADD COLUMN snap_context TEXT;",
    /* 3: delivery controls (see SQLite): extra headers, event filter, the replaced secret. */
    "ALTER TABLE webhooks ADD COLUMN headers_json TEXT;"
    "ALTER TABLE webhooks ADD COLUMN filter_json TEXT;"
    "ALTER TABLE webhooks ADD COLUMN prev_secret TEXT;"
    "ALTER TABLE webhooks ADD COLUMN prev_secret_expires BIGINT NOT NULL DEFAULT 0;",
    /* 4: isBotfromUser, sourceGroupId and the publisher's traceparent (see SQLite). */
    "ALTER TABLE events ADD COLUMN is_bot INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE events ADD COLUMN source_group_id TEXT;"
    "ALTER TABLE events ADD COLUMN traceparent TEXT;",
    /* 5: the attempt history, deleted with its delivery (ON DELETE CASCADE, whichever statement
     * deletes it), and what the disable rule compares (see SQLite). */
    "CREATE TABLE delivery_attempts ("
    "  id BIGSERIAL PRIMARY KEY,"
    "  delivery_id BIGINT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,"
    "  at BIGINT NOT NULL,"
    "  duration_ms BIGINT NOT NULL,"
    "  status INTEGER,"
    "  error TEXT,"
    "  response TEXT);"
    "CREATE INDEX delivery_attempts_delivery ON delivery_attempts(delivery_id, id);"
    "ALTER TABLE deliveries ADD COLUMN first_attempt_at BIGINT NOT NULL DEFAULT 0;"
    "CREATE TABLE webhook_success ("
    "  webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,"
    "  node_id TEXT NOT NULL,"
    "  at BIGINT NOT NULL,"
    "  PRIMARY KEY (webhook_id, node_id));",
    /* 6: node identities and heartbeats (times by the server's clock), and which node claimed an
     * inflight delivery, so that a dead node's claims are taken over in seconds. */
    "CREATE TABLE nodes ("
    "  id TEXT PRIMARY KEY,"
    "  incarnation TEXT NOT NULL,"
    "  started_at BIGINT NOT NULL,"
    "  heartbeat_at BIGINT NOT NULL);"
    "ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;"
    "CREATE INDEX deliveries_claimed ON deliveries(claimed_by) WHERE state = 1;",
    /* 7: statistics: per node and minute, per webhook, hour and node, and each webhook's failing
     * state (see SQLite, migration 8). */
    "CREATE TABLE stats_minute ("
    "  minute BIGINT NOT NULL,"
    "  node_id TEXT NOT NULL,"
    "  published BIGINT NOT NULL,"
    "  succeeded BIGINT NOT NULL,"
    "  failed BIGINT NOT NULL,"
    "  dead BIGINT NOT NULL,"
    "  hist TEXT NOT NULL,"
    "  PRIMARY KEY (minute, node_id));"
    "CREATE TABLE webhook_stats ("
    "  webhook_id TEXT NOT NULL,"
    "  hour BIGINT NOT NULL,"
    "  node_id TEXT NOT NULL,"
    "  succeeded BIGINT NOT NULL,"
    "  failed BIGINT NOT NULL,"
    "  dead BIGINT NOT NULL,"
    "  PRIMARY KEY (webhook_id, hour, node_id));"
    "CREATE INDEX webhook_stats_hour ON webhook_stats(hour);"
    "CREATE TABLE webhook_state ("
    "  webhook_id TEXT PRIMARY KEY,"
    "  last_ok_at BIGINT NOT NULL,"
    "  last_fail_at BIGINT NOT NULL,"
    "  failing_since BIGINT,"
    "  last_error TEXT);"
    "CREATE INDEX webhook_state_failing ON webhook_state(failing_since)"
    "  WHERE failing_since IS NOT NULL;",
    /* 8: rateLimit and ordered, the gate of each gated webhook (locked by claims, so that every
     * node's claim of one webhook waits for another's), the open rows in id order (see SQLite). */
    "ALTER TABLE webhooks ADD COLUMN rate_limit INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE webhooks ADD COLUMN ordered INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX webhooks_gated ON webhooks(id) WHERE rate_limit > 0 OR ordered <> 0;"
    "CREATE TABLE webhook_gates ("
    "  webhook_id TEXT PRIMARY KEY REFERENCES webhooks(id) ON DELETE CASCADE,"
    "  tokens BIGINT NOT NULL DEFAULT 0,"
    "  refilled_at BIGINT NOT NULL DEFAULT 0,"
    "  last_id BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX deliveries_open ON deliveries(webhook_id, id) WHERE state <= 1;",
};

/* The server's clock in epoch ms: every node's heartbeat is written and judged by it, so the
 * nodes' own clocks never decide who is dead. */
#define SERVER_NOW_MS "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"

/* ==== statements ==== */

/* The server's clock in epoch ms: the gates' buckets count by it on every node. */
#define GATE_NOW_MS "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"

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
#define APP_COLS "id, name, object_ids_json, secret_hash, refresh_hash, created_at"

enum stmt_id {
    /* writes: write connection */
    S_META_SET,
    S_APP_INSERT,
    S_APP_DELETE,
    S_APP_DEL_DELIVERIES,
    S_APP_DEL_WEBHOOKS,
    S_APP_DEL_TOKENS,
    S_APP_LOCK,
    S_TOKEN_ADD,
    S_WH_COUNT_APP,
    S_WH_INSERT,
    S_WH_UPDATE,
    S_WH_ROTATE,
    S_DLV_SNAP,
    S_WH_DELETE,
    S_WH_DEL_DELIVERIES,
    S_WH_ACTIVE,
    S_PUBLISH,
    S_PUBLISH_LEASED,
    S_EV_LOOKUP,
    S_CLAIM,
    S_GATE_LIST,
    S_GATE_ADD,
    S_GATE_LOCK,
    S_GATE_HEAD,
    S_GATE_CLAIM,
    S_GATE_SAVE,
    S_COMPLETE,
    S_WH_SUCCESS,
    S_WH_DISABLE,
    S_RETRY_CHECK,
    S_RETRY,
    S_REPLAY,
    S_LEASE_EXPIRED,
    S_LEASE_ALL,
    S_RELEASE_OWN,
    S_NODE_UPSERT,
    S_TAKEOVER,
    S_HEARTBEAT,
    S_NODE_STOP,
    S_PRUNE_DLV,
    S_PRUNE_EV_DROP,
    S_PRUNE_EV_SCAN,
    S_PRUNE_EV_SWEEP,
    S_TXID_STATUS,
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

/* The events part of the publish statements (S_PUBLISH, S_PUBLISH_LEASED). */
#define PUBLISH_EVENTS                                                                             \
    "WITH ins AS (INSERT INTO events(event_id, event_type, group_id, action_id,"                   \
    " action_package_id, from_user, from_user_id, from_user_name, from_user_pic, data_json,"       \
    " n_deliveries, created_at, is_bot, source_group_id, traceparent)"                             \
    " SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[],"             \
    " $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::bigint[],"     \
    " $17::int[], $18::text[], $19::text[])"                                                       \
    " ON CONFLICT (event_id) DO NOTHING RETURNING seq, event_id),"

static const char *const stmt_sql[S__COUNT] = {
    [S_META_SET] = "INSERT INTO meta(key, value) VALUES ($1, $2)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    [S_APP_INSERT] = "INSERT INTO applications(" APP_COLS ") VALUES ($1, $2, $3, $4, $5, $6)",
    [S_APP_DELETE] = "DELETE FROM applications WHERE id = $1",
    [S_APP_DEL_DELIVERIES] = "DELETE FROM deliveries WHERE webhook_id IN"
                             " (SELECT id FROM webhooks WHERE application_id = $1)",
    [S_APP_DEL_WEBHOOKS] = "DELETE FROM webhooks WHERE application_id = $1",
    [S_APP_DEL_TOKENS] = "DELETE FROM access_tokens WHERE application_id = $1",
    /* purge the app's expired tokens and insert the new one; a duplicate hash fails both */
    /* Serialises the WEBHOOK_INSERTs and TOKEN_ADDs of one application across nodes (the lock
     * conflicts with itself and with the row lock of a DELETE), so the counts read after it hold
     * until commit; an application deleted meanwhile returns no row. */
    [S_APP_LOCK] = "SELECT 1 FROM applications WHERE id = $1 FOR NO KEY UPDATE",
    /* expired tokens, then all live ones but the $5 that expire last, then the insert */
    [S_TOKEN_ADD] = "WITH purge AS (DELETE FROM access_tokens"
                    " WHERE application_id = $2 AND expires_at < $4),"
                    " trim AS (DELETE FROM access_tokens WHERE token_hash IN (SELECT token_hash"
                    " FROM access_tokens WHERE application_id = $2 AND expires_at >= $4"
                    " ORDER BY expires_at DESC, token_hash DESC OFFSET $5))"
                    " INSERT INTO access_tokens(token_hash, application_id, expires_at)"
                    " VALUES ($1, $2, $3)",
    [S_WH_COUNT_APP] = "SELECT count(*) FROM webhooks WHERE application_id = $1",
    [S_WH_INSERT] = "INSERT INTO webhooks(id, application_id, object_type, object_id, event_mask,"
                    " callback_url, callback_token, callback_context, signing_secret, ts_ms,"
                    " validity_ms, active, headers_json, filter_json, rate_limit, ordered)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,"
                    " $15, $16)",
    [S_WH_UPDATE] = "UPDATE webhooks SET object_type = $1, object_id = $2, event_mask = $3,"
                    " callback_url = $4, callback_token = $5, callback_context = $6,"
                    " signing_secret = COALESCE($7, signing_secret), validity_ms = $8,"
                    " active = $9, headers_json = $12, filter_json = $13, rate_limit = $14,"
                    " ordered = $15"
                    " WHERE id = $10 AND ($11 = '' OR application_id = $11)",
    [S_WH_ROTATE] = "UPDATE webhooks SET"
                    " prev_secret = CASE WHEN $5::bigint > $4::bigint THEN signing_secret END,"
                    " prev_secret_expires = CASE WHEN $5::bigint > $4::bigint THEN $5::bigint"
                    " ELSE 0 END,"
                    " signing_secret = $3"
                    " WHERE id = $1 AND ($2 = '' OR application_id = $2)",
    [S_DLV_SNAP] = "UPDATE deliveries AS d SET snap = 1, snap_object_type = w.object_type,"
                   " snap_object_id = w.object_id, snap_context = w.callback_context"
                   " FROM webhooks AS w WHERE w.id = $1 AND d.webhook_id = $1"
                   " AND d.snap = 0 AND d.state <> 2"
                   " AND (w.object_type <> $2 OR w.object_id IS DISTINCT FROM $3"
                   " OR w.callback_context IS DISTINCT FROM $4)",
    [S_WH_DELETE] = "DELETE FROM webhooks WHERE id = $1 AND ($2 = '' OR application_id = $2)",
    [S_WH_DEL_DELIVERIES] = "DELETE FROM deliveries WHERE webhook_id = $1",
    [S_WH_ACTIVE] = "UPDATE webhooks SET active = $2 WHERE id = $1",
    /* A set of new events and their deliveries in one statement. $1..$12 and $17..$19 are one
     * array per event column, one element per distinct event_id; $13..$16 one element per
     * delivery: its event_id, webhook, state, created_at. Events that already exist are skipped
     * (and get no deliveries); RETURNING names the ones inserted. ORDER BY ord inserts deliveries
     * in item order, so their ids (nextval runs after the sort) follow the targets' order. In
     * S_PUBLISH_LEASED, a delivery with state 1 (leased: handed to this node's dispatcher) is
     * inserted claimed by node $21 until $20, and comes back as a row (event seq, NULL, its id,
     * its webhook); S_PUBLISH, for sets without one, returns nothing per delivery. */
    [S_PUBLISH] = PUBLISH_EVENTS
    " dlv AS (INSERT INTO deliveries(webhook_id, event_seq, state, attempts, next_attempt_at,"
    " lease_until, last_status, created_at, updated_at)"
    " SELECT t.wh, ins.seq, t.st, 0, t.at, 0, 0, t.at, t.at"
    " FROM unnest($13::text[], $14::text[], $15::int[], $16::bigint[])"
    " WITH ORDINALITY AS t(ev, wh, st, at, ord)"
    " JOIN ins ON ins.event_id = t.ev"
    " WHERE EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = t.wh) ORDER BY t.ord)"
    " SELECT seq, event_id FROM ins",
    [S_PUBLISH_LEASED] = PUBLISH_EVENTS
    " dlv AS (INSERT INTO deliveries(webhook_id, event_seq, state, attempts, next_attempt_at,"
    " lease_until, last_status, created_at, updated_at, claimed_by)"
    " SELECT t.wh, ins.seq, t.st, 0, t.at, CASE WHEN t.st = 1 THEN $20::bigint ELSE 0 END,"
    " 0, t.at, t.at, CASE WHEN t.st = 1 THEN $21::text END"
    " FROM unnest($13::text[], $14::text[], $15::int[], $16::bigint[])"
    " WITH ORDINALITY AS t(ev, wh, st, at, ord)"
    " JOIN ins ON ins.event_id = t.ev"
    " WHERE EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = t.wh) ORDER BY t.ord"
    " RETURNING id, event_seq, webhook_id, state)"
    " SELECT seq, event_id, NULL::bigint, NULL::text FROM ins"
    " UNION ALL SELECT event_seq, NULL, id, webhook_id FROM dlv WHERE state = 1",
    [S_EV_LOOKUP] =
        "SELECT event_id, seq, n_deliveries FROM events WHERE event_id = ANY($1::text[])",
    /* Pick due rows in (next_attempt_at, id) order, skipping rows another node has locked, mark
     * them inflight, and return them with their webhook and event. The joins in `pick` keep
     * SQLite's meaning: a row whose webhook or event is gone is not claimed. */
    [S_CLAIM] = "WITH pick AS (SELECT d.id FROM deliveries AS d"
                " JOIN webhooks AS w ON w.id = d.webhook_id"
                " JOIN events AS e ON e.seq = d.event_seq"
                " WHERE d.state = 0 AND d.next_attempt_at <= $1"
                " AND d.webhook_id <> ALL($3::text[])"
                " AND w.rate_limit = 0 AND w.ordered = 0" /* gated: op_claim_gated's */
                " ORDER BY d.next_attempt_at, d.id LIMIT $4"
                " FOR UPDATE OF d SKIP LOCKED),"
                " upd AS (UPDATE deliveries AS d SET state = 1, lease_until = $2, updated_at = $1,"
                " claimed_by = $5 FROM pick WHERE d.id = pick.id"
                " RETURNING d.id, d.attempts, d.created_at, d.webhook_id, d.event_seq,"
                " d.next_attempt_at, d.snap, d.snap_object_type, d.snap_object_id, d.snap_context)"
                " SELECT u.id, u.attempts, u.created_at, u.snap, u.snap_object_type,"
                " u.snap_object_id, u.snap_context, " WH_COLS ", " EV_COLS " FROM upd AS u"
                " JOIN webhooks AS w ON w.id = u.webhook_id"
                " JOIN events AS e ON e.seq = u.event_seq"
                " ORDER BY u.next_attempt_at, u.id",
    /* The gated webhooks (rateLimit or ordered) with due rows, and whether their gate row is
     * still to be created. No lock yet: S_GATE_LOCK takes them, in id order. */
    [S_GATE_LIST] = "SELECT w.id, g.webhook_id IS NULL FROM webhooks AS w"
                    " LEFT JOIN webhook_gates AS g ON g.webhook_id = w.id"
                    " WHERE (w.rate_limit > 0 OR w.ordered <> 0) AND w.id <> ALL($2::text[])"
                    " AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.webhook_id = w.id"
                    " AND d.state = 0 AND d.next_attempt_at <= $1)"
                    " ORDER BY w.id LIMIT $3",
    [S_GATE_ADD] = "INSERT INTO webhook_gates(webhook_id) SELECT unnest($1::text[])"
                   " ON CONFLICT (webhook_id) DO NOTHING",
    /* Locks the gates: another node's claim of the same webhooks waits here until this
     * transaction ends, and the statements after this one see what it committed. */
    [S_GATE_LOCK] = "SELECT g.webhook_id, w.rate_limit, w.ordered, w.active, w.validity_ms,"
                    " g.tokens, g.refilled_at, g.last_id, " GATE_NOW_MS
                    " FROM webhook_gates AS g JOIN webhooks AS w ON w.id = g.webhook_id"
                    " WHERE g.webhook_id = ANY($1::text[]) ORDER BY g.webhook_id FOR UPDATE OF g",
    /* An ordered webhook's oldest open delivery, and the state of the one handed out last. */
    [S_GATE_HEAD] = "SELECT (SELECT x.state FROM deliveries AS x WHERE x.id = $2),"
                    " h.id, h.state, h.next_attempt_at FROM (SELECT 1) AS one LEFT JOIN"
                    " (SELECT d.id, d.state, d.next_attempt_at FROM deliveries AS d"
                    " WHERE d.webhook_id = $1 AND d.state <= 1 ORDER BY d.id LIMIT 1) AS h"
                    " ON true",
    /* Up to $4 due rows of webhook $3 in id order (only row $5 when $5 > 0), as S_CLAIM. */
    [S_GATE_CLAIM] = "WITH pick AS (SELECT d.id FROM deliveries AS d"
                     " JOIN events AS e ON e.seq = d.event_seq"
                     " WHERE d.webhook_id = $3 AND d.state = 0 AND d.next_attempt_at <= $1"
                     " AND ($5::bigint = 0 OR d.id = $5::bigint)"
                     " ORDER BY d.id LIMIT $4 FOR UPDATE OF d SKIP LOCKED),"
                     " upd AS (UPDATE deliveries AS d SET state = 1, lease_until = $2,"
                     " updated_at = $1, claimed_by = $6 FROM pick WHERE d.id = pick.id"
                     " RETURNING d.id, d.attempts, d.created_at, d.webhook_id, d.event_seq,"
                     " d.snap, d.snap_object_type, d.snap_object_id, d.snap_context)"
                     " SELECT u.id, u.attempts, u.created_at, u.snap, u.snap_object_type,"
                     " u.snap_object_id, u.snap_context, " WH_COLS ", " EV_COLS " FROM upd AS u"
                     " JOIN webhooks AS w ON w.id = u.webhook_id"
                     " JOIN events AS e ON e.seq = u.event_seq ORDER BY u.id",
    [S_GATE_SAVE] = "UPDATE webhook_gates SET tokens = $2, refilled_at = $3, last_id = $4"
                    " WHERE webhook_id = $1",
    /* Every attempt of one COMPLETE op (distinct ids); only rows still inflight change, and
     * those with a request made (at > 0) get their attempt row, all in one multi-row INSERT.
     * RETURNING gives the 1-based position of each attempt that applied. */
    [S_COMPLETE] = "WITH upd AS (UPDATE deliveries AS d SET state = a.st, attempts = a.att,"
                   " next_attempt_at = CASE WHEN a.st = 0 THEN a.nxt ELSE d.next_attempt_at END,"
                   " last_status = a.status, last_error = a.err, last_response = a.resp,"
                   " updated_at = $8, lease_until = 0,"
                   " first_attempt_at = CASE WHEN d.first_attempt_at = 0 THEN a.at"
                   " ELSE d.first_attempt_at END"
                   " FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::int[],"
                   " $6::text[], $7::text[], $9::bigint[], $10::bigint[]) WITH ORDINALITY"
                   " AS a(id, st, att, nxt, status, err, resp, at, dur, ord)"
                   " WHERE d.id = a.id AND d.state = 1"
                   " RETURNING a.ord, a.id, a.at, a.dur, a.status, a.err, a.resp),"
                   " ins AS (INSERT INTO delivery_attempts(delivery_id, at, duration_ms, status,"
                   " error, response) SELECT id, at, dur, NULLIF(status, 0), err, resp FROM upd"
                   " WHERE at > 0 ORDER BY ord)"
                   " SELECT ord FROM upd",
    /* one row per webhook and node: nodes never wait for each other here, nor for a PUT */
    [S_WH_SUCCESS] = "INSERT INTO webhook_success(webhook_id, node_id, at)"
                     " SELECT s.id, $3, s.t FROM unnest($1::text[], $2::bigint[]) AS s(id, t)"
                     " WHERE EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = s.id)"
                     " ON CONFLICT (webhook_id, node_id) DO UPDATE SET at = excluded.at"
                     " WHERE webhook_success.at < excluded.at",
    /* the disable rule: nothing to the webhook succeeded since the delivery's first attempt */
    [S_WH_DISABLE] = "UPDATE webhooks AS w SET active = 0 FROM deliveries AS d"
                     " WHERE d.id = ANY($1::bigint[]) AND w.id = d.webhook_id AND w.active <> 0"
                     " AND NOT EXISTS (SELECT 1 FROM webhook_success AS s"
                     " WHERE s.webhook_id = w.id AND s.at > CASE WHEN d.first_attempt_at > 0"
                     " THEN d.first_attempt_at ELSE d.created_at END) RETURNING d.id",
    [S_RETRY_CHECK] = "SELECT d.state, w.active, w.validity_ms FROM deliveries AS d"
                      " JOIN webhooks AS w ON w.id = d.webhook_id"
                      " WHERE d.id = $1 AND d.webhook_id = $2 FOR NO KEY UPDATE OF d",
    [S_RETRY] = "UPDATE deliveries SET state = 0, next_attempt_at = $3, lease_until = 0,"
                " updated_at = $3, attempts = CASE WHEN state = 0 THEN attempts ELSE 0 END,"
                " first_attempt_at = CASE WHEN state = 0 THEN first_attempt_at ELSE 0 END"
                " WHERE id = $1 AND webhook_id = $2 AND state <> 1",
    [S_REPLAY] = "UPDATE deliveries SET state = 0, next_attempt_at = $3, attempts = 0,"
                 " lease_until = 0, updated_at = $3, first_attempt_at = 0"
                 " WHERE webhook_id = $1 AND created_at >= $2 AND state IN (0, 3, 4)",
    /* A live node's claims are its own however long it holds them; its lease only matters once
     * it is dead (then TAKEOVER is quicker anyway) or for rows no node claimed (NULL: written by
     * a kzhook before node ids). */
    [S_LEASE_EXPIRED] =
        "UPDATE deliveries AS d SET state = 0, next_attempt_at = $1, lease_until = 0,"
        " updated_at = $1 WHERE d.state = 1 AND d.lease_until < $1"
        " AND NOT EXISTS (SELECT 1 FROM nodes AS n WHERE n.id = d.claimed_by"
        " AND n.heartbeat_at >= " SERVER_NOW_MS " - $2)",
    [S_LEASE_ALL] = "UPDATE deliveries SET state = 0, next_attempt_at = $1, lease_until = 0,"
                    " updated_at = $1 WHERE state = 1",
    /* A node's own claims and a dead node's keep their next_attempt_at: they were due then, and
     * go back in their place in the due order, ahead of what fell due since. */
    [S_RELEASE_OWN] = "UPDATE deliveries SET state = 0, lease_until = 0,"
                      " updated_at = $1 WHERE state = 1 AND claimed_by = $2",
    [S_NODE_UPSERT] = "INSERT INTO nodes(id, incarnation, started_at, heartbeat_at)"
                      " VALUES ($1, $2, " SERVER_NOW_MS ", " SERVER_NOW_MS ")"
                      " ON CONFLICT (id) DO UPDATE SET incarnation = excluded.incarnation,"
                      " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
    /* The dead nodes' rows are locked (SKIP LOCKED: a heartbeat being written keeps its node
     * out), and READ COMMITTED re-checks a row that changed since the statement's snapshot: a
     * node whose heartbeat committed meanwhile is not taken over. Only nodes that still have
     * claims are looked at (deliveries_claimed), at most $4 of them. */
    [S_TAKEOVER] = "WITH dead AS (SELECT n.id FROM nodes AS n"
                   " WHERE n.id IS DISTINCT FROM $2 AND n.heartbeat_at < " SERVER_NOW_MS " - $3"
                   " AND EXISTS (SELECT 1 FROM deliveries AS x"
                   " WHERE x.state = 1 AND x.claimed_by = n.id)"
                   " ORDER BY n.id LIMIT $4 FOR NO KEY UPDATE SKIP LOCKED),"
                   " pick AS (SELECT d.id, d.claimed_by FROM deliveries AS d"
                   " JOIN dead ON d.claimed_by = dead.id WHERE d.state = 1"
                   " FOR UPDATE OF d SKIP LOCKED),"
                   " upd AS (UPDATE deliveries AS d SET state = 0,"
                   " lease_until = 0, updated_at = $1 FROM pick"
                   " WHERE d.id = pick.id AND d.state = 1 RETURNING pick.claimed_by AS node)"
                   " SELECT node, count(*) FROM upd GROUP BY node ORDER BY node",
    /* heartbeat connection */
    [S_HEARTBEAT] = "UPDATE nodes SET heartbeat_at = " SERVER_NOW_MS " WHERE id = $1"
                    " AND incarnation = $2",
    [S_NODE_STOP] = "UPDATE nodes SET heartbeat_at = 0 WHERE id = $1 AND incarnation = $2",
    /* next_attempt_at < before is implied by updated_at < before for a succeeded row; it turns
     * the scan into a range of deliveries_due (see store_sqlite.c). */
    [S_PRUNE_DLV] = "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                    " WHERE state = 2 AND next_attempt_at < $1 AND updated_at < $1 LIMIT $2)"
                    " RETURNING event_seq",
    [S_PRUNE_EV_DROP] = "DELETE FROM events AS e WHERE e.seq = ANY($1::bigint[])"
                        " AND e.created_at < $2"
                        " AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.event_seq = e.seq)",
    [S_PRUNE_EV_SCAN] = "SELECT seq, created_at FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
    /* the orphans among the scanned events, in seq order, at most $3 of them */
    [S_PRUNE_EV_SWEEP] = "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events AS e"
                         " WHERE e.seq = ANY($1::bigint[]) AND e.created_at < $2"
                         " AND NOT EXISTS (SELECT 1 FROM deliveries AS d"
                         " WHERE d.event_seq = e.seq) ORDER BY e.seq LIMIT $3) RETURNING seq",
    [S_TXID_STATUS] = "SELECT txid_status($1::bigint)",

    [S_PING] = "SELECT 1",
    [S_META_GET] = "SELECT value FROM meta WHERE key = $1",
    [S_APP_GET] = "SELECT " APP_COLS " FROM applications WHERE id = $1",
    [S_APP_LIST] = "SELECT " APP_COLS " FROM applications ORDER BY created_seq",
    [S_TOKEN_GET] = "SELECT application_id, expires_at FROM access_tokens WHERE token_hash = $1",
    [S_WH_GET] = "SELECT " WH_COLS " FROM webhooks AS w WHERE w.id = $1",
    [S_WH_LIST_APP] = "SELECT " WH_COLS " FROM webhooks AS w WHERE w.application_id = $1"
                      " AND ($2::int < 0 OR w.object_type = $2::int)"
                      " AND ($3::text IS NULL OR w.object_id = $3::text) ORDER BY w.created_seq",
    [S_WH_LIST_ALL] = "SELECT " WH_COLS " FROM webhooks AS w"
                      " WHERE ($1::int < 0 OR w.object_type = $1::int)"
                      " AND ($2::text IS NULL OR w.object_id = $2::text) ORDER BY w.created_seq",
    [S_DLV_LIST] = "SELECT d.id, d.webhook_id, d.event_seq, e.event_id, e.event_type, d.state,"
                   " d.attempts, d.last_status, d.last_error, d.last_response,"
                   " d.next_attempt_at, d.created_at, d.updated_at"
                   " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
                   " WHERE d.webhook_id = $1 AND d.id < $2 AND d.state BETWEEN $3 AND $4"
                   " ORDER BY d.id DESC LIMIT $5",
    [S_DLV_GET] = "SELECT d.id, d.webhook_id, d.event_seq, e.event_id, e.event_type, d.state,"
                  " d.attempts, d.last_status, d.last_error, d.last_response,"
                  " d.next_attempt_at, d.created_at, d.updated_at, d.snap, d.snap_object_type,"
                  " d.snap_object_id, d.snap_context, " WH_COLS ", " EV_COLS
                  " FROM deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id"
                  " JOIN events AS e ON e.seq = d.event_seq"
                  " WHERE d.id = $1 AND d.webhook_id = $2",
    /* the newest $2, read back oldest first by the caller */
    [S_ATT_LIST] = "SELECT at, duration_ms, status, error, response FROM delivery_attempts"
                   " WHERE delivery_id = $1 ORDER BY id DESC LIMIT $2",
    [S_DLV_OF_EVENT] = "SELECT d.id FROM events AS e JOIN deliveries AS d ON d.event_seq = e.seq"
                       " WHERE e.event_id = $2 AND d.webhook_id = $1",
    [S_BACKLOG] = "SELECT"
                  " (SELECT count(*) FROM deliveries AS d WHERE state = 0 AND next_attempt_at <= $1"
                  " AND EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = d.webhook_id)),"
                  " (SELECT count(*) FROM deliveries WHERE state = 0 AND next_attempt_at > $1),"
                  " (SELECT count(*) FROM deliveries WHERE state = 1)",
    /* Rows of a webhook deleted by a concurrent transaction (another node's DELETE racing a
     * publish) are never claimed: they must not make "next due" say "now" forever. */
    [S_NEXT_DUE] = "SELECT next_attempt_at FROM deliveries AS d WHERE state = 0"
                   " AND EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = d.webhook_id)"
                   " ORDER BY next_attempt_at LIMIT 1",
    [S_STATS_MINUTE_SET] =
        "INSERT INTO stats_minute(minute, node_id, published, succeeded, failed, dead, hist)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT(minute, node_id) DO UPDATE SET"
        " published = excluded.published, succeeded = excluded.succeeded,"
        " failed = excluded.failed, dead = excluded.dead, hist = excluded.hist",
    [S_STATS_WH_SET] =
        "INSERT INTO webhook_stats(webhook_id, hour, node_id, succeeded, failed, dead)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT(webhook_id, hour, node_id) DO UPDATE SET"
        " succeeded = excluded.succeeded, failed = excluded.failed,"
        " dead = excluded.dead",
    /* the same merge as SQLite's (store.h, struct kz_stats_webhook) */
    [S_STATS_STATE_MERGE] =
        "INSERT INTO webhook_state AS s(webhook_id, last_ok_at, last_fail_at, failing_since,"
        " last_error) VALUES ($1, $2, $3, NULLIF($4::bigint, 0), $5)"
        " ON CONFLICT(webhook_id) DO UPDATE SET"
        " last_ok_at = GREATEST(s.last_ok_at, excluded.last_ok_at),"
        " last_fail_at = GREATEST(s.last_fail_at, excluded.last_fail_at),"
        " last_error = CASE WHEN excluded.last_fail_at > s.last_fail_at"
        "   THEN excluded.last_error ELSE s.last_error END,"
        " failing_since = CASE WHEN GREATEST(s.last_fail_at, excluded.last_fail_at)"
        "     <= GREATEST(s.last_ok_at, excluded.last_ok_at) THEN NULL"
        "   ELSE LEAST(CASE WHEN s.failing_since > GREATEST(s.last_ok_at, excluded.last_ok_at)"
        "              THEN s.failing_since ELSE GREATEST(s.last_fail_at, excluded.last_fail_at) "
        "END,"
        "            CASE WHEN excluded.failing_since > GREATEST(s.last_ok_at, excluded.last_ok_at)"
        "              THEN excluded.failing_since"
        "              ELSE GREATEST(s.last_fail_at, excluded.last_fail_at) END)"
        "   END",
    [S_STATS_PRUNE_MINUTES] = "DELETE FROM stats_minute WHERE minute < $1",
    [S_STATS_PRUNE_WH] = "DELETE FROM webhook_stats WHERE hour < $1::bigint - 3600000",
    [S_STATS_PRUNE_STATE] = "DELETE FROM webhook_state AS s WHERE NOT EXISTS"
                            " (SELECT 1 FROM webhooks AS w WHERE w.id = s.webhook_id)",
    [S_STATS_MINUTES] = "SELECT minute, published, succeeded, failed, dead, hist FROM stats_minute"
                        " WHERE minute >= $1 ORDER BY minute",
    [S_WH_HEALTH_SUM] = "SELECT COALESCE(SUM(succeeded), 0), COALESCE(SUM(failed), 0),"
                        " COALESCE(SUM(dead), 0) FROM webhook_stats"
                        " WHERE webhook_id = $1 AND hour >= $2",
    [S_WH_HEALTH_STATE] = "SELECT COALESCE(failing_since, 0), last_ok_at, last_fail_at, last_error"
                          " FROM webhook_state WHERE webhook_id = $1",
    [S_FAILING_LIST] =
        "SELECT w.id, w.application_id, w.callback_url, s.failing_since, s.last_error"
        " FROM webhook_state AS s JOIN webhooks AS w ON w.id = s.webhook_id"
        " WHERE s.failing_since IS NOT NULL ORDER BY s.failing_since, s.webhook_id LIMIT $1",
};

/* One libpq connection and which statements it has prepared. */
struct conn {
    PGconn *pg;
    bool prepared[S__COUNT];
    struct conn *next; /* free list of the read pool */
};

/* A growable list of pointers or integers: writer scratch reused across batches. */
struct vec {
    void *p;
    size_t n, cap;
};

struct kz_backend {
    char *url;

    /* writer thread only (and open/close) */
    struct conn *wr;
    int64_t wr_retry_at;   /* kz_mono_ms() before which no reconnect is tried */
    int wr_backoff;        /* next wait after a failed connect */
    int64_t xid;           /* the current batch's transaction id (resolve_commit) */
    int64_t prune_cursor;  /* events.seq where the orphan-event sweep resumes */
    bool sp_open;          /* savepoint "op" exists in the current transaction */
    bool sp_fresh;         /* ... and no op has used it yet */
    struct kz_buf arr[19]; /* array literals being built */
    struct vec items, first, uniq, cursor, seqkeys; /* op_publish's scratch */

    _Atomic int wr_pid; /* server pid of the write connection: own NOTIFYs are ignored */

    /* this node (node_start, writer thread; read by the heartbeat thread it starts later) */
    char node_id[KZ_NODE_ID_MAX + 1];
    char incarnation[32];
    bool has_node;
    /* heartbeat thread only (and close) */
    struct conn *hb;
    int64_t hb_retry_at;
    int hb_backoff;

    /* read pool */
    pthread_mutex_t pool_mu; /* guards the pool fields */
    pthread_cond_t pool_cv;  /* a read connection was returned or dropped */
    struct conn *idle;       /* idle read connections */
    size_t n_read;           /* read connections open or being opened */
    int64_t rd_retry_at;     /* kz_mono_ms() before which no new read connection is tried */
    int rd_backoff;

    /* LISTEN thread */
    pthread_mutex_t ln_mu; /* guards fn/fn_arg and the start handshake; held while fn runs */
    pthread_cond_t ln_cv;  /* the thread finished its first connect attempt */
    void (*fn)(void *arg, int what);
    void *fn_arg;
    bool ln_started, ln_ready;
    pthread_t ln;
    int ln_pipe[2]; /* written to stop the thread */
    atomic_bool ln_stop;
};

/* ==== small helpers ==== */

static void *vec_reserve(struct vec *v, size_t n, size_t elem)
{
    if (n > v->cap) {
        v->cap = n < 64 ? 64 : n;
        v->p = kz_realloc(v->p, v->cap * elem);
    }
    v->n = n;
    return v->p;
}

static int next_backoff(int ms)
{
    return ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2;
}

/* An open-addressing map from a string key (not owned) to an index. */
struct kmap {
    size_t mask;
    const char **skey;
    size_t *val;
    bool *used;
};

static void kmap_init(struct kmap *m, size_t n)
{
    size_t cap = 16;

    while (cap < n * 2)
        cap *= 2;
    m->mask = cap - 1;
    m->skey = kz_calloc(cap, sizeof(*m->skey));
    m->val = kz_calloc(cap, sizeof(*m->val));
    m->used = kz_calloc(cap, sizeof(*m->used));
}

static void kmap_cleanup(struct kmap *m)
{
    kz_free(m->skey);
    kz_free(m->val);
    kz_free(m->used);
}

/* Finds string `k` (length `len`); returns its slot, which is unused when `k` is absent. */
static size_t kmap_slot_s(const struct kmap *m, const char *k, size_t len)
{
    size_t i = kz_hash(KZ_HASH_INIT, k, len) & m->mask;

    while (m->used[i] && (strlen(m->skey[i]) != len || memcmp(m->skey[i], k, len)))
        i = (i + 1) & m->mask;
    return i;
}

/* ==== errors ==== */

/* SQLSTATE -> kz_err. Constraint violations are the caller's answer (a duplicate id); data
 * exceptions (say invalid UTF-8) are bad input; serialization and lock failures are "try again". */
static enum kz_err map_state(const char *st)
{
    if (!st)
        return KZ_ERR_DB;
    if (!strncmp(st, "23", 2))
        return KZ_ERR_CONFLICT;
    if (!strcmp(st, "40001") || !strcmp(st, "40P01") || !strcmp(st, "55P03"))
        return KZ_ERR_BUSY;
    if (!strncmp(st, "22", 2))
        return KZ_ERR_INVALID;
    if (!strncmp(st, "54", 2))
        return KZ_ERR_TOOBIG;
    if (!strcmp(st, "53200"))
        return KZ_ERR_NOMEM;
    return KZ_ERR_DB;
}

static bool conn_lost(const struct conn *c)
{
    return !c || !c->pg || PQstatus(c->pg) != CONNECTION_OK;
}

/* The first line of libpq's message for `c` (connection-level failures). */
static const char *conn_msg(const struct conn *c, char *out, size_t n)
{
    const char *m = c && c->pg ? PQerrorMessage(c->pg) : "no connection";
    size_t len = strcspn(m, "\n");

    if (len >= n)
        len = n - 1;
    memcpy(out, m, len);
    out[len] = '\0';
    return out;
}

/* Logs a failed statement (`r` may be NULL) on `c` and maps it. A dead connection is KZ_ERR_DB.
 * Only SQLSTATE and the primary message are logged: DETAIL can quote bound values. */
static enum kz_err fail(struct conn *c, const PGresult *r, const char *what)
{
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    enum kz_err e = map_state(st);
    char line[256];
    char emsg[300];

    if (conn_lost(c)) {
        e = KZ_ERR_DB;
        st = NULL;
        msg = conn_msg(c, line, sizeof(line));
    } else if (!msg) {
        msg = conn_msg(c, line, sizeof(line));
    }
    /* a lock timeout, deadlock or serialization failure is retried (run_isolated) or answered
     * 503: worth a warning, not an error */
    if (e != KZ_ERR_CONFLICT)
        kz_log(e == KZ_ERR_BUSY ? "warn" : "error", "store: postgresql statement failed",
               "\"what\":\"%s\",\"sqlstate\":\"%s\",\"err\":\"%s\"", what, st ? st : "",
               kz_log_esc(msg, emsg, sizeof(emsg)));
    return e;
}

/* ==== parameters and results ==== */

/* Text-format parameters of one statement; NULL values are SQL NULL. */
struct params {
    int n;
    const char *v[PMAX];
    char num[PMAX][24];
};

static void p_text(struct params *p, const char *s)
{
    KZ_ASSERT(p->n < PMAX);
    p->v[p->n++] = s;
}

/* A fixed-size char array field (NUL-terminated by every writer of our structs). */
static void p_fixed(struct params *p, const char *s, size_t size)
{
    KZ_ASSERT(memchr(s, '\0', size));
    p_text(p, s);
}

static void p_int(struct params *p, int64_t v)
{
    KZ_ASSERT(p->n < PMAX);
    snprintf(p->num[p->n], sizeof(p->num[p->n]), "%lld", (long long)v);
    p->v[p->n] = p->num[p->n];
    p->n++;
}

/* Column text as a new string (NULL for SQL NULL). */
static char *col_dup(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return NULL;
    return kz_strndup(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
}

static int64_t col_int(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10); /* "" (NULL) reads as 0 */
}

/* Column text into a fixed array; "" for NULL. false (and a truncated copy) when it does not fit,
 * which means a row we did not write: callers report KZ_ERR_DB. */
static bool col_fixed(const PGresult *r, int row, int col, char *dst, size_t size)
{
    size_t n = (size_t)PQgetlength(r, row, col);
    bool fits = n < size;

    if (!fits)
        n = size - 1;
    if (n)
        memcpy(dst, PQgetvalue(r, row, col), n);
    dst[n] = '\0';
    return fits;
}

/* Reads WH_COLS starting at column `c0` into `w` (which owns its strings afterwards). */
static bool row_webhook(const PGresult *r, int row, int c0, struct kz_webhook *w)
{
    bool ok = col_fixed(r, row, c0, w->id, sizeof(w->id));

    ok = col_fixed(r, row, c0 + 1, w->app_id, sizeof(w->app_id)) && ok;
    w->object_type = (enum kz_objtype)col_int(r, row, c0 + 2);
    w->object_id = col_dup(r, row, c0 + 3);
    w->event_mask = (uint32_t)col_int(r, row, c0 + 4);
    w->callback_url = col_dup(r, row, c0 + 5);
    w->callback_token = col_dup(r, row, c0 + 6);
    w->callback_context = col_dup(r, row, c0 + 7);
    w->signing_secret = col_dup(r, row, c0 + 8);
    w->ts_ms = col_int(r, row, c0 + 9);
    w->validity_ms = col_int(r, row, c0 + 10);
    w->active = col_int(r, row, c0 + 11) != 0;
    w->headers_json = col_dup(r, row, c0 + 12);
    w->filter_json = col_dup(r, row, c0 + 13);
    w->prev_secret = col_dup(r, row, c0 + 14);
    w->prev_expires = col_int(r, row, c0 + 15);
    w->rate_limit = (int)col_int(r, row, c0 + 16);
    w->ordered = col_int(r, row, c0 + 17) != 0;
    return ok;
}

/* Reads EV_COLS starting at column `c0` into `e` (which owns its strings afterwards). */
static void row_event(const PGresult *r, int row, int c0, struct kz_event *e)
{
    e->seq = col_int(r, row, c0);
    e->event_id = col_dup(r, row, c0 + 1);
    e->event_type = (enum kz_evtype)col_int(r, row, c0 + 2);
    e->group_id = col_dup(r, row, c0 + 3);
    e->action_id = col_dup(r, row, c0 + 4);
    e->action_package_id = col_dup(r, row, c0 + 5);
    e->from_user = col_dup(r, row, c0 + 6);
    e->from_user_id = col_dup(r, row, c0 + 7);
    e->from_user_name = col_dup(r, row, c0 + 8);
    e->from_user_pic = col_dup(r, row, c0 + 9);
    e->data_json = col_dup(r, row, c0 + 10);
    e->created_at = col_int(r, row, c0 + 11);
    e->is_bot = col_int(r, row, c0 + 12) != 0;
    e->source_group_id = col_dup(r, row, c0 + 13);
    e->traceparent = col_dup(r, row, c0 + 14);
}

static bool row_app(const PGresult *r, int row, struct kz_app *a)
{
    bool ok = col_fixed(r, row, 0, a->id, sizeof(a->id));

    a->name = col_dup(r, row, 1);
    a->object_ids_json = col_dup(r, row, 2);
    ok = col_fixed(r, row, 3, a->secret_hash, sizeof(a->secret_hash)) && ok;
    ok = col_fixed(r, row, 4, a->refresh_hash, sizeof(a->refresh_hash)) && ok;
    a->created_at = col_int(r, row, 5);
    return ok;
}

/* ==== array literals ==== */

/* Array parameters are PostgreSQL array literals: {"a","b\"c",NULL,1,2}. arr_* append one
 * element; arr_end closes the literal and returns it. A literal bigger than ARRAY_MAX fails the
 * statement with KZ_ERR_TOOBIG (checked by arr_end). */
static void arr_begin(struct kz_buf *b)
{
    kz_buf_reset(b);
    (void)kz_buf_append(b, "{", 1);
}

static void arr_sep(struct kz_buf *b)
{
    if (b->len > 1)
        (void)kz_buf_append(b, ",", 1);
}

/* Appends `s[0..n)` as a quoted element. Invalid UTF-8 fails the statement (SQLSTATE 22021):
 * text kzhook did not write (a receiver's answer) was cleaned by store.c before. */
static void arr_strn(struct kz_buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    size_t run = 0; /* bytes pending a copy, starting at i - run */

    arr_sep(b);
    if (!s) {
        (void)kz_buf_append(b, "NULL", 4);
        return;
    }
    (void)kz_buf_append(b, "\"", 1);
    while (i < n) {
        size_t len = 1;

        if (u[i] == '"' || u[i] == '\\') {
            (void)kz_buf_append(b, s + i - run, run);
            run = 0;
            (void)kz_buf_append(b, "\\", 1);
            (void)kz_buf_append(b, s + i, 1);
            i++;
            continue;
        }
        run += len;
        i += len;
    }
    (void)kz_buf_append(b, s + i - run, run);
    (void)kz_buf_append(b, "\"", 1);
}

static void arr_str(struct kz_buf *b, const char *s)
{
    arr_strn(b, s, s ? strlen(s) : 0);
}

static void arr_int(struct kz_buf *b, int64_t v)
{
    char num[24];
    int k = snprintf(num, sizeof(num), "%lld", (long long)v);

    arr_sep(b);
    (void)kz_buf_append(b, num, (size_t)k);
}

/* Closes the literal; NULL when it outgrew its buffer (the statement must not run). */
static const char *arr_end(struct kz_buf *b)
{
    if (kz_buf_append(b, "}", 1))
        return NULL;
    return kz_buf_cstr(b);
}

/* Adds array literals arr[0..n) as parameters; KZ_ERR_TOOBIG when one overflowed. */
static enum kz_err p_arrays(struct params *p, struct kz_buf *arr, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        const char *s = arr_end(&arr[i]);

        if (!s)
            return KZ_ERR_TOOBIG;
        p_text(p, s);
    }
    return KZ_OK;
}

/* ==== connections ==== */

/* Server notices (say "relation already exists, skipping") go to our log, not stderr. */
static void on_notice(void *arg, const char *message)
{
    char emsg[300];

    (void)arg;
    if (!strncmp(message, "NOTICE:", 7) || !strncmp(message, "DEBUG", 5) ||
        !strncmp(message, "INFO:", 5) || !strncmp(message, "LOG:", 4))
        return;
    kz_log("warn", "store: postgresql notice", "\"notice\":\"%s\"",
           kz_log_esc(message, emsg, sizeof(emsg)));
}

static void conn_close(struct conn *c)
{
    if (!c)
        return;
    PQfinish(c->pg);
    kz_free(c);
}

/* Connects to `url`. Entries before "dbname" are defaults the URL may override; the ones after
 * it are ours. The error text is libpq's, which never includes the password. */
static enum kz_err conn_open(const char *url, struct conn **out, char *err, size_t errlen)
{
    static const char *const kw[] = {
        "connect_timeout",  "keepalives_idle", "keepalives_interval", "keepalives_count",
        "application_name", "dbname",          "client_encoding",     NULL};
    const char *val[] = {"5", "30", "10", "3", "kzhook", url, "UTF8", NULL};
    struct conn *c = kz_calloc(1, sizeof(*c));
    enum kz_err result = KZ_ERR_DB;
    char line[256];

    c->pg = PQconnectdbParams(kw, val, 1);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        snprintf(err, errlen, "store: cannot connect to PostgreSQL: %s",
                 conn_msg(c, line, sizeof(line)));
        goto out;
    }
    if (PQserverVersion(c->pg) < 100000) {
        snprintf(err, errlen, "store: PostgreSQL %d is too old (10 or newer needed)",
                 PQserverVersion(c->pg) / 10000);
        result = KZ_ERR_INVALID;
        goto out;
    }
    (void)PQsetNoticeProcessor(c->pg, on_notice, NULL);
    *out = c;
    c = NULL;
    result = KZ_OK;
out:
    conn_close(c);
    return result;
}

/* Runs prepared statement `id` (preparing it on first use on this connection). Returns its
 * result, which the caller PQclear()s, or NULL after logging the failure and mapping it into
 * *err. */
static PGresult *run(struct conn *c, enum stmt_id id, const struct params *p, const char *what,
                     enum kz_err *err)
{
    char name[16];
    PGresult *r;
    ExecStatusType st;

    snprintf(name, sizeof(name), "k%d", (int)id);
    if (!c->prepared[id]) {
        r = PQprepare(c->pg, name, stmt_sql[id], 0, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            *err = fail(c, r, what);
            PQclear(r);
            return NULL;
        }
        PQclear(r);
        c->prepared[id] = true;
    }
    r = PQexecPrepared(c->pg, name, p ? p->n : 0, p ? p->v : NULL, NULL, NULL, 0);
    st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    *err = fail(c, r, what);
    PQclear(r);
    return NULL;
}

/* Runs a statement whose result only matters as success and a row count (`*changed`). */
static enum kz_err run_count(struct conn *c, enum stmt_id id, const struct params *p,
                             const char *what, int64_t *changed)
{
    enum kz_err result = KZ_OK;
    PGresult *r = run(c, id, p, what, &result);

    if (!r)
        return result;
    if (changed)
        *changed = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return KZ_OK;
}

/* Sends `sql` (one or more statements, no parameters) as one simple query and reads every
 * result. The last row-returning result is handed to *rows when given (caller PQclear()s).
 * Returns the first failure, mapped. */
static enum kz_err simple(struct conn *c, const char *sql, const char *what, PGresult **rows)
{
    enum kz_err result = KZ_OK;
    PGresult *r;

    if (rows)
        *rows = NULL;
    if (!PQsendQuery(c->pg, sql))
        return fail(c, NULL, what);
    while ((r = PQgetResult(c->pg))) {
        ExecStatusType st = PQresultStatus(r);

        if (st == PGRES_TUPLES_OK && rows && !result) {
            PQclear(*rows);
            *rows = r;
            continue;
        }
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY && !result)
            result = fail(c, r, what);
        PQclear(r);
    }
    if (!result && conn_lost(c))
        result = fail(c, NULL, what);
    if (result && rows) {
        PQclear(*rows);
        *rows = NULL;
    }
    return result;
}

/* Brings the schema to the newest version under a session advisory lock, so that nodes starting
 * together migrate exactly once; each step is its own transaction. */
static enum kz_err migrate(struct conn *c, char *err, size_t errlen)
{
    const int64_t newest = (int64_t)KZ_ARRAY_LEN(migrations);
    enum kz_err result;
    PGresult *rows = NULL;
    bool locked = false;
    char sql[160];
    int64_t version;

    snprintf(sql, sizeof(sql), "SELECT pg_advisory_lock(%lld)", (long long)MIGRATE_LOCK);
    result = simple(c, sql, "migration lock", NULL);
    if (result)
        goto fail;
    locked = true;
    result = simple(c, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
                    "schema_version", NULL);
    if (result)
        goto fail;
    for (;;) {
        result = simple(c, "BEGIN; SELECT COALESCE(MAX(version), 0) FROM schema_version",
                        "schema version", &rows);
        if (result || !rows || PQntuples(rows) != 1) {
            result = result ? result : KZ_ERR_DB;
            goto fail;
        }
        version = col_int(rows, 0, 0);
        PQclear(rows);
        rows = NULL;
        if (version > newest) {
            snprintf(err, errlen, "store: schema version %lld is newer than this binary (%lld)",
                     (long long)version, (long long)newest);
            result = KZ_ERR_DB;
            goto out;
        }
        if (version == newest)
            break;
        result = simple(c, migrations[version], "migration", NULL);
        if (result)
            goto fail;
        snprintf(sql, sizeof(sql), "INSERT INTO schema_version(version) VALUES (%lld); COMMIT",
                 (long long)(version + 1));
        result = simple(c, sql, "migration commit", NULL);
        if (result)
            goto fail;
        kz_log("info", "store: schema migrated", "\"version\":%lld", (long long)(version + 1));
    }
    result = simple(c, "COMMIT", "migration commit", NULL);
    if (result)
        goto fail;
    goto out;
fail:
    snprintf(err, errlen, "store: PostgreSQL migration failed: %s",
             PQerrorMessage(c->pg)[0] ? PQerrorMessage(c->pg) : kz_err_str(result));
    err[strcspn(err, "\n")] = '\0';
out:
    if (!conn_lost(c)) {
        if (PQtransactionStatus(c->pg) != PQTRANS_IDLE)
            (void)simple(c, "ROLLBACK", "migration rollback", NULL);
        if (locked) {
            snprintf(sql, sizeof(sql), "SELECT pg_advisory_unlock(%lld)", (long long)MIGRATE_LOCK);
            (void)simple(c, sql, "migration unlock", NULL);
        }
    }
    PQclear(rows);
    return result;
}

/* Makes sure the write connection is up: reconnects a dead one at once the first time, then
 * waits out the backoff (failing fast meanwhile). */
static enum kz_err writer_conn(struct kz_backend *be)
{
    char err[300];
    char emsg[400];
    int64_t now;

    if (be->wr && !conn_lost(be->wr))
        return KZ_OK;
    if (be->wr) {
        conn_close(be->wr);
        be->wr = NULL;
        atomic_store(&be->wr_pid, 0);
    }
    now = kz_mono_ms();
    if (now < be->wr_retry_at)
        return KZ_ERR_DB;
    if (conn_open(be->url, &be->wr, err, sizeof(err))) {
        kz_log("error", "store: write connection down", "\"retry_ms\":%d,\"err\":\"%s\"",
               be->wr_backoff, kz_log_esc(err, emsg, sizeof(emsg)));
        be->wr_retry_at = now + be->wr_backoff;
        be->wr_backoff = next_backoff(be->wr_backoff);
        return KZ_ERR_DB;
    }
    if (be->wr_retry_at)
        kz_log("info", "store: write connection restored", NULL);
    be->wr_retry_at = 0;
    be->wr_backoff = BACKOFF_MIN_MS;
    atomic_store(&be->wr_pid, PQbackendPID(be->wr->pg));
    return KZ_OK;
}

/* ==== read pool ==== */

/* Takes an idle read connection, opening one when fewer than READ_MAX exist (unless the last
 * attempt failed less than the backoff ago: then KZ_ERR_DB at once), else waits for one.
 * `*fresh` tells whether the connection was just opened. */
static enum kz_err acquire(struct kz_backend *be, struct conn **out, bool *fresh)
{
    struct conn *c = NULL;
    char err[300];
    char emsg[400];
    int64_t now;

    pthread_mutex_lock(&be->pool_mu);
    while (!be->idle && be->n_read >= READ_MAX)
        pthread_cond_wait(&be->pool_cv, &be->pool_mu);
    if (be->idle) {
        c = be->idle;
        be->idle = c->next;
        pthread_mutex_unlock(&be->pool_mu);
        *out = c;
        *fresh = false;
        return KZ_OK;
    }
    now = kz_mono_ms();
    if (now < be->rd_retry_at) {
        pthread_mutex_unlock(&be->pool_mu);
        return KZ_ERR_DB;
    }
    be->n_read++; /* reserve the slot; connect outside the lock */
    pthread_mutex_unlock(&be->pool_mu);

    if (conn_open(be->url, &c, err, sizeof(err))) {
        pthread_mutex_lock(&be->pool_mu);
        be->n_read--;
        kz_log("error", "store: cannot open a read connection", "\"retry_ms\":%d,\"err\":\"%s\"",
               be->rd_backoff, kz_log_esc(err, emsg, sizeof(emsg)));
        be->rd_retry_at = now + be->rd_backoff;
        be->rd_backoff = next_backoff(be->rd_backoff);
        pthread_cond_signal(&be->pool_cv);
        pthread_mutex_unlock(&be->pool_mu);
        return KZ_ERR_DB;
    }
    pthread_mutex_lock(&be->pool_mu);
    be->rd_retry_at = 0;
    be->rd_backoff = BACKOFF_MIN_MS;
    pthread_mutex_unlock(&be->pool_mu);
    *out = c;
    *fresh = true;
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

/* Closes a dead read connection and frees its slot. */
static void drop(struct kz_backend *be, struct conn *c)
{
    conn_close(c);
    pthread_mutex_lock(&be->pool_mu);
    be->n_read--;
    pthread_cond_signal(&be->pool_cv);
    pthread_mutex_unlock(&be->pool_mu);
}

/* Runs read statement `id` on a pooled connection. On success *out holds the connection (give it
 * back with release() once done with *res). A pooled connection that turns out dead (the server
 * restarted since its last use) is dropped and the statement retried on another; reads have no
 * side effects, and each retry drops one stale connection, so this ends after at most
 * READ_MAX + 1 tries. */
static enum kz_err read_run(struct kz_backend *be, enum stmt_id id, const struct params *p,
                            const char *what, struct conn **out, PGresult **res)
{
    for (;;) {
        struct conn *c = NULL;
        bool fresh = false;
        enum kz_err result = acquire(be, &c, &fresh);

        if (result)
            return result;
        *res = run(c, id, p, what, &result);
        if (*res) {
            *out = c;
            return KZ_OK;
        }
        if (!conn_lost(c)) {
            release(be, c);
            return result;
        }
        drop(be, c);
        if (fresh)
            return result;
    }
}

/* ==== LISTEN thread ==== */

/* Calls the registered callback for each bit of `mask` (1 << KZ_NOTIFY_*), under ln_mu so that
 * unregistering waits for a running callback. */
static void deliver(struct kz_backend *be, unsigned mask)
{
    pthread_mutex_lock(&be->ln_mu);
    if (be->fn && (mask & (1u << KZ_NOTIFY_WEBHOOKS)))
        be->fn(be->fn_arg, KZ_NOTIFY_WEBHOOKS);
    if (be->fn && (mask & (1u << KZ_NOTIFY_DUE)))
        be->fn(be->fn_arg, KZ_NOTIFY_DUE);
    pthread_mutex_unlock(&be->ln_mu);
}

/* Sleeps up to `ms` or until stop is asked; true when stopping. */
static bool wait_stop(struct kz_backend *be, int ms)
{
    struct pollfd pfd = {.fd = be->ln_pipe[0], .events = POLLIN};

    if (atomic_load(&be->ln_stop))
        return true;
    (void)poll(&pfd, 1, ms);
    return atomic_load(&be->ln_stop);
}

static void ln_mark_ready(struct kz_backend *be)
{
    pthread_mutex_lock(&be->ln_mu);
    be->ln_ready = true;
    pthread_cond_broadcast(&be->ln_cv);
    pthread_mutex_unlock(&be->ln_mu);
}

/* LISTEN kzhook on a dedicated connection and turn each NOTIFY from another server session into
 * the callback. A lost connection is reopened with backoff; since notifications sent meanwhile
 * are lost, a reconnect reports both kinds (the receivers resynchronise, which is cheap). */
static void *listen_main(void *arg)
{
    struct kz_backend *be = arg;
    struct conn *c = NULL;
    int backoff = BACKOFF_MIN_MS;
    bool missed = false;
    char err[300];
    char emsg[400];

    while (!atomic_load(&be->ln_stop)) {
        struct pollfd pfd[2];
        PGnotify *nt;
        unsigned mask = 0;

        if (!c) {
            if (conn_open(be->url, &c, err, sizeof(err)) ||
                simple(c, "LISTEN " CHANNEL, "listen", NULL)) {
                if (c)
                    snprintf(err, sizeof(err), "LISTEN failed");
                conn_close(c);
                c = NULL;
                kz_log("error", "store: notify connection down", "\"retry_ms\":%d,\"err\":\"%s\"",
                       backoff, kz_log_esc(err, emsg, sizeof(emsg)));
                ln_mark_ready(be);
                missed = true;
                if (wait_stop(be, backoff))
                    break;
                backoff = next_backoff(backoff);
                continue;
            }
            backoff = BACKOFF_MIN_MS;
            ln_mark_ready(be);
            if (missed) {
                kz_log("info", "store: notify connection restored", NULL);
                deliver(be, (1u << KZ_NOTIFY_WEBHOOKS) | (1u << KZ_NOTIFY_DUE));
            }
            missed = false;
        }
        pfd[0].fd = PQsocket(c->pg);
        pfd[0].events = POLLIN;
        pfd[1].fd = be->ln_pipe[0];
        pfd[1].events = POLLIN;
        if (poll(pfd, 2, -1) < 0 && errno != EINTR)
            break;
        if (atomic_load(&be->ln_stop))
            break;
        if (!PQconsumeInput(c->pg) || conn_lost(c)) {
            kz_log("warn", "store: notify connection lost", "\"err\":\"%s\"",
                   conn_msg(c, err, sizeof(err)));
            conn_close(c);
            c = NULL;
            missed = true;
            continue;
        }
        while ((nt = PQnotifies(c->pg))) {
            if (nt->be_pid != atomic_load(&be->wr_pid)) {
                if (!strcmp(nt->extra, "webhooks"))
                    mask |= 1u << KZ_NOTIFY_WEBHOOKS;
                else if (!strcmp(nt->extra, "due"))
                    mask |= 1u << KZ_NOTIFY_DUE;
            }
            PQfreemem(nt);
        }
        if (mask)
            deliver(be, mask);
    }
    conn_close(c);
    return NULL;
}

/* Registers (or, with fn NULL, removes) the callback. The first registration starts the LISTEN
 * thread and returns once its first connect attempt is over, so that a NOTIFY committed after
 * this call returns is seen (when the server is reachable). */
static void pg_on_notify(struct kz_backend *be, void (*fn)(void *arg, int what), void *arg)
{
    int rc;

    pthread_mutex_lock(&be->ln_mu);
    be->fn = fn;
    be->fn_arg = arg;
    if (fn && !be->ln_started) {
        if (pipe(be->ln_pipe)) {
            kz_log("error", "store: cannot create the notify pipe", "\"errno\":%d", errno);
            goto out;
        }
        rc = pthread_create(&be->ln, NULL, listen_main, be);
        if (rc) {
            kz_log("error", "store: cannot start the notify thread", "\"rc\":%d", rc);
            close(be->ln_pipe[0]);
            close(be->ln_pipe[1]);
            goto out;
        }
        be->ln_started = true;
        while (!be->ln_ready)
            pthread_cond_wait(&be->ln_cv, &be->ln_mu);
    }
out:
    pthread_mutex_unlock(&be->ln_mu);
}

/* ==== open, close ==== */

static void backend_free(struct kz_backend *be)
{
    struct conn *c;
    size_t n = 0;
    size_t i;

    if (be->ln_started) {
        atomic_store(&be->ln_stop, true);
        if (write(be->ln_pipe[1], "x", 1) < 0) {
            /* the thread also polls ln_stop after its connect waits */
        }
        pthread_join(be->ln, NULL);
        close(be->ln_pipe[0]);
        close(be->ln_pipe[1]);
    }
    while ((c = be->idle)) {
        be->idle = c->next;
        conn_close(c);
        n++;
    }
    KZ_ASSERT(n == be->n_read); /* no read may still be running */
    conn_close(be->wr);
    conn_close(be->hb);
    for (i = 0; i < KZ_ARRAY_LEN(be->arr); i++)
        kz_buf_cleanup(&be->arr[i]);
    kz_free(be->items.p);
    kz_free(be->first.p);
    kz_free(be->uniq.p);
    kz_free(be->cursor.p);
    kz_free(be->seqkeys.p);
    pthread_cond_destroy(&be->ln_cv);
    pthread_mutex_destroy(&be->ln_mu);
    pthread_cond_destroy(&be->pool_cv);
    pthread_mutex_destroy(&be->pool_mu);
    kz_free(be->url);
    kz_free(be);
}

static enum kz_err pg_open(struct kz_backend **out, const char *url, char *err, size_t errlen)
{
    enum kz_err result;
    struct kz_backend *be = kz_calloc(1, sizeof(*be));
    size_t i;

    be->url = kz_strdup(url);
    be->wr_backoff = BACKOFF_MIN_MS;
    be->rd_backoff = BACKOFF_MIN_MS;
    be->hb_backoff = BACKOFF_MIN_MS;
    for (i = 0; i < KZ_ARRAY_LEN(be->arr); i++)
        kz_buf_init(&be->arr[i], ARRAY_MAX);
    pthread_mutex_init(&be->pool_mu, NULL);
    pthread_cond_init(&be->pool_cv, NULL);
    pthread_mutex_init(&be->ln_mu, NULL);
    pthread_cond_init(&be->ln_cv, NULL);
    atomic_init(&be->wr_pid, 0);
    atomic_init(&be->ln_stop, false);

    result = conn_open(be->url, &be->wr, err, errlen);
    if (result)
        goto out;
    result = migrate(be->wr, err, errlen);
    if (result)
        goto out;
    atomic_store(&be->wr_pid, PQbackendPID(be->wr->pg));
    *out = be;
    be = NULL;
out:
    if (be)
        backend_free(be);
    return result;
}

static void pg_close(struct kz_backend *be)
{
    if (be)
        backend_free(be);
}

/* ==== write ops (writer thread) ==== */

/* Each op_* is a backend op function (store_impl.h): the op is valid and cleaned, it runs
 * inside the op's savepoint on the write connection, and store.c rolls it back on failure. */

static enum kz_err op_meta_set(struct kz_backend *be, struct kz_op *op)
{
    struct params p = {0};

    p_text(&p, op->u.meta.key);
    p_text(&p, op->u.meta.value);
    return run_count(be->wr, S_META_SET, &p, "meta set", NULL);
}

static enum kz_err op_app_create(struct kz_backend *be, struct kz_op *op)
{
    const struct kz_app *a = &op->u.app;
    struct params p = {0};

    p_fixed(&p, a->id, sizeof(a->id));
    p_text(&p, a->name);
    p_text(&p, a->object_ids_json);
    p_fixed(&p, a->secret_hash, sizeof(a->secret_hash));
    p_fixed(&p, a->refresh_hash, sizeof(a->refresh_hash));
    p_int(&p, a->created_at);
    return run_count(be->wr, S_APP_INSERT, &p, "app insert", NULL);
}

/* Runs a statement whose only parameter is `id`. */
static enum kz_err run_by_id(struct conn *c, enum stmt_id sid, const char *id, const char *what,
                             int64_t *changed)
{
    struct params p = {0};

    p_text(&p, id);
    return run_count(c, sid, &p, what, changed);
}

static enum kz_err op_app_delete(struct kz_backend *be, struct kz_op *op, bool *bump)
{
    struct conn *c = be->wr;
    const char *id = op->u.id;
    int64_t changed = 0;
    enum kz_err result;

    result = run_by_id(c, S_APP_DELETE, id, "app delete", &changed);
    if (result)
        return result;
    if (!changed)
        return KZ_ERR_NOTFOUND;
    result = run_by_id(c, S_APP_DEL_DELIVERIES, id, "app delete deliveries", NULL);
    if (result)
        return result;
    result = run_by_id(c, S_APP_DEL_WEBHOOKS, id, "app delete webhooks", &changed);
    if (result)
        return result;
    if (changed)
        *bump = true;
    return run_by_id(c, S_APP_DEL_TOKENS, id, "app delete tokens", NULL);
}

/* Locks the application's row (S_APP_LOCK); `*exists` tells whether there is one. */
static enum kz_err app_lock(struct conn *c, const char *app_id, bool *exists)
{
    struct params p = {0};
    int64_t n = 0;
    enum kz_err result;

    p_text(&p, app_id);
    result = run_count(c, S_APP_LOCK, &p, "app lock", &n);
    *exists = n > 0;
    return result;
}

static enum kz_err op_token_add(struct kz_backend *be, struct kz_op *op, int keep_live)
{
    struct params p = {0};
    enum kz_err result;
    bool exists;

    /* (a token of an unknown application is stored as before: nothing to lock) */
    result = app_lock(be->wr, op->u.token.app_id, &exists);
    if (result)
        return result;
    p_text(&p, op->u.token.hash);
    p_text(&p, op->u.token.app_id);
    p_int(&p, op->u.token.expires_at);
    p_int(&p, kz_now_ms());
    p_int(&p, keep_live > 0 ? keep_live - 1 : 0);
    return run_count(be->wr, S_TOKEN_ADD, &p, "token add", NULL);
}

static enum kz_err op_webhook_insert(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    const struct kz_webhook *w = &op->u.webhook;
    struct params p = {0};
    enum kz_err result;
    bool exists;
    PGresult *r;

    result = app_lock(c, w->app_id, &exists);
    if (result)
        return result;
    if (!exists)
        return KZ_ERR_AUTH;
    if (op->u.max_per_app > 0) {
        p_fixed(&p, w->app_id, sizeof(w->app_id));
        r = run(c, S_WH_COUNT_APP, &p, "webhook count", &result);
        if (!r)
            return result;
        if (PQntuples(r) == 1 && col_int(r, 0, 0) >= op->u.max_per_app)
            result = KZ_ERR_QUOTA;
        PQclear(r);
        if (result)
            return result;
        memset(&p, 0, sizeof(p));
    }
    p_fixed(&p, w->id, sizeof(w->id));
    p_fixed(&p, w->app_id, sizeof(w->app_id));
    p_int(&p, w->object_type);
    p_text(&p, w->object_id);
    p_int(&p, w->event_mask);
    p_text(&p, w->callback_url);
    p_text(&p, w->callback_token);
    p_text(&p, w->callback_context);
    p_text(&p, w->signing_secret);
    p_int(&p, w->ts_ms);
    p_int(&p, w->validity_ms);
    p_int(&p, w->active);
    p_text(&p, w->headers_json);
    p_text(&p, w->filter_json);
    p_int(&p, w->rate_limit);
    p_int(&p, w->ordered);
    return run_count(c, S_WH_INSERT, &p, "webhook insert", NULL);
}

/* Replaces the mutable columns. id, app_id and ts_ms never change; signing_secret changes only
 * when the op carries one (NULL keeps the stored secret). */
static enum kz_err op_webhook_update(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    const struct kz_webhook *w = &op->u.webhook;
    struct params p = {0};
    struct params snap = {0};
    int64_t changed = 0;
    enum kz_err result;

    p_fixed(&snap, w->id, sizeof(w->id));
    p_int(&snap, w->object_type);
    p_text(&snap, w->object_id);
    p_text(&snap, w->callback_context);
    result = run_count(c, S_DLV_SNAP, &snap, "webhook update snapshot", NULL);
    if (result)
        return result;
    p_int(&p, w->object_type);
    p_text(&p, w->object_id);
    p_int(&p, w->event_mask);
    p_text(&p, w->callback_url);
    p_text(&p, w->callback_token);
    p_text(&p, w->callback_context);
    p_text(&p, w->signing_secret);
    p_int(&p, w->validity_ms);
    p_int(&p, w->active);
    p_fixed(&p, w->id, sizeof(w->id));
    p_fixed(&p, w->app_id, sizeof(w->app_id));
    p_text(&p, w->headers_json);
    p_text(&p, w->filter_json);
    p_int(&p, w->rate_limit);
    p_int(&p, w->ordered);
    result = run_count(c, S_WH_UPDATE, &p, "webhook update", &changed);
    if (!result && !changed)
        result = KZ_ERR_NOTFOUND;
    return result;
}

static enum kz_err op_webhook_rotate(struct kz_backend *be, struct kz_op *op)
{
    struct params p = {0};
    int64_t changed = 0;
    enum kz_err result;

    p_text(&p, op->u.rotate.id);
    p_text(&p, op->u.rotate.app_id ? op->u.rotate.app_id : "");
    p_text(&p, op->u.rotate.secret);
    p_int(&p, op->u.rotate.now);
    p_int(&p, op->u.rotate.expires);
    result = run_count(be->wr, S_WH_ROTATE, &p, "webhook rotate", &changed);
    if (!result && !changed)
        result = KZ_ERR_NOTFOUND;
    return result;
}

static enum kz_err op_webhook_delete(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct params p = {0};
    int64_t changed = 0;
    enum kz_err result;

    p_text(&p, op->u.del.id);
    p_text(&p, op->u.del.app_id ? op->u.del.app_id : "");
    result = run_count(c, S_WH_DELETE, &p, "webhook delete", &changed);
    if (result)
        return result;
    if (!changed)
        return KZ_ERR_NOTFOUND;
    return run_by_id(c, S_WH_DEL_DELIVERIES, op->u.del.id, "webhook delete deliveries", NULL);
}

static enum kz_err op_webhook_active(struct kz_backend *be, struct kz_op *op)
{
    struct params p = {0};
    int64_t changed = 0;
    enum kz_err result;

    p_text(&p, op->u.active.id);
    p_int(&p, op->u.active.flag);
    result = run_count(be->wr, S_WH_ACTIVE, &p, "webhook active", &changed);
    if (!result && !changed)
        result = KZ_ERR_NOTFOUND;
    return result;
}

/* Publishes the PUBLISH ops `pops[0..np)` as one set (publish_sets): one statement inserts every
 * new event and its deliveries, one more looks up the events that already existed. An event_id
 * seen earlier in the set is a duplicate of that first item, as it would be on SQLite. Sets every
 * item's result. */
/* Fills the delivery_ids of the leased targets from the publish statement's rows (event seq,
 * NULL, delivery id, webhook id) once every new event of its[uniq[0..nu)] has its seq. Nonzero
 * when a row names an event or a target that was not leased. A target is looked for from the
 * one after the last found (rows come back in insertion order, which is the targets'). */
static int leased_ids(struct kz_backend *be, struct kz_publish_item **its, const size_t *uniq,
                      size_t nu, const PGresult *r)
{
    struct kmap seqs = {0};
    size_t *cursor = vec_reserve(&be->cursor, nu, sizeof(*cursor));
    char(*keys)[24] = vec_reserve(&be->seqkeys, nu, sizeof(*keys));
    int row, bad = 0;
    size_t i;

    kmap_init(&seqs, nu);
    for (i = 0; i < nu; i++) {
        struct kz_publish_item *it = its[uniq[i]];
        size_t s;

        cursor[i] = 0;
        if (it->delivery_ids)
            memset(it->delivery_ids, 0, it->n_targets * sizeof(*it->delivery_ids));
        if (!it->seq)
            continue;
        snprintf(keys[i], sizeof(keys[i]), "%lld", (long long)it->seq);
        s = kmap_slot_s(&seqs, keys[i], strlen(keys[i]));
        seqs.used[s] = true;
        seqs.skey[s] = keys[i];
        seqs.val[s] = i;
    }
    for (row = 0; row < PQntuples(r) && !bad; row++) {
        const char *seq = PQgetvalue(r, row, 0), *wh = PQgetvalue(r, row, 3);
        struct kz_publish_item *it;
        size_t s, k, t, u;

        if (!PQgetisnull(r, row, 1))
            continue;
        s = kmap_slot_s(&seqs, seq, (size_t)PQgetlength(r, row, 0));
        if (!seqs.used[s]) {
            bad = 1;
            break;
        }
        u = seqs.val[s];
        it = its[uniq[u]];
        for (k = 0, t = cursor[u]; k < it->n_targets; k++, t = (t + 1) % it->n_targets) {
            if (it->target_leased && it->target_leased[t] && !strcmp(it->webhook_ids[t], wh) &&
                (!it->delivery_ids || !it->delivery_ids[t]))
                break;
        }
        if (k == it->n_targets) {
            bad = 1;
            break;
        }
        if (it->delivery_ids)
            it->delivery_ids[t] = col_int(r, row, 2);
        cursor[u] = (t + 1) % it->n_targets;
    }
    kmap_cleanup(&seqs);
    return bad;
}

static enum kz_err op_publish(struct kz_backend *be, struct kz_op **pops, size_t np)
{
    struct conn *c = be->wr;
    int64_t now = kz_now_ms();
    int64_t lease_until = 0; /* the shortest lease of the set's ops (one per statement) */
    bool leased = false;     /* some delivery is leased: the statement that returns their ids */
    struct kz_publish_item **its;
    size_t *first;
    size_t *uniq;
    size_t m = 0;
    size_t nu = 0;
    size_t missing = 0;
    struct kmap map = {0};
    struct params p = {0};
    enum kz_err result = KZ_OK;
    PGresult *r = NULL;
    size_t i;
    size_t k;
    int row;

    for (i = 0; i < np; i++) {
        int64_t l = pops[i]->u.publish.lease_until;

        m += pops[i]->u.publish.n;
        if (l > 0 && (!lease_until || l < lease_until))
            lease_until = l;
    }
    if (!m)
        return KZ_OK;
    its = vec_reserve(&be->items, m, sizeof(*its));
    first = vec_reserve(&be->first, m, sizeof(*first));
    uniq = vec_reserve(&be->uniq, m, sizeof(*uniq));
    m = 0;
    for (i = 0; i < np; i++) {
        for (k = 0; k < pops[i]->u.publish.n; k++)
            its[m++] = &pops[i]->u.publish.items[k];
    }

    /* first occurrence of each event_id, in item order */
    kmap_init(&map, m);
    for (i = 0; i < m; i++) {
        const char *id = its[i]->ev.event_id;
        size_t s = kmap_slot_s(&map, id, strlen(id));

        its[i]->seq = 0;
        its[i]->deliveries = 0;
        its[i]->duplicate = false;
        if (map.used[s]) {
            first[i] = map.val[s];
            continue;
        }
        map.used[s] = true;
        map.skey[s] = id;
        map.val[s] = i;
        first[i] = i;
        uniq[nu++] = i;
    }

    for (k = 0; k < 19; k++)
        arr_begin(&be->arr[k]);
    for (i = 0; i < nu; i++) {
        const struct kz_publish_item *it = its[uniq[i]];
        const struct kz_event *e = &it->ev;
        int64_t created = e->created_at ? e->created_at : now;

        arr_str(&be->arr[0], e->event_id);
        arr_int(&be->arr[1], e->event_type);
        arr_str(&be->arr[2], e->group_id);
        arr_str(&be->arr[3], e->action_id);
        arr_str(&be->arr[4], e->action_package_id);
        arr_str(&be->arr[5], e->from_user);
        arr_str(&be->arr[6], e->from_user_id);
        arr_str(&be->arr[7], e->from_user_name);
        arr_str(&be->arr[8], e->from_user_pic);
        arr_str(&be->arr[9], e->data_json);
        arr_int(&be->arr[10], (int64_t)it->n_targets);
        arr_int(&be->arr[11], created);
        arr_int(&be->arr[16], e->is_bot);
        arr_str(&be->arr[17], e->source_group_id);
        arr_str(&be->arr[18], e->traceparent);
        for (k = 0; k < it->n_targets; k++) {
            arr_str(&be->arr[12], e->event_id);
            arr_str(&be->arr[13], it->webhook_ids[k]);
            leased |= it->target_leased && it->target_leased[k];
            arr_int(&be->arr[14], it->target_leased && it->target_leased[k] ? KZ_D_INFLIGHT
                                  : it->target_active[k]                    ? KZ_D_PENDING
                                                                            : KZ_D_SKIPPED);
            arr_int(&be->arr[15], created);
        }
    }
    result = p_arrays(&p, be->arr, 19);
    if (result)
        goto out;
    if (leased) {
        p_int(&p, lease_until);
        p_text(&p, be->has_node ? be->node_id : NULL);
    }
    r = run(c, leased ? S_PUBLISH_LEASED : S_PUBLISH, &p, "publish", &result);
    if (!r)
        goto out;
    for (row = 0; row < PQntuples(r); row++) {
        const char *id = PQgetvalue(r, row, 1);
        size_t s;
        struct kz_publish_item *it;

        if (PQgetisnull(r, row, 1))
            continue; /* a leased delivery: below, once every event has its seq */
        s = kmap_slot_s(&map, id, (size_t)PQgetlength(r, row, 1));
        if (!map.used[s]) {
            result = KZ_ERR_DB; /* an event_id we did not send */
            goto out;
        }
        it = its[map.val[s]];
        it->seq = col_int(r, row, 0);
        it->deliveries = (int)it->n_targets;
    }
    if (leased && leased_ids(be, its, uniq, nu, r)) {
        result = KZ_ERR_DB; /* a leased delivery we did not ask for */
        goto out;
    }
    PQclear(r);
    r = NULL;

    /* the events that existed before this set: report the originals */
    arr_begin(&be->arr[0]);
    for (i = 0; i < nu; i++) {
        if (!its[uniq[i]]->seq) {
            arr_str(&be->arr[0], its[uniq[i]]->ev.event_id);
            missing++;
        }
    }
    if (missing) {
        memset(&p, 0, sizeof(p));
        result = p_arrays(&p, be->arr, 1);
        if (result)
            goto out;
        r = run(c, S_EV_LOOKUP, &p, "event lookup", &result);
        if (!r)
            goto out;
        for (row = 0; row < PQntuples(r); row++) {
            const char *id = PQgetvalue(r, row, 0);
            size_t s = kmap_slot_s(&map, id, (size_t)PQgetlength(r, row, 0));
            struct kz_publish_item *it;

            if (!map.used[s])
                continue;
            it = its[map.val[s]];
            if (it->seq)
                continue;
            it->seq = col_int(r, row, 1);
            it->deliveries = (int)col_int(r, row, 2);
            it->duplicate = true;
            missing--;
        }
        if (missing) {
            kz_log("error", "store: conflicting event not found", "\"events\":%zu", missing);
            result = KZ_ERR_DB; /* the insert conflicted, so the row must exist */
            goto out;
        }
    }
    for (i = 0; i < m; i++) {
        if (first[i] == i)
            continue;
        its[i]->seq = its[first[i]]->seq;
        its[i]->deliveries = its[first[i]]->deliveries;
        its[i]->duplicate = true;
        if (its[i]->delivery_ids)
            memset(its[i]->delivery_ids, 0, its[i]->n_targets * sizeof(*its[i]->delivery_ids));
    }
out:
    PQclear(r);
    kmap_cleanup(&map);
    return result;
}

/* Appends the rows of a claim statement's result (S_GATE_CLAIM) to *rows. False when a row has an
 * id that does not fit (a row we did not write). */
static bool gate_rows(PGresult *r, struct kz_claimed **rows, size_t *n, size_t *cap)
{
    int i, m = PQntuples(r);
    bool ok = true;

    for (i = 0; i < m; i++) {
        struct kz_claimed *cl;

        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *rows = kz_realloc(*rows, *cap * sizeof(**rows));
        }
        cl = &(*rows)[(*n)++];
        memset(cl, 0, sizeof(*cl));
        cl->delivery_id = col_int(r, i, 0);
        cl->attempts = (int)col_int(r, i, 1);
        cl->created_at = col_int(r, i, 2);
        if (!row_webhook(r, i, 7, &cl->wh))
            ok = false;
        row_event(r, i, 7 + WH_NCOLS, &cl->ev);
        if (col_int(r, i, 3)) {
            cl->wh.object_type = (enum kz_objtype)col_int(r, i, 4);
            kz_free(cl->wh.object_id);
            cl->wh.object_id = col_dup(r, i, 5);
            kz_free(cl->wh.callback_context);
            cl->wh.callback_context = col_dup(r, i, 6);
        }
    }
    return ok;
}

/* Lists the gated webhooks with due rows (creating missing gate rows), then locks their gates and
 * reads them into *gates (*ng entries; kz_malloc'd). */
static enum kz_err gate_lock(struct kz_backend *be, const struct kz_op *op, struct kz_gate **gates,
                             size_t *ng)
{
    enum kz_err result = KZ_OK;
    struct params p = {0};
    PGresult *r;
    int i, m, missing = 0;
    int64_t now = op->u.claim.now;
    size_t k;

    arr_begin(&be->arr[0]);
    for (k = 0; k < op->u.claim.n_exclude; k++)
        arr_str(&be->arr[0], op->u.claim.exclude[k]);
    p_int(&p, now);
    result = p_arrays(&p, be->arr, 1);
    if (result)
        return result;
    p_int(&p, KZ_GATES_MAX);
    r = run(be->wr, S_GATE_LIST, &p, "claim gates", &result);
    if (!r)
        return result;
    m = PQntuples(r);
    if (!m) {
        PQclear(r);
        return KZ_OK; /* the common case: one statement */
    }
    arr_begin(&be->arr[0]);
    arr_begin(&be->arr[1]);
    for (i = 0; i < m; i++) {
        arr_str(&be->arr[0], PQgetvalue(r, i, 0));
        if (PQgetvalue(r, i, 1)[0] == 't') {
            arr_str(&be->arr[1], PQgetvalue(r, i, 0));
            missing++;
        }
    }
    PQclear(r);
    if (missing) {
        memset(&p, 0, sizeof(p));
        result = p_arrays(&p, be->arr + 1, 1);
        if (!result)
            result = run_count(be->wr, S_GATE_ADD, &p, "claim gates add", NULL);
        if (result)
            return result;
    }
    memset(&p, 0, sizeof(p));
    result = p_arrays(&p, be->arr, 1);
    if (result)
        return result;
    r = run(be->wr, S_GATE_LOCK, &p, "claim gates lock", &result);
    if (!r)
        return result;
    m = PQntuples(r);
    *gates = kz_calloc((size_t)(m ? m : 1), sizeof(**gates));
    for (i = 0; i < m; i++) {
        struct kz_gate *g = &(*gates)[*ng];

        if (!col_fixed(r, i, 0, g->webhook_id, sizeof(g->webhook_id))) {
            result = KZ_ERR_DB;
            break;
        }
        g->rate_limit = (int)col_int(r, i, 1);
        g->ordered = col_int(r, i, 2) != 0;
        g->deliverable = col_int(r, i, 3) != 0 && col_int(r, i, 4) > now;
        g->tokens = col_int(r, i, 5);
        g->refilled_at = col_int(r, i, 6);
        g->last_id = col_int(r, i, 7);
        g->now = col_int(r, i, 8);
        g->due_now = now;
        (*ng)++;
    }
    PQclear(r);
    return result;
}

/* The claim rules of the gated webhooks (store_impl.h, claim_gated): their gate rows locked
 * first, so two nodes never decide for one webhook at once. */
static enum kz_err op_claim_gated(struct kz_backend *be, struct kz_op *op, size_t limit,
                                  struct kz_claimed **rows, size_t *n, size_t *cap, char ***ids,
                                  size_t *n_ids)
{
    struct kz_gate *gates = NULL;
    size_t ng = 0, i;
    enum kz_err result;

    result = gate_lock(be, op, &gates, &ng);
    if (ng)
        *ids = kz_malloc(ng * sizeof(**ids));
    for (i = 0; i < ng && !result; i++) {
        struct kz_gate *g = &gates[i];
        size_t before = *n;
        struct params p = {0};
        PGresult *r;

        (*ids)[(*n_ids)++] = kz_strdup(g->webhook_id);
        if (g->ordered && g->deliverable) {
            p_text(&p, g->webhook_id);
            p_int(&p, g->last_id);
            r = run(be->wr, S_GATE_HEAD, &p, "claim gate head", &result);
            if (!r)
                break;
            if (PQntuples(r) == 1) {
                g->last_inflight = !PQgetisnull(r, 0, 0) && col_int(r, 0, 0) == KZ_D_INFLIGHT;
                g->head_found = !PQgetisnull(r, 0, 1);
                g->head_id = col_int(r, 0, 1);
                g->head_pending = col_int(r, 0, 2) == KZ_D_PENDING;
                g->head_due = col_int(r, 0, 3);
            }
            PQclear(r);
        }
        if (kz_gate_allow(g, limit - *n)) {
            memset(&p, 0, sizeof(p));
            p_int(&p, op->u.claim.now);
            p_int(&p, op->u.claim.lease_until);
            p_text(&p, g->webhook_id);
            p_int(&p, kz_store_clamp_size(g->allow));
            p_int(&p, g->head_only ? g->head_id : 0);
            p_text(&p, be->has_node ? be->node_id : NULL);
            r = run(be->wr, S_GATE_CLAIM, &p, "claim gated", &result);
            if (!r)
                break;
            if (!gate_rows(r, rows, n, cap)) {
                kz_log("error", "store: claimed row with an oversized id", "\"rows\":%zu", *n);
                result = KZ_ERR_DB;
            }
            PQclear(r);
            if (result)
                break;
        }
        if (g->head_only && *n > before)
            g->last_id = g->head_id;
        kz_gate_charge(g, *n - before, &op->u.claim.held, &op->u.claim.held_until);
        if (g->deliverable && (g->rate_limit > 0 || *n > before)) {
            memset(&p, 0, sizeof(p));
            p_text(&p, g->webhook_id);
            p_int(&p, g->tokens);
            p_int(&p, g->refilled_at);
            p_int(&p, g->last_id);
            result = run_count(be->wr, S_GATE_SAVE, &p, "claim gate save", NULL);
        }
    }
    kz_free(gates);
    return result;
}

/* Claims due rows with one statement (see S_CLAIM). */
static enum kz_err op_claim(struct kz_backend *be, struct kz_op *op)
{
    enum kz_err result = KZ_OK;
    struct kz_claimed *rows = NULL;
    struct params p = {0};
    PGresult *r;
    size_t i;
    int n;

    arr_begin(&be->arr[0]);
    for (i = 0; i < op->u.claim.n_exclude; i++)
        arr_str(&be->arr[0], op->u.claim.exclude[i]);
    p_int(&p, op->u.claim.now);
    p_int(&p, op->u.claim.lease_until);
    result = p_arrays(&p, be->arr, 1);
    if (result)
        return result;
    p_int(&p, kz_store_clamp_size(op->u.claim.limit));
    p_text(&p, be->has_node ? be->node_id : NULL);
    r = run(be->wr, S_CLAIM, &p, "claim", &result);
    if (!r)
        return result;
    n = PQntuples(r);
    if (n > 0) {
        rows = kz_calloc((size_t)n, sizeof(*rows));
        for (i = 0; i < (size_t)n; i++) {
            struct kz_claimed *cl = &rows[i];

            cl->delivery_id = col_int(r, (int)i, 0);
            cl->attempts = (int)col_int(r, (int)i, 1);
            cl->created_at = col_int(r, (int)i, 2);
            if (!row_webhook(r, (int)i, 7, &cl->wh))
                result = KZ_ERR_DB;
            row_event(r, (int)i, 7 + WH_NCOLS, &cl->ev);
            if (col_int(r, (int)i, 3)) {
                cl->wh.object_type = (enum kz_objtype)col_int(r, (int)i, 4);
                kz_free(cl->wh.object_id);
                cl->wh.object_id = col_dup(r, (int)i, 5);
                kz_free(cl->wh.callback_context);
                cl->wh.callback_context = col_dup(r, (int)i, 6);
            }
        }
    }
    PQclear(r);
    /* Hand the rows to the op first so that kz_claim_cleanup frees them on any failure. */
    op->u.claim.out = rows;
    op->u.claim.n_out = (size_t)n;
    if (result)
        kz_log("error", "store: claimed row with an oversized id", "\"rows\":%d", n);
    return result;
}

/* All attempts of the op in one statement: UPDATE … FROM unnest(…) on rows still INFLIGHT, and
 * the attempt rows of those in one INSERT … SELECT; then the successes in one UPDATE; then the
 * disable rule for the rows that turned DEAD, in one more. */
static enum kz_err op_complete(struct kz_backend *be, struct kz_op *op, const struct kz_success *ok,
                               size_t n_ok, bool *disabled, bool *bump)
{
    struct conn *c = be->wr;
    const struct kz_attempt *items = op->u.complete.items;
    size_t n = op->u.complete.n;
    struct params p = {0};
    enum kz_err result = KZ_OK;
    size_t dead = 0;
    PGresult *r = NULL;
    size_t i;
    int row;

    for (i = 0; i < 12; i++)
        arr_begin(&be->arr[i]);
    for (i = 0; i < n; i++) {
        const struct kz_attempt *a = &items[i];

        arr_int(&be->arr[0], a->delivery_id);
        arr_int(&be->arr[1], a->state);
        arr_int(&be->arr[2], a->attempts);
        arr_int(&be->arr[3], a->next_attempt_at);
        arr_int(&be->arr[4], a->status);
        arr_str(&be->arr[5], a->error);
        arr_strn(&be->arr[6], a->response, a->response_len);
        arr_int(&be->arr[7], a->at);
        arr_int(&be->arr[8], a->duration_ms);
    }
    /* The successes first (this node's rows of webhook_success, in webhook id order: ok[] is
     * sorted), then the deliveries. */
    if (n_ok) {
        for (i = 0; i < n_ok; i++) {
            arr_str(&be->arr[9], ok[i].webhook_id);
            arr_int(&be->arr[10], ok[i].at);
        }
        memset(&p, 0, sizeof(p));
        result = p_arrays(&p, &be->arr[9], 2);
        if (result)
            goto out;
        p_text(&p, be->has_node ? be->node_id : "");
        result = run_count(c, S_WH_SUCCESS, &p, "webhook success", NULL);
        if (result)
            goto out;
    }
    memset(&p, 0, sizeof(p));
    result = p_arrays(&p, be->arr, 7);
    if (result)
        goto out;
    p_int(&p, kz_now_ms());
    result = p_arrays(&p, &be->arr[7], 2);
    if (result)
        goto out;
    r = run(c, S_COMPLETE, &p, "complete", &result);
    if (!r)
        goto out;
    for (row = 0; row < PQntuples(r); row++) {
        int64_t ord = col_int(r, row, 0);
        const struct kz_attempt *a;

        if (ord < 1 || (size_t)ord > n) {
            result = KZ_ERR_DB;
            goto out;
        }
        a = &items[ord - 1];
        /* only rows that were still inflight come back: a replay or delete that came first
         * wins, and its attempt disables nothing */
        if (a->state != KZ_D_DEAD)
            continue;
        arr_int(&be->arr[11], a->delivery_id);
        dead++;
    }
    PQclear(r);
    r = NULL;
    if (dead) {
        memset(&p, 0, sizeof(p));
        result = p_arrays(&p, &be->arr[11], 1);
        if (result)
            goto out;
        r = run(c, S_WH_DISABLE, &p, "webhook disable", &result);
        if (!r)
            goto out;
        for (row = 0; row < PQntuples(r); row++) {
            int64_t id = col_int(r, row, 0);

            for (i = 0; i < n; i++) {
                if (items[i].delivery_id == id && items[i].state == KZ_D_DEAD)
                    disabled[i] = true;
            }
        }
        if (PQntuples(r))
            *bump = true;
    }
out:
    PQclear(r);
    return result;
}

static enum kz_err op_retry(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    struct params p = {0};
    enum kz_err result = KZ_OK;
    int64_t state, active, validity, changed = 0;
    PGresult *r;

    p_int(&p, op->u.retry.delivery_id);
    p_text(&p, op->u.retry.webhook_id);
    r = run(c, S_RETRY_CHECK, &p, "retry check", &result);
    if (!r)
        return result;
    if (!PQntuples(r)) {
        PQclear(r);
        return KZ_ERR_NOTFOUND;
    }
    state = col_int(r, 0, 0);
    active = col_int(r, 0, 1);
    validity = col_int(r, 0, 2);
    PQclear(r);
    if (!active || validity <= op->u.retry.now)
        return KZ_ERR_CONFLICT;
    if (state == KZ_D_INFLIGHT)
        return KZ_OK;
    p_int(&p, op->u.retry.now);
    result = run_count(c, S_RETRY, &p, "retry", &changed);
    op->u.retry.requeued = changed > 0;
    return result;
}

static enum kz_err op_replay(struct kz_backend *be, struct kz_op *op)
{
    struct params p = {0};

    p_text(&p, op->u.replay.webhook_id);
    p_int(&p, op->u.replay.since);
    p_int(&p, op->u.replay.now);
    return run_count(be->wr, S_REPLAY, &p, "replay", &op->u.replay.requeued);
}

static enum kz_err op_release(struct kz_backend *be, struct kz_op *op, int64_t dead_ms)
{
    struct params p = {0};

    p_int(&p, op->u.release.now);
    if (op->u.release.all)
        return run_count(be->wr, S_LEASE_ALL, &p, "release", &op->u.release.released);
    if (op->u.release.own) {
        if (!be->has_node) {
            op->u.release.released = 0;
            return KZ_OK;
        }
        p_text(&p, be->node_id);
        return run_count(be->wr, S_RELEASE_OWN, &p, "release own", &op->u.release.released);
    }
    p_int(&p, dead_ms);
    return run_count(be->wr, S_LEASE_EXPIRED, &p, "release", &op->u.release.released);
}

/* Registers this node, then takes back what it had claimed when it last ran. */
static enum kz_err op_node_start(struct kz_backend *be, struct kz_op *op)
{
    struct params p = {0};
    enum kz_err result;

    p_text(&p, op->u.node.id);
    p_text(&p, op->u.node.incarnation);
    result = run_count(be->wr, S_NODE_UPSERT, &p, "node start", NULL);
    if (result)
        return result;
    /* Claims from now on carry this id; the heartbeat thread starts after this commits (store.c
     * fails the process when it does not). */
    snprintf(be->node_id, sizeof(be->node_id), "%s", op->u.node.id);
    snprintf(be->incarnation, sizeof(be->incarnation), "%s", op->u.node.incarnation);
    be->has_node = true;
    memset(&p, 0, sizeof(p));
    p_int(&p, op->u.node.now);
    if (op->u.node.all)
        return run_count(be->wr, S_LEASE_ALL, &p, "node resume", &op->u.node.resumed);
    p_text(&p, op->u.node.id);
    return run_count(be->wr, S_RELEASE_OWN, &p, "node resume", &op->u.node.resumed);
}

/* Releases the claims of dead nodes (see S_TAKEOVER), one entry per node. */
static enum kz_err op_takeover(struct kz_backend *be, struct kz_op *op, int64_t dead_ms)
{
    enum kz_err result = KZ_OK;
    struct params p = {0};
    PGresult *r;
    int i, n;

    p_int(&p, op->u.takeover.now);
    p_text(&p, be->has_node ? be->node_id : NULL);
    p_int(&p, dead_ms);
    p_int(&p, KZ_TAKEOVER_NODES_MAX);
    r = run(be->wr, S_TAKEOVER, &p, "takeover", &result);
    if (!r)
        return result;
    n = PQntuples(r);
    for (i = 0; i < n; i++) {
        struct kz_takeover *t;

        op->u.takeover.released += col_int(r, i, 1);
        if (!op->u.takeover.nodes || op->u.takeover.n_nodes >= KZ_TAKEOVER_NODES_MAX)
            continue;
        t = &op->u.takeover.nodes[op->u.takeover.n_nodes++];
        snprintf(t->node_id, sizeof(t->node_id), "%s", PQgetvalue(r, i, 0));
        t->deliveries = col_int(r, i, 1);
    }
    PQclear(r);
    return KZ_OK;
}

/* The heartbeat thread's own connection, reconnected with the same backoff as the others. */
static enum kz_err hb_conn(struct kz_backend *be)
{
    char err[300];
    int64_t now;

    if (be->hb && !conn_lost(be->hb))
        return KZ_OK;
    conn_close(be->hb);
    be->hb = NULL;
    now = kz_mono_ms();
    if (now < be->hb_retry_at)
        return KZ_ERR_DB;
    if (conn_open(be->url, &be->hb, err, sizeof(err))) {
        be->hb_retry_at = now + be->hb_backoff;
        be->hb_backoff = next_backoff(be->hb_backoff);
        return KZ_ERR_DB;
    }
    be->hb_retry_at = 0;
    be->hb_backoff = BACKOFF_MIN_MS;
    return KZ_OK;
}

static enum kz_err pg_heartbeat(struct kz_backend *be, bool stopping, bool *ours)
{
    struct params p = {0};
    int64_t changed = 0;
    enum kz_err result;

    *ours = true;
    if (!be->has_node)
        return KZ_OK;
    result = hb_conn(be);
    if (result)
        return result;
    p_text(&p, be->node_id);
    p_text(&p, be->incarnation);
    result = run_count(be->hb, stopping ? S_NODE_STOP : S_HEARTBEAT, &p, "heartbeat", &changed);
    if (!result && !changed)
        *ours = false;
    return result;
}

/* Retention with SQLite's bounds and order (store_sqlite.c op_prune), set-wise:
 * 1. delete up to `limit` succeeded deliveries last touched before `before`, then the events
 *    they leave without deliveries;
 * 2. scan up to `limit` events from the cursor (stopping at the first inside the window) and
 *    delete the orphans among them, in seq order, until `limit` events were deleted in all. */
static enum kz_err op_prune(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    enum kz_err result = KZ_OK;
    int64_t before = op->u.prune.before;
    size_t limit = op->u.prune.limit;
    struct params p = {0};
    PGresult *r = NULL;
    int64_t dropped = 0;
    int64_t budget;
    int64_t last = 0;
    int64_t max_deleted = 0;
    bool wrap = false;
    int n;
    int row;

    p_int(&p, before);
    p_int(&p, (int64_t)limit);
    r = run(c, S_PRUNE_DLV, &p, "prune deliveries", &result);
    if (!r)
        goto out;
    n = PQntuples(r);
    op->u.prune.pruned = n;
    if (n) {
        arr_begin(&be->arr[0]);
        for (row = 0; row < n; row++)
            arr_int(&be->arr[0], col_int(r, row, 0));
        memset(&p, 0, sizeof(p));
        result = p_arrays(&p, be->arr, 1);
        if (result)
            goto out;
        p_int(&p, before);
        result = run_count(c, S_PRUNE_EV_DROP, &p, "prune events", &dropped);
        if (result)
            goto out;
    }
    PQclear(r);
    r = NULL;

    memset(&p, 0, sizeof(p));
    p_int(&p, be->prune_cursor);
    p_int(&p, (int64_t)limit);
    r = run(c, S_PRUNE_EV_SCAN, &p, "prune event scan", &result);
    if (!r)
        goto out;
    n = PQntuples(r);
    arr_begin(&be->arr[0]);
    for (row = 0; row < n; row++) {
        if (col_int(r, row, 1) >= before) {
            wrap = true;
            break;
        }
        last = col_int(r, row, 0);
        arr_int(&be->arr[0], last);
    }
    if (row == n && (size_t)n < limit)
        wrap = true;
    PQclear(r);
    r = NULL;
    budget = (int64_t)limit - dropped;
    if (row > 0 && budget > 0) {
        memset(&p, 0, sizeof(p));
        result = p_arrays(&p, be->arr, 1);
        if (result)
            goto out;
        p_int(&p, before);
        p_int(&p, budget);
        r = run(c, S_PRUNE_EV_SWEEP, &p, "prune event sweep", &result);
        if (!r)
            goto out;
        for (n = 0; n < PQntuples(r); n++) {
            int64_t s = col_int(r, n, 0);

            if (s > max_deleted)
                max_deleted = s;
        }
        /* On SQLite the sweep stops at the candidate that used up the budget. */
        if ((int64_t)PQntuples(r) >= budget)
            last = max_deleted;
    } else {
        last = 0; /* nothing processed */
    }
    if (wrap)
        be->prune_cursor = 0;
    else if (last)
        be->prune_cursor = last;
out:
    PQclear(r);
    return result;
}

/* ==== batch primitives (writer thread; store_impl.h) ==== */

/* Opens the batch's transaction with a savepoint ready for the first op, and learns its
 * transaction id (needed to resolve a COMMIT whose connection dies), in one round trip. The id
 * is assigned up front; a batch that writes nothing then costs a commit record, which only
 * happens to claims that found nothing. A stale connection (the server restarted since the last
 * batch) is replaced and the batch begun again: nothing had run. */
static enum kz_err op_stats_add(struct kz_backend *be, struct kz_op *op)
{
    struct conn *c = be->wr;
    char hist[KZ_STATS_HIST_TEXT];
    enum kz_err result = KZ_OK;
    size_t i;

    for (i = 0; i < op->u.stats.n_minutes && !result; i++) {
        const struct kz_stats_minute *m = &op->u.stats.minutes[i];
        struct params p = {0};

        kz_stats_hist_format(m->hist, hist);
        p_int(&p, m->minute);
        p_text(&p, op->u.stats.node_id);
        p_int(&p, m->published);
        p_int(&p, m->succeeded);
        p_int(&p, m->failed);
        p_int(&p, m->dead);
        p_text(&p, hist);
        result = run_count(c, S_STATS_MINUTE_SET, &p, "stats minute", NULL);
    }
    for (i = 0; i < op->u.stats.n_webhooks && !result; i++) {
        const struct kz_stats_webhook *w = &op->u.stats.webhooks[i];
        struct params p = {0}, q = {0};

        p_fixed(&p, w->webhook_id, sizeof(w->webhook_id));
        p_int(&p, w->hour);
        p_text(&p, op->u.stats.node_id);
        p_int(&p, w->succeeded);
        p_int(&p, w->failed);
        p_int(&p, w->dead);
        result = run_count(c, S_STATS_WH_SET, &p, "stats webhook", NULL);
        if (result)
            break;
        p_fixed(&q, w->webhook_id, sizeof(w->webhook_id));
        p_int(&q, w->last_ok_at);
        p_int(&q, w->last_fail_at);
        p_int(&q, w->fail_since);
        p_text(&q, w->last_error);
        result = run_count(c, S_STATS_STATE_MERGE, &q, "stats state", NULL);
    }
    if (!result && op->u.stats.prune_before > 0) {
        struct params p = {0};

        p_int(&p, op->u.stats.prune_before);
        result = run_count(c, S_STATS_PRUNE_MINUTES, &p, "stats prune", NULL);
        if (!result)
            result = run_count(c, S_STATS_PRUNE_WH, &p, "stats prune", NULL);
        if (!result)
            result = run_count(c, S_STATS_PRUNE_STATE, NULL, "stats prune", NULL);
    }
    return result;
}

static enum kz_err pg_begin(struct kz_backend *be, bool lazy)
{
    const char *sql = lazy ? "BEGIN; SET LOCAL synchronous_commit TO off; SAVEPOINT op;"
                             " SELECT txid_current()"
                           : "BEGIN; SAVEPOINT op; SELECT txid_current()";
    enum kz_err result;
    PGresult *rows = NULL;
    int attempt;

    be->sp_open = false;
    be->sp_fresh = false;
    for (attempt = 0;; attempt++) {
        result = writer_conn(be);
        if (result)
            return result;
        result = simple(be->wr, sql, "begin", &rows);
        if (!result && (!rows || PQntuples(rows) != 1))
            result = KZ_ERR_DB;
        if (!result)
            be->xid = col_int(rows, 0, 0);
        PQclear(rows);
        rows = NULL;
        if (!result || attempt || !conn_lost(be->wr))
            break;
    }
    be->sp_open = !result;
    be->sp_fresh = !result;
    return result;
}

/* Opens the savepoint "op" for the next op. The previous op's savepoint is released in the same
 * round trip; the one opened with BEGIN is used as is. */
static enum kz_err pg_savepoint(struct kz_backend *be)
{
    enum kz_err result;

    if (be->sp_fresh) {
        be->sp_fresh = false;
        return KZ_OK;
    }
    result = simple(be->wr, be->sp_open ? "RELEASE op; SAVEPOINT op" : "SAVEPOINT op", "savepoint",
                    NULL);
    if (!result)
        be->sp_open = true;
    return result;
}

static enum kz_err pg_rollback_to(struct kz_backend *be)
{
    if (conn_lost(be->wr))
        return KZ_ERR_DB;
    return simple(be->wr, "ROLLBACK TO op", "rollback to savepoint", NULL);
}

static bool pg_lost(struct kz_backend *be)
{
    return conn_lost(be->wr);
}

/* A wide op and another node's COMPLETE batch lock the same rows in different orders. Left to
 * PostgreSQL, the cycle is found only after deadlock_timeout (1 s) and, as the wide op retries at
 * once, found again and again. So the wide op waits at most 100 ms for any lock, and store.c gives
 * its rows back (rollback to the savepoint, which also undoes this setting) when it times out,
 * which lets the other side finish, and tries again. */
static enum kz_err pg_lock_wait(struct kz_backend *be, bool bounded)
{
    return simple(be->wr,
                  bounded ? "SET LOCAL lock_timeout = '100ms'" : "SET LOCAL lock_timeout = DEFAULT",
                  "lock timeout", NULL);
}

/* Ends the batch in one round trip: `sql` (statements ending with COMMIT). *version gets the
 * value of the one row-returning statement. Fails unless the server answered COMMIT. */
static enum kz_err batch_end(struct kz_backend *be, const char *sql, int64_t *version)
{
    struct conn *c = be->wr;
    enum kz_err result = KZ_OK;
    bool committed = false;
    PGresult *r;

    if (!PQsendQuery(c->pg, sql))
        return fail(c, NULL, "commit");
    while ((r = PQgetResult(c->pg))) {
        ExecStatusType st = PQresultStatus(r);

        if (st == PGRES_TUPLES_OK && PQntuples(r) == 1) {
            *version = col_int(r, 0, 0);
        } else if (st == PGRES_COMMAND_OK) {
            committed = !strcmp(PQcmdStatus(r), "COMMIT");
        } else if (st != PGRES_TUPLES_OK && !result) {
            result = fail(c, r, "commit");
        }
        PQclear(r);
    }
    if (!result && conn_lost(c))
        result = fail(c, NULL, "commit");
    if (!result && !committed) {
        kz_log("error", "store: postgresql did not commit the batch", NULL);
        result = KZ_ERR_DB;
    }
    return result;
}

/* After COMMIT's connection died: was transaction `xid` committed? Asks on a new connection,
 * a few times (the old session may still be finishing). KZ_OK only for "committed". */
static enum kz_err resolve_commit(struct kz_backend *be, int64_t xid)
{
    struct params p = {0};
    enum kz_err result = KZ_ERR_DB;
    int i;

    p_int(&p, xid);
    for (i = 0; i < COMMIT_PROBES; i++) {
        PGresult *r;

        if (i)
            usleep(200 * 1000);
        be->wr_retry_at = 0;
        if (writer_conn(be))
            continue;
        r = run(be->wr, S_TXID_STATUS, &p, "txid status", &result);
        if (!r)
            continue;
        if (!strcmp(PQgetvalue(r, 0, 0), "committed")) {
            PQclear(r);
            return KZ_OK;
        }
        if (!strcmp(PQgetvalue(r, 0, 0), "aborted") || PQgetisnull(r, 0, 0)) {
            PQclear(r);
            return KZ_ERR_DB;
        }
        PQclear(r); /* "in progress": ask again */
    }
    kz_log("error", "store: commit outcome unknown", "\"xid\":%lld", (long long)xid);
    return KZ_ERR_DB;
}

/* Ends the batch in one round trip: release the last savepoint, bump webhooks_version if asked,
 * queue the NOTIFYs (delivered on commit only), read the version, COMMIT (the one durable flush).
 * A connection lost in COMMIT is resolved by xid. */
static enum kz_err pg_commit(struct kz_backend *be, bool bump, bool due, int64_t *version)
{
    enum kz_err result;
    int64_t v = -1; /* (never negative once read) */
    char tail[512];

    snprintf(tail, sizeof(tail),
             "%s%s%s%s"
             "SELECT value::bigint FROM meta WHERE key = 'webhooks_version'; COMMIT",
             be->sp_open ? "RELEASE op; " : "",
             bump ? "UPDATE meta SET value = (value::bigint + 1)::text"
                    " WHERE key = 'webhooks_version'; "
                  : "",
             bump ? "SELECT pg_notify('" CHANNEL "', 'webhooks'); " : "",
             due ? "SELECT pg_notify('" CHANNEL "', 'due'); " : "");
    be->sp_open = false;
    be->sp_fresh = false;
    result = batch_end(be, tail, &v);
    if (result && conn_lost(be->wr))
        result = resolve_commit(be, be->xid);
    if (result)
        return result;
    /* (a commit resolved by xid did not read the version: the next batch will) */
    if (v >= 0)
        *version = v;
    return KZ_OK;
}

static void pg_rollback(struct kz_backend *be)
{
    if (be->wr && !conn_lost(be->wr) && PQtransactionStatus(be->wr->pg) != PQTRANS_IDLE)
        (void)simple(be->wr, "ROLLBACK", "rollback", NULL);
    be->sp_open = false;
    be->sp_fresh = false;
}

/* ==== reads (any thread) ==== */

static enum kz_err pg_ping(struct kz_backend *be)
{
    struct conn *c;
    PGresult *r;
    enum kz_err result = read_run(be, S_PING, NULL, "ping", &c, &r);

    if (result)
        return result;
    PQclear(r);
    release(be, c);
    return KZ_OK;
}

static enum kz_err pg_meta_get(struct kz_backend *be, const char *key, struct kz_buf *out)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;

    kz_buf_reset(out);
    p_text(&p, key);
    result = read_run(be, S_META_GET, &p, "meta get", &c, &r);
    if (result)
        return result;
    if (PQntuples(r))
        result = kz_buf_append(out, PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0));
    else
        result = KZ_ERR_NOTFOUND;
    PQclear(r);
    release(be, c);
    return result;
}

static enum kz_err pg_app_get(struct kz_backend *be, const char *id, struct kz_app *out)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;

    p_text(&p, id);
    result = read_run(be, S_APP_GET, &p, "app get", &c, &r);
    if (result)
        return result;
    if (PQntuples(r)) {
        memset(out, 0, sizeof(*out));
        if (!row_app(r, 0, out)) {
            kz_app_cleanup(out);
            result = KZ_ERR_DB;
        }
    } else {
        result = KZ_ERR_NOTFOUND;
    }
    PQclear(r);
    release(be, c);
    return result;
}

static enum kz_err pg_app_list(struct kz_backend *be, void (*fn)(void *, const struct kz_app *),
                               void *arg)
{
    struct conn *c;
    PGresult *r;
    enum kz_err result = read_run(be, S_APP_LIST, NULL, "app list", &c, &r);
    int row;

    if (result)
        return result;
    release(be, c); /* the rows are all in `r` */
    for (row = 0; row < PQntuples(r); row++) {
        struct kz_app a;
        bool ok;

        memset(&a, 0, sizeof(a));
        ok = row_app(r, row, &a);
        if (ok)
            fn(arg, &a);
        kz_app_cleanup(&a);
        if (!ok) {
            result = KZ_ERR_DB;
            break;
        }
    }
    PQclear(r);
    return result;
}

static enum kz_err pg_token_get(struct kz_backend *be, const char *hash, char app_id[40],
                                int64_t *expires_at)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;

    p_text(&p, hash);
    result = read_run(be, S_TOKEN_GET, &p, "token get", &c, &r);
    if (result)
        return result;
    if (PQntuples(r)) {
        if (!col_fixed(r, 0, 0, app_id, 40))
            result = KZ_ERR_DB;
        *expires_at = col_int(r, 0, 1);
    } else {
        result = KZ_ERR_NOTFOUND;
    }
    PQclear(r);
    release(be, c);
    return result;
}

static enum kz_err pg_webhook_get(struct kz_backend *be, const char *id, struct kz_webhook *out)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;

    p_text(&p, id);
    result = read_run(be, S_WH_GET, &p, "webhook get", &c, &r);
    if (result)
        return result;
    if (PQntuples(r)) {
        memset(out, 0, sizeof(*out));
        if (!row_webhook(r, 0, 0, out)) {
            kz_webhook_cleanup(out);
            result = KZ_ERR_DB;
        }
    } else {
        result = KZ_ERR_NOTFOUND;
    }
    PQclear(r);
    release(be, c);
    return result;
}

static enum kz_err pg_webhook_list(struct kz_backend *be, const char *app_id, int object_type,
                                   const char *object_id,
                                   void (*fn)(void *, const struct kz_webhook *), void *arg)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;
    int row;

    if (app_id)
        p_text(&p, app_id);
    p_int(&p, object_type < 0 ? -1 : object_type);
    p_text(&p, object_id);
    result = read_run(be, app_id ? S_WH_LIST_APP : S_WH_LIST_ALL, &p, "webhook list", &c, &r);
    if (result)
        return result;
    release(be, c);
    for (row = 0; row < PQntuples(r); row++) {
        struct kz_webhook w;
        bool ok;

        memset(&w, 0, sizeof(w));
        ok = row_webhook(r, row, 0, &w);
        if (ok)
            fn(arg, &w);
        kz_webhook_cleanup(&w);
        if (!ok) {
            result = KZ_ERR_DB;
            break;
        }
    }
    PQclear(r);
    return result;
}

static enum kz_err pg_delivery_list(struct kz_backend *be, const char *webhook_id, int state,
                                    int64_t cursor, size_t limit,
                                    void (*fn)(void *, const struct kz_delivery *), void *arg)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;
    int lo = state;
    int hi = state;
    int row;

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
    p_text(&p, webhook_id);
    p_int(&p, cursor > 0 ? cursor : INT64_MAX);
    p_int(&p, lo);
    p_int(&p, hi);
    p_int(&p, kz_store_clamp_size(limit));
    result = read_run(be, S_DLV_LIST, &p, "delivery list", &c, &r);
    if (result)
        return result;
    release(be, c);
    for (row = 0; row < PQntuples(r); row++) {
        struct kz_delivery d;
        bool ok;

        memset(&d, 0, sizeof(d));
        d.id = col_int(r, row, 0);
        ok = col_fixed(r, row, 1, d.webhook_id, sizeof(d.webhook_id));
        d.event_seq = col_int(r, row, 2);
        ok = col_fixed(r, row, 3, d.event_id, sizeof(d.event_id)) && ok;
        d.event_type = (enum kz_evtype)col_int(r, row, 4);
        d.state = (enum kz_dstate)col_int(r, row, 5);
        d.attempts = (int)col_int(r, row, 6);
        d.last_status = (int)col_int(r, row, 7);
        d.last_error = col_dup(r, row, 8);
        d.last_response = col_dup(r, row, 9);
        d.next_attempt_at = col_int(r, row, 10);
        d.created_at = col_int(r, row, 11);
        d.updated_at = col_int(r, row, 12);
        if (ok)
            fn(arg, &d);
        kz_delivery_cleanup(&d);
        if (!ok) {
            result = KZ_ERR_DB;
            break;
        }
    }
    PQclear(r);
    return result;
}

/* The delivery, then its newest attempts, on one read connection (not one snapshot: see
 * store_sqlite.c). */
static enum kz_err pg_delivery_get(struct kz_backend *be, const char *webhook_id,
                                   int64_t delivery_id, struct kz_delivery_detail *out)
{
    struct kz_delivery *d = &out->d;
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;
    bool ok;
    int row;

    p_int(&p, delivery_id);
    p_text(&p, webhook_id);
    result = read_run(be, S_DLV_GET, &p, "delivery get", &c, &r);
    if (result)
        return result;
    if (!PQntuples(r)) {
        PQclear(r);
        release(be, c);
        return KZ_ERR_NOTFOUND;
    }
    d->id = col_int(r, 0, 0);
    ok = col_fixed(r, 0, 1, d->webhook_id, sizeof(d->webhook_id));
    d->event_seq = col_int(r, 0, 2);
    ok = col_fixed(r, 0, 3, d->event_id, sizeof(d->event_id)) && ok;
    d->event_type = (enum kz_evtype)col_int(r, 0, 4);
    d->state = (enum kz_dstate)col_int(r, 0, 5);
    d->attempts = (int)col_int(r, 0, 6);
    d->last_status = (int)col_int(r, 0, 7);
    d->last_error = col_dup(r, 0, 8);
    d->last_response = col_dup(r, 0, 9);
    d->next_attempt_at = col_int(r, 0, 10);
    d->created_at = col_int(r, 0, 11);
    d->updated_at = col_int(r, 0, 12);
    ok = row_webhook(r, 0, 17, &out->wh) && ok;
    row_event(r, 0, 17 + WH_NCOLS, &out->ev);
    if (col_int(r, 0, 13)) {
        out->wh.object_type = (enum kz_objtype)col_int(r, 0, 14);
        kz_free(out->wh.object_id);
        out->wh.object_id = col_dup(r, 0, 15);
        kz_free(out->wh.callback_context);
        out->wh.callback_context = col_dup(r, 0, 16);
    }
    PQclear(r);
    if (!ok) {
        release(be, c);
        kz_delivery_detail_cleanup(out);
        return KZ_ERR_DB;
    }
    memset(&p, 0, sizeof(p));
    p_int(&p, delivery_id);
    p_int(&p, KZ_ATTEMPTS_SHOWN);
    r = run(c, S_ATT_LIST, &p, "attempt list", &result);
    if (!r) {
        if (conn_lost(c))
            drop(be, c);
        else
            release(be, c);
        kz_delivery_detail_cleanup(out);
        return result;
    }
    release(be, c);
    if (PQntuples(r))
        out->attempts = kz_calloc((size_t)PQntuples(r), sizeof(*out->attempts));
    for (row = 0; row < PQntuples(r); row++) {
        struct kz_attempt_row *a = &out->attempts[out->n_attempts++];

        a->at = col_int(r, row, 0);
        a->duration_ms = col_int(r, row, 1);
        a->status = (int)col_int(r, row, 2);
        a->error = col_dup(r, row, 3);
        a->response = col_dup(r, row, 4);
    }
    PQclear(r);
    kz_attempts_oldest_first(out);
    return KZ_OK;
}

static enum kz_err pg_delivery_of_event(struct kz_backend *be, const char *webhook_id,
                                        const char *event_id, int64_t *delivery_id)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;

    p_text(&p, webhook_id);
    p_text(&p, event_id);
    result = read_run(be, S_DLV_OF_EVENT, &p, "delivery of event", &c, &r);
    if (result)
        return result;
    if (PQntuples(r))
        *delivery_id = col_int(r, 0, 0);
    else
        result = KZ_ERR_NOTFOUND;
    PQclear(r);
    release(be, c);
    return result;
}

static enum kz_err pg_backlog(struct kz_backend *be, int64_t now, int64_t *due, int64_t *scheduled,
                              int64_t *inflight)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;

    p_int(&p, now);
    result = read_run(be, S_BACKLOG, &p, "backlog", &c, &r);
    if (result)
        return result;
    *due = col_int(r, 0, 0);
    *scheduled = col_int(r, 0, 1);
    *inflight = col_int(r, 0, 2);
    PQclear(r);
    release(be, c);
    return KZ_OK;
}

static enum kz_err pg_next_due(struct kz_backend *be, int64_t *at)
{
    struct conn *c;
    PGresult *r;
    enum kz_err result = read_run(be, S_NEXT_DUE, NULL, "next due", &c, &r);

    if (result)
        return result;
    *at = PQntuples(r) ? col_int(r, 0, 0) : -1;
    PQclear(r);
    release(be, c);
    return KZ_OK;
}

static enum kz_err pg_stats_minutes(struct kz_backend *be, int64_t since,
                                    void (*fn)(void *, const struct kz_stats_minute *), void *arg)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;
    int row;

    p_int(&p, since);
    result = read_run(be, S_STATS_MINUTES, &p, "stats minutes", &c, &r);
    if (result)
        return result;
    release(be, c);
    for (row = 0; row < PQntuples(r); row++) {
        struct kz_stats_minute m;

        m.minute = col_int(r, row, 0);
        m.published = col_int(r, row, 1);
        m.succeeded = col_int(r, row, 2);
        m.failed = col_int(r, row, 3);
        m.dead = col_int(r, row, 4);
        if (!kz_stats_hist_parse(PQgetvalue(r, row, 5), m.hist)) {
            result = KZ_ERR_DB;
            break;
        }
        fn(arg, &m);
    }
    PQclear(r);
    return result;
}

static enum kz_err pg_webhook_health(struct kz_backend *be, const char *id, int64_t since_hour,
                                     struct kz_webhook_health *out)
{
    struct params p = {0}, q = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;

    p_text(&p, id);
    p_int(&p, since_hour);
    result = read_run(be, S_WH_HEALTH_SUM, &p, "webhook health", &c, &r);
    if (result)
        return result;
    release(be, c);
    if (PQntuples(r)) {
        out->succeeded = col_int(r, 0, 0);
        out->failed = col_int(r, 0, 1);
        out->dead = col_int(r, 0, 2);
    }
    PQclear(r);
    p_text(&q, id);
    result = read_run(be, S_WH_HEALTH_STATE, &q, "webhook health", &c, &r);
    if (result)
        return result;
    release(be, c);
    if (PQntuples(r)) {
        out->failing_since = col_int(r, 0, 0);
        out->last_ok_at = col_int(r, 0, 1);
        out->last_fail_at = col_int(r, 0, 2);
        out->last_error = col_dup(r, 0, 3);
    }
    PQclear(r);
    return KZ_OK;
}

static enum kz_err pg_failing_list(struct kz_backend *be, size_t limit,
                                   void (*fn)(void *, const struct kz_failing *), void *arg)
{
    struct params p = {0};
    struct conn *c;
    PGresult *r;
    enum kz_err result;
    int row;

    p_int(&p, kz_store_clamp_size(limit));
    result = read_run(be, S_FAILING_LIST, &p, "failing list", &c, &r);
    if (result)
        return result;
    release(be, c);
    for (row = 0; row < PQntuples(r); row++) {
        struct kz_failing f;

        if (!col_fixed(r, row, 0, f.id, sizeof(f.id)) ||
            !col_fixed(r, row, 1, f.app_id, sizeof(f.app_id))) {
            result = KZ_ERR_DB;
            break;
        }
        f.callback_url = PQgetisnull(r, row, 2) ? NULL : PQgetvalue(r, row, 2);
        f.failing_since = col_int(r, row, 3);
        f.last_error = PQgetisnull(r, row, 4) ? NULL : PQgetvalue(r, row, 4);
        fn(arg, &f);
    }
    PQclear(r);
    return result;
}

const struct kz_backend_ops kz_store_pg_ops = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .begin = pg_begin,
    .savepoint = pg_savepoint,
    .rollback_to = pg_rollback_to,
    .lost = pg_lost,
    .lock_wait = pg_lock_wait,
    .commit = pg_commit,
    .rollback = pg_rollback,
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
    .publish_sets = true,
    .claim = op_claim,
    .claim_gated = op_claim_gated,
    .complete = op_complete,
    .retry = op_retry,
    .replay = op_replay,
    .release = op_release,
    .prune = op_prune,
    .node_start = op_node_start,
    .takeover = op_takeover,
    .heartbeat = pg_heartbeat,
    .stats_add = op_stats_add,
    .on_notify = pg_on_notify,
    .ping = pg_ping,
    .meta_get = pg_meta_get,
    .app_get = pg_app_get,
    .app_list = pg_app_list,
    .token_get = pg_token_get,
    .webhook_get = pg_webhook_get,
    .webhook_list = pg_webhook_list,
    .delivery_list = pg_delivery_list,
    .delivery_get = pg_delivery_get,
    .delivery_of_event = pg_delivery_of_event,
    .backlog = pg_backlog,
    .next_due = pg_next_due,
    .stats_minutes = pg_stats_minutes,
    .webhook_health = pg_webhook_health,
    .failing_list = pg_failing_list,
};
