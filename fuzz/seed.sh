#!/bin/sh
# Seeds corpus/<target>/ for every fuzz target from the fixtures (needs jq). Each seed is one
# input: the target's mode byte first (see the doc comment of each target), then the bytes.
# Run from fuzz/; corpus/ is not committed.
set -eu
fixtures=../fixtures
seed() { # seed TARGET NAME MODE-BYTE-IN-OCTAL TEXT
    mkdir -p "corpus/$1"
    printf "\\$3%s" "$4" > "corpus/$1/$2"
}
each() { # each TARGET PREFIX MODE: one seed per line of stdin
    i=0
    while IFS= read -r line; do
        i=$((i + 1))
        seed "$1" "$2-$i" "$3" "$line"
    done
}

# raw_vs_serde: every activity, references looked for at the top level.
each raw_vs_serde fixture 0 < $fixtures/activities.ndjson

# stored_records: user records whole (mode 0) and their data framed (mode 2); the entry
# food:burger whole (1), with an owner (1, "alice\n" first) and its data framed (3, 7).
users=$(jq -c '.. | objects | select(has("created_at") and has("data") and (has("collection") | not))' \
    $fixtures/*.enriched.ndjson | sort -u)
printf '%s\n' "$users" | each stored_records user 0
printf '%s\n' "$users" | jq -c .data | each stored_records user-data 2
burger=$(jq -c '.. | objects | select(.foreign_id? == "food:burger")' $fixtures/mixed.enriched.ndjson | head -n 1)
seed stored_records entry 1 "$burger"
seed stored_records entry-owned 1 "alice
$burger"
jq -c '.data' $fixtures/objects.ndjson | each stored_records entry-data 3
jq -c '.data' $fixtures/objects.ndjson | each stored_records entry-data-owned 7

# import_lines: user lines (mode 0) and entry lines (mode 1).
each import_lines user 0 < $fixtures/users.ndjson
each import_lines entry 1 < $fixtures/objects.ndjson
# Padded (modes 2 and 3, two bytes of length first): users of exactly 10240 bytes and one more,
# entries of exactly 51200 and one more.
printf '\002\346\047{"id":"a","data":{}}' > corpus/import_lines/user-at-limit
printf '\002\347\047{"id":"a","data":{}}' > corpus/import_lines/user-over-limit
printf '\003\340\307{"collection":"food","id":"a","data":{"n":1}}' > corpus/import_lines/entry-at-limit
printf '\003\341\307{"collection":"food","id":"a","data":{"n":1}}' > corpus/import_lines/entry-over-limit

# serve_app: a session of requests, each ended by a NUL (method, credentials, path, headers,
# an empty line, the body; see fuzz_targets/serve_app.rs).
mkdir -p corpus/serve_app
activity=$(head -n 1 $fixtures/mixed.ndjson)
{
    # POST (1), server token with api_key and jwt (1 | 8 | 16 = 25 = \031)
    printf '\001\031/api/v1.0/user/\ncontent-type: application/json\n\n{"id":"alice","data":{"name":"Alice"}}\0'
    printf '\000\031/api/v1.0/user/alice/\n\n\0'
    printf '\002\031/api/v1.0/user/alice/\n\n{"data":{"name":"Alicia"}}\0'
    printf '\001\031/api/v1.0/collections/food/\n\n{"id":"burger","data":{"name":"Burger"}}\0'
    printf '\001\031/api/v1.0/enrich/\n\n{"activities":[%s]}\0' "$activity"
    printf '\000\031/api/v1.0/users/?ids=alice,u0,nobody\n\n\0'
    printf '\003\031/api/v1.0/user/alice/\n\n\0'
    printf '\000\000/readyz\n\n'
} > corpus/serve_app/session
{
    # the user token of u0 (3 | 8 | 16 = 27 = \033)
    printf '\002\033/api/v1.0/user/u0\n\n{"data":{"x":[1,2,{"y":"SU:u1"}]}}\0'
    printf '\001\033/api/v1.0/meta/\n\n{"data":{"food":[{"id":"a","data":{"n":1}}]}}\0'
    printf '\000\033/api/v1.0/collections/?foreign_ids=food:a,food:b\n\n\0'
    printf '\000\033/api/v1.0/collections/food/a/\n\n\0'
    printf '\000\000/metrics\n\n'
} > corpus/serve_app/user-token
