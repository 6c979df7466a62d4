#!/usr/bin/env python3
"""Writes the seed corpora tests/fuzz/corpus/<target>/ from the README's examples, the Kaizala
reference payloads (kaizala-webhook-api.md sections 2.1, 2.2 and 4.4) and the odd inputs the SSRF
guard and the parsers must survive. Deterministic: file names are a hash of the content, so
re-running it changes nothing. Usage: python3 tests/fuzz/make_seeds.py (from anywhere)."""
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- JSON bodies: contract and Kaizala reference -------------------------------------------
CREATE = ('{"objectId":"<groupId>","objectType":"Group",\n "eventTypes":["TextMessageCreated",'
          '"MemberAdded","SurveyResponse"],\n "callBackUrl":"https://hooks.example.org/kz",'
          '"callBackToken":"s3cret","callBackContext":"tenant-42"}')
LIST = ('{"webhooks":[{"id":"<webhookId>","objectId":"<groupId>","objectType":"Group",\n'
        '  "events":["TextMessageCreated","MemberAdded"],"filters":[],\n'
        '  "callbackUrl":"https://hooks.example.org/kz","callbackToken":"s3cret",\n'
        '  "ts":1505491564677,"validity":1568605416677,"active":true}]}')
TEXT_ENV = ('{"subscriptionId":"<wh>","objectId":"<g>","objectType":"Group","eventType":'
            '"TextMessageCreated",\n "eventId":"<uuid>","data":{"text":"hello"},"context":'
            '"tenant-42",\n "fromUser":"+15550100","fromUserId":"<uid>","fromUserName":"A User",'
            '"fromUserProfilePic":""}')
JOB_ENV = ('{"objectId":"<g>","objectType":"Group","eventType":"JobCreated","eventId":"<uuid>",\n'
           ' "data":{"actionId":"<a>","groupId":"<g>","title":"Fix pump","dueDate":'
           '"2018-03-22T18:29:59Z",\n         "assignedTo":["+15550101"]}, "fromUser":"+15550100",'
           '"fromUserId":"<uid>","fromUserName":"A User","fromUserProfilePic":""}')
RESP_DATA = {
    "actionId": "<a>", "actionPackageId": "com.example.form", "packageId": "com.example.form.2",
    "groupId": "<g>", "sourceGroupId": "<g>", "responseId": "<r>", "isUpdateResponse": False,
    "responder": "+15550101", "responderId": "<uid>", "responderName": "B User",
    "responderProfilePic": "", "isAnonymous": False,
    "responseDetails": {"responseWithQuestions": [
        {"title": "Shop", "type": "SingleOption", "options": [{"title": "A"}, {"title": "B"}],
         "answer": ["A"]},
        {"title": "Qty", "type": "Numeric", "options": [], "answer": 4.0},
        {"title": "Where", "type": "Location", "options": [],
         "answer": {"lt": 0.018, "lg": 37.07, "n": "Nanyuki", "acc": 14.3}},
        {"title": "Response Time", "type": "DateTime", "options": [], "answer": 1558681000175}]},
    "Properties": []}
RESP_ENV = json.dumps({
    "subscriptionId": "<wh>", "objectId": "<g>", "objectType": "Group",
    "eventType": "ActionResponse", "eventId": "<r>", "data": RESP_DATA, "fromUser": "+15550101",
    "fromUserId": "<uid>", "isBotfromUser": False, "fromUserName": "B User",
    "fromUserProfilePic": "", "groupId": "<g>", "sourceGroupId": "<g>"})
SURVEY_DATA = {"actionId": "<a>", "groupId": "<g>", "validity": 1558681000175, "title": "Survey",
               "visibility": "All",
               "questions": [{"title": "Q1", "type": "Text", "options": []},
                             {"title": "T", "type": "DateTime", "options": [],
                              "isInvisible": True}],
               "properties": [{"name": "p", "type": "Text", "value": "v"}]}
MEMBER_DATA = {"member": "+15550102", "memberName": "C User", "memberProfilePic": "",
               "type": "Member"}
PUBLISH = ('{"eventType": "SurveyResponse", "groupId": "g1", "actionId": "a1", '
           '"actionPackageId": "com.x.form",\n "eventId": "optional-idempotency-key", '
           '"fromUser": "+15550100", "fromUserId": "u1",\n "fromUserName": "A User", '
           '"fromUserProfilePic": "", "data": {"any": "json"}}')
JSON_BODIES = [
    CREATE, LIST, TEXT_ENV, JOB_ENV, RESP_ENV, PUBLISH,
    "[" + PUBLISH + "," + PUBLISH.replace("optional-idempotency-key", "k2") + "]",
    '{"name": "crm", "objectIds": ["<groupId>", "*"]}',
    '{"Active": "true"}', '{"Active":"FALSE"}', '{"active":true}', '{"since": 1558681000175}',
    '{"since":"1558681000175"}', '{"validity":"1568605416677"}', '{"validity":1.568605416677e12}',
    '{"OBJECTID":"g1","objecttype":"group","EventTypes":["textmessagecreated"]}',
    '{"objectId":"a","objectid":"b","OBJECTID":"c"}',
    '{"a":1,"a":2}', '{"a":"x\\u0000y"}', '{"a":1} x', '{name:"x"}', '[]', '{}', '"str"', '1',
    '{"n":9223372036854775807,"m":-9223372036854775808,"o":9223372036854775808,"p":1e19,'
    '"q":-0.0,"r":1.5,"s":"-9223372036854775809","t":"0019","u":"+1","v":" 1","w":"1e3"}',
    '{"b":["true","True","TRUE","tRuE","yes","1",true,false,null,"false "]}',
    '{"\\u00e9":"\\ud83d\\ude00","k\\u00c9y":"\xc3\xa9"}',
    '[' * 40 + ']' * 40,
    '{"a":' * 20 + '1' + '}' * 20,
    json.dumps({"data": RESP_DATA, "eventType": "ActionResponse", "groupId": "g1"}),
    json.dumps({"eventType": "SurveyCreated", "groupId": "<g>", "data": SURVEY_DATA}),
    json.dumps({"eventType": "MemberAdded", "groupId": "<g>", "data": MEMBER_DATA}),
]
for b in JSON_BODIES:
    put("json", b)
# .NET leniency: a leading UTF-8 byte-order mark (only there), null for optional fields, the
# Kaizala callback fields a publisher may set
BOM = b"\xef\xbb\xbf"
NULLS = ('{"objectId":null,"objectType":null,"eventTypes":null,"callBackUrl":null,'
         '"callBackToken":null,"callBackContext":null,"validity":0,"Active":null}')
KZ_PUBLISH = ('{"eventType":"TextMessageCreated","groupId":"g1","isBotfromUser":"TRUE",'
              '"sourceGroupId":"parent-g","fromUser":null,"data":{"n":1.50}}')
for b in [CREATE, PUBLISH, NULLS, KZ_PUBLISH, "[" + KZ_PUBLISH + "]", '{"validity":""}',
          '{"validity":"0"}', '{"isBotfromUser":"yes","sourceGroupId":7}']:
    put("json", BOM + b.encode())
    put("json", b.encode())
put("json", BOM)
put("json", BOM + BOM + b"{}")
put("json", b" " + BOM + b"{}")
put("json", b'{"a":' + BOM + b'1}')
put("json", b'{"a":"\xff\xfe"}')
put("json", b'{"a":"\xed\xa0\x80"}')

# ---- URLs ---------------------------------------------------------------------------------
URLS = [
    "https://hooks.example.org/kz", "https://hooks.example.org:8443/kz?x=1&y=2",
    "http://hooks.example.org/kz", "HTTPS://Hooks.Example.ORG/KZ", "https://example.org",
    "https://0x7f.1/", "https://2130706433/", "https://0177.0.0.1/", "https://127.1/",
    "https://017700000001/", "https://0x7f000001/", "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/", "https://[::127.0.0.1]/", "https://[::1]:443/",
    "https://[64:ff9b::a9fe:a9fe]/", "https://[2002:a9fe:a9fe::]/",
    "https://169.254.169.254/latest", "https://169.254.169.254/latest/meta-data/",
    "https://[fe80::1%25eth0]/", "https://[fd00::1]/", "https://[2001:db8::1]/",
    "https://10.0.0.1/", "https://172.16.0.1/", "https://192.168.0.1/", "https://100.64.0.1/",
    "https://0.0.0.0/", "https://0/", "https://224.0.0.1/", "https://255.255.255.255/",
    "https://8.8.8.8/", "https://[2606:4700::1111]/", "https://user:pass@example.org/",
    "https://@example.org/", "https://user@127.0.0.1/", "https://example.org@127.0.0.1/",
    "https://127.0.0.1#@example.org/", "https://example.org/#frag", "https://example.org/#",
    "https://%31%32%37.0.0.1/", "https://exa%6dple.org/", "https://example.org/%2e%2e/x",
    "https://example.org\\@127.0.0.1/", "https:///example.org", "https:example.org",
    "https://", "https://:443/", "https://example.org:0/", "https://example.org:65536/",
    "https://example.org:+443/", "https://example.org:0443/", "https://example.org:/",
    "https://exa mple.org/", "https://example.org/\x7f", "https://ex\xc3\xa4mple.org/",
    "https://xn--exmple-cua.org/", "https://localhost/", "https://localhost./",
    "https://127.0.0.1./", "https://1.2.3.4.5/", "https://256.0.0.1/", "https://[::1/",
    "https://[]/", "https://[v1.x]/", "ftp://example.org/", "javascript:alert(1)",
    "https://example.org/?validationToken=abc", "https://a_b.example.org/",
    "https://" + "a" * 250 + ".org/", "https://example.org/" + "x" * 2040,
]
for u in URLS:
    put("url", u)
put("url", b"https://10.0.0.1/\x00203.0.113.7\x00\x30" + bytes([0, 8, 8, 8, 8, 1]) +
    bytes(15) + b"\x01" + bytes([2]))
put("url", b"https://[::1]/\x00::1\x00\x05" + bytes([0, 127, 0, 0, 1]))
put("url", b"https://8.8.8.8/\x008.8.8.8\x00\xff" + bytes([0, 8, 8, 8, 8, 0, 1, 1, 1, 1]))

# ---- durations ----------------------------------------------------------------------------
DURS = ["500ms", "15s", "10m", "7d", "1h30m", "1d2h3m4s5ms", "0s", "1m,10m,1h,4h,12h,24h",
        "1m,10m, 1h ,4h", "\t1s\t,\t2s", "15", "", "1.5h", "1m1m", "30m1h", "1H", "-1s", "+1s",
        " 1s", "1s ", "36525d", "36525d1ms", "3153600000000ms", "99999999999999999999ms",
        "1,", ",1s", "1s,,2s", "0s,1s", "1ms" + ",1ms" * 40, "1d1d", "1ms1s", "1mss", "1sm"]
for s in DURS:
    put("dur", s)

# ---- Retry-After (8 bytes of now_ms, little endian, then the value) -----------------------
NOW = struct.pack("<Q", 1700000000000)
for v in ["120", "0", " 120 ", "\t5\r\n", "315360000", "315360001", "99999999999999999999999",
          "-1", "1.5", "Sun, 06 Nov 1994 08:49:37 GMT", "Tue, 14 Nov 2023 22:13:20 GMT",
          "Wed, 15 Nov 2023 22:13:20 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
          "Thu, 01 Jan 1970 00:00:00 GMT", "Sat, 01 Jan 0000 00:00:00 GMT",
          "Thu, 29 Feb 2024 12:00:00 GMT", "Mon, 29 Feb 2100 12:00:00 GMT",
          "Sun, 31 Dec 2023 23:59:60 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
          "Sun Nov  6 08:49:37 1994", "sun, 06 nov 1994 08:49:37 gmt", ""]:
    put("retry_after", NOW + v.encode())
put("retry_after", struct.pack("<Q", 0) + b"Thu, 01 Jan 1970 00:00:01 GMT\x00" +
    struct.pack("<QQQ", 60000, 600000, 3600000))
put("retry_after", struct.pack("<Q", 2**64 - 1) + b"7\x00" + struct.pack("<QQ", 2**63 - 1, 2))

# ---- config: argv after "kzhook serve" ----------------------------------------------------
CONFIGS = [
    "--listen 127.0.0.1:8080 --db ./kzhook-data/kzhook.db",
    "--listen=[::1]:0 --retry-schedule=1m,10m,1h --delivery-timeout 15s",
    "--admin-token 0123456789abcdef --public-url https://kz.example.org/ --rate-limit 0",
    "--allow-private-targets --allow-http-callbacks=1 --validation-timeout=5s",
    "--tls-cert /etc/c.pem --tls-key /etc/k.pem --retention 7d --token-ttl 24h",
    "--threads 4 --max-connections 4096 --per-endpoint-concurrency 8",
    "--db postgresql://u:p@localhost/kz", "--db", "--db=", "--listen :99999", "--listen [::1]",
    "--rate-limit -1", "--threads 0", "--tls-cert x", "--admin-token short", "serve",
    "--unknown", "--retry-schedule=" + ",".join(["1s"] * 33), "--delivery-timeout=0s",
    "--allow-private-targets=maybe",
]
for c in CONFIGS:
    put("config", c)
put("config", b"--db\x00\x00--listen\x00host:1")

# ---- envelope: 4 control bytes, then NUL-separated fields, then data ----------------------
def env(ctrl, fields, data):
    return bytes(ctrl) + b"\x00" + b"\x00".join(f.encode() for f in fields) + b"\x00" + \
        data.encode()


F = ["0f0e0d0c-0000-4000-8000-00000000000a", "<g>", "<r>", "<g>", "tenant-42", "+15550101",
     "<uid>", "B User", ""]
put("envelope", env([0, 1, 0xff, 0], F, json.dumps(RESP_DATA)))
put("envelope", env([0, 6, 0xff, 0], F, '{"text":"hello"}'))
put("envelope", env([2, 3, 0x03, 7], F, json.dumps(SURVEY_DATA)))
put("envelope", env([1, 9, 0xf7, 255], F, json.dumps(MEMBER_DATA)))
put("envelope", env([0, 0, 0xff, 0], ["id\"\\\n", "o\u00e9", "e\x01", "g", "c\"", "", "", "",
                                      ""], '"just a string"'))
put("envelope", env([0, 16, 0x00, 3], F, "[1,2.5,-0,1e300,null,true]"))
put("envelope", env([0, 5, 0xff, 0], F, "not json"))
# bit 7 of the first control byte: isBotfromUser; bit 6: a sourceGroupId (the fromUserId piece)
put("envelope", env([0x80, 1, 0xff, 0], F, json.dumps(RESP_DATA)))
put("envelope", env([0xc0, 6, 0xfb, 0], F, '{"text":"hello"}'))
put("envelope", env([0x42, 3, 0x20, 9], F, "{}"))

# ---- api: method byte, flag byte, path NUL query NUL headers NUL body ---------------------
M = {"GET": 0, "POST": 1, "PUT": 2, "DELETE": 3, "HEAD": 4, "PATCH": 5}
ADMIN, TA, TB, BA, CREDS, WRONG, EXPB, EMPTY = 1, 2, 4, 8, 16, 32, 64, 128


def api(method, flags, path, query="", headers="", body=""):
    return bytes([M[method], flags]) + path.encode() + b"\x00" + query.encode() + b"\x00" + \
        headers.encode() + b"\x00" + (body.encode() if isinstance(body, str) else body)


A_CREATE = CREATE.replace("<groupId>", "g1")
PRIV_CREATE = A_CREATE.replace("https://hooks.example.org/kz", "https://169.254.169.254/latest")
SEEDS = [
    api("GET", 0, "/healthz"), api("HEAD", 0, "/healthz"), api("GET", 0, "/metrics"),
    api("POST", 0, "/healthz"), api("GET", 0, "/"), api("GET", 0, ""),
    api("GET", CREDS, "/v1/accessToken"), api("POST", CREDS, "/v1/accessToken"),
    api("GET", WRONG, "/v1/accessToken"), api("GET", 0, "/v1/accessToken"),
    api("GET", 0, "/v1/accessToken", "", "applicationId: {A}\napplicationSecret: x\n"
        "refreshToken: y"),
    api("POST", TA, "/v1/webhook", "", "Content-Type: application/json", A_CREATE),
    api("POST", TA, "//v1/webhook", "", "", A_CREATE),
    api("POST", TA, "/v1/webhook", "", "", PRIV_CREATE),
    api("POST", TA, "/v1/webhook", "", "",
        A_CREATE.replace("https://hooks.example.org/kz", "https://8.8.8.8/kz")),
    api("POST", TA, "/v1/webhook", "", "",
        A_CREATE.replace("https://hooks.example.org/kz", "https://[::ffff:127.0.0.1]/")),
    api("POST", TA, "/v1/webhook", "", "",
        A_CREATE.replace("https://hooks.example.org/kz", "https://0x7f.1/")),
    api("POST", TA, "/v1/webhook", "", "",
        A_CREATE.replace("https://hooks.example.org/kz", "http://hooks.example.org/kz")),
    api("POST", TA, "/v1/webhook", "", "", A_CREATE.replace("g1", "g2")),
    api("POST", TB, "/v1/webhook", "", "", CREATE),
    api("POST", TA, "/v1/webhook", "", "", '{"objectId":"g1"}'),
    api("POST", TA, "/v1/webhook", "", "", "{not json"),
    api("POST", TA, "/v1/webhook", "", "", ""),
    api("POST", EXPB, "/v1/webhook", "", "", CREATE),
    api("POST", EMPTY, "/v1/webhook", "", "", CREATE),
    api("POST", BA, "/v1/webhook", "", "", A_CREATE),
    api("GET", TA, "/v1/webhook", "objectId=g1&objectType=Group"),
    api("GET", TB, "/v1/webhook", "objectId=g2&objectType=group"),
    api("GET", TA, "/v1/webhook", "objectType=Nope"),
    api("GET", TA, "/v1/webhook", "objectId=&objectType="),
    api("GET", TA, "/v1/webhook/{W}"), api("GET", TB, "/v1/webhook/{W}"),
    api("GET", TA, "/v1/webhook/{W2}"), api("GET", TA, "//v1//webhook//{W3}//"),
    api("GET", TA, "/v1/webhook/" + "a" * 65), api("GET", TA, "/v1/webhook/" + "a" * 2000),
    api("GET", TA, "/v1/webhook/.."), api("GET", TA, "/v1/webhook/%2e%2e"),
    api("GET", TA, "/v1/webhook/%2e%2e/deliveries"), api("GET", TA, "/v1/../v1/webhook"),
    api("GET", TA, "/v1/webhook/{W}/../{W2}"),
    api("PUT", TA, "/v1/webhook/{W}", "", "", '{"Active":"true"}'),
    api("PUT", TA, "/v1/webhook/{W}", "", "", '{"Active":"false","validity":"1568605416677"}'),
    api("PUT", TA, "/v1/webhook/{W3}", "", "", '{"active":true,"eventTypes":["PollCreated"]}'),
    api("PUT", TA, "/v1/webhook/{W}", "", "",
        '{"callBackUrl":"https://169.254.169.254/latest"}'),
    api("PUT", TA, "/v1/webhook/{W}", "", "", '{"objectId":"g9"}'),
    api("PUT", TB, "/v1/webhook/{W}", "", "", '{"Active":"true"}'),
    api("DELETE", TA, "/v1/webhook/{W}"), api("DELETE", TB, "/v1/webhook/{W}"),
    api("DELETE", TA, "/v1/webhook/nope"),
    api("GET", TA, "/v1/webhook/{W}/deliveries", "status=pending&limit=100&cursor="),
    api("GET", TA, "/v1/webhook/{W}/deliveries", "status=bogus"),
    api("GET", TA, "/v1/webhook/{W}/deliveries", "limit=0"),
    api("GET", TA, "/v1/webhook/{W}/deliveries", "limit=1&cursor=99999999999999999999"),
    api("POST", TA, "/v1/webhook/{W}/replay", "", "", '{"since": 0}'),
    api("POST", TA, "/v1/webhook/{W}/replay", "", "", '{"since": "-1"}'),
    api("GET", TA, "/v1/webhook/{W}/replay"),
    api("POST", ADMIN, "/v1/events", "", "", PUBLISH),
    api("POST", ADMIN, "/v1/events", "", "",
        '{"eventType":"TextMessageCreated","groupId":"g1","data":{"text":"hello"}}'),
    api("POST", ADMIN, "/v1/events", "", "",
        "[" + ",".join(['{"eventType":"MemberAdded","groupId":"g1"}'] * 3) + "]"),
    api("POST", ADMIN, "/v1/events", "", "", "[]"),
    api("POST", ADMIN, "/v1/events", "", "", '{"eventType":"Nope","groupId":"g1"}'),
    api("POST", ADMIN, "/v1/events", "", "",
        '{"eventType":"ActionResponse","actionPackageId":"com.x.form","eventId":"e\\r\\n1"}'),
    api("POST", TA, "/v1/events", "", "", PUBLISH),
    api("POST", 0, "/v1/events", "", "Authorization: Bearer fuzz-admin-token-123", PUBLISH),
    api("GET", ADMIN, "/admin/v1/applications"),
    api("POST", ADMIN, "/admin/v1/applications", "", "",
        '{"name": "crm", "objectIds": ["<groupId>", "*"]}'),
    api("POST", ADMIN, "/admin/v1/applications", "", "", '{"name": "", "objectIds": []}'),
    api("DELETE", ADMIN, "/admin/v1/applications/{B}"),
    api("DELETE", ADMIN, "/admin/v1/applications/nope"),
    api("DELETE", TA, "/admin/v1/applications/{A}"),
    api("GET", 0, "/admin/v1/applications", "", "Authorization: Bearer wrong"),
    api("PATCH", TA, "/v1/webhook"), api("GET", TA, "/v1/webhook/{W}/x/y/z/a/b/c/d/e"),
    api("GET", TA, "/" * 1100),
    # .NET leniency and Kaizala fidelity: BOM, nulls, paths and ids in any case, traceparent
    api("POST", TA, "/v1/webhook", "", "", "\ufeff" + A_CREATE),
    api("POST", TA, "/V1/WebHook", "", "", A_CREATE.replace('"s3cret"', "null")),
    api("POST", TA, "/v1/webhook", "", "", A_CREATE[:-1] + ',"validity":0}'),
    api("POST", TA, "/v1/webhook", "", "", A_CREATE[:-1] + ',"validity":""}'),
    api("POST", TA, "/v1/webhook", "", "", A_CREATE.replace('"g1"', "null")),
    api("PUT", TA, "/V1/WEBHOOK/{WU}", "", "", "\ufeff" + NULLS),
    api("PUT", TA, "/v1/webhook/{W}", "", "", '{"Active":null,"validity":"0"}'),
    api("GET", TA, "/V1/Webhook/{WU}/DELIVERIES"),
    api("POST", TA, "/v1/webhook/{WU}/Replay", "", "", "\ufeff" + '{"since":0}'),
    api("DELETE", TA, "/v1/WEBHOOK/{WU}"),
    api("GET", 0, "/OpenAPI.json"), api("GET", 0, "/openapi.json"), api("POST", 0, "/openapi.json"),
    api("GET", 0, "/V1/ACCESSTOKEN", "", "applicationId: {AU}\napplicationSecret: x\n"
        "refreshToken: y"),
    api("GET", ADMIN, "/ADMIN/V1/Applications"),
    api("POST", ADMIN, "/V1/Events", "", "traceparent: "
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", KZ_PUBLISH),
    api("POST", ADMIN, "/v1/events", "", "traceparent: "
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future", "[" + KZ_PUBLISH + "]"),
    api("POST", ADMIN, "/v1/events", "", "traceparent: "
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "\ufeff" + KZ_PUBLISH),
    api("POST", ADMIN, "/v1/events", "", "traceparent: ff-x\r\nX: 1",
        '{"eventType":"MemberAdded","groupId":"g1","isBotfromUser":"yes"}'),
    api("POST", ADMIN, "/v1/events", "", "",
        '{"eventType":"MemberAdded","groupId":"g1","sourceGroupId":"","isBotfromUser":null,'
        '"eventId":null,"data":null}'),
]
for s in SEEDS:
    put("api", s)
print("seeds written under", os.path.join(HERE, "corpus"))
