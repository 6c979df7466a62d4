-- wrk script for the baselines: POST a fixed Kaizala-sized body (read from $KZB_BODY_FILE).
-- Baseline A sets $KZB_WEBHOOK_ID so the receiver logs these requests exactly as it logs real
-- deliveries (same access-log cost); baseline B leaves it unset.
local f = assert(io.open(os.getenv("KZB_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local id = os.getenv("KZB_WEBHOOK_ID")
if id and id ~= "" then
    wrk.headers["webhook-id"] = id
end
