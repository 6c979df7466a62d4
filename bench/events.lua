-- wrk script for the ingest scenario: POST one event per request to /v1/events, each with a
-- unique eventId = $KZB_PREFIX-<thread>-<random>-<counter>. The body template ($KZB_BODY_FILE)
-- holds the marker @EVENTID@ once; the admin token comes from $KZB_TOKEN.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("tid", #threads)
end

local pre, post, prefix, headers
local counter = 0
-- globals, so that done() can read them from every thread with thread:get()
ok, bad = 0, 0

function init(args)
    local f = assert(io.open(os.getenv("KZB_BODY_FILE"), "rb"))
    local tmpl = f:read("*a")
    f:close()
    local s, e = string.find(tmpl, "@EVENTID@", 1, true)
    assert(s, "no @EVENTID@ marker in the body template")
    pre, post = string.sub(tmpl, 1, s - 1), string.sub(tmpl, e + 1)
    math.randomseed(os.time() * 1000 + tid * 7919 + math.floor(os.clock() * 1000000))
    prefix = os.getenv("KZB_PREFIX") .. "-" .. tid .. "-" .. string.format("%08x", math.random(0, 0x7fffffff)) .. "-"
    headers = {
        ["Authorization"] = "Bearer " .. os.getenv("KZB_TOKEN"),
        ["Content-Type"] = "application/json",
    }
end

function request()
    counter = counter + 1
    return wrk.format("POST", "/v1/events", headers, pre .. prefix .. counter .. post)
end

function response(status, hdrs, body)
    if status == 202 then
        ok = ok + 1
    else
        bad = bad + 1
    end
end

function done(summary, latency, requests)
    local tok, tbad = 0, 0
    for _, t in ipairs(threads) do
        tok = tok + t:get("ok")
        tbad = tbad + t:get("bad")
    end
    io.write(string.format("KZB_STATUS accepted=%d rejected=%d\n", tok, tbad))
end
