//! The collections API of `enrich serve` driven over real HTTP, on port 0: Stream's bodies,
//! status codes and errors for add, get, update, delete, upsert, select and delete many, their
//! limits, and who may call what.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::serve::{SECRET, Server, assert_error, keys, sign, strip_duration, text};

/// A server whose calls carry what Python, Ruby and PHP sign for collection calls.
async fn start(url: &str) -> Server {
    Server::start(url)
        .await
        .signed(&json!({"resource": "collections", "action": "*", "feed_id": "*", "user_id": "*"}))
}

fn user_token(user: &str) -> String {
    sign(&json!({ "user_id": user }), SECRET)
}

/// Checks an entry's bytes: Stream's keys in Stream's order, these values, timestamps with six
/// fractional digits; answers them parsed.
fn assert_entry(entry: &str, collection: &str, id: &str, data: &str) -> Value {
    let head = format!(
        r#"{{"id":"{id}","collection":"{collection}","foreign_id":"{collection}:{id}","data":{data},"created_at":""#
    );
    assert!(
        entry.starts_with(&head),
        "{entry}\nwant it to start with {head}"
    );
    let value: Value = serde_json::from_str(entry).unwrap();
    assert_eq!(
        keys(&value),
        [
            "id",
            "collection",
            "foreign_id",
            "data",
            "created_at",
            "updated_at"
        ]
    );
    for stamp in ["created_at", "updated_at"] {
        let text = value[stamp].as_str().unwrap();
        assert_eq!(text.len(), 27, "{text}");
        assert!(text.ends_with('Z'), "{text}");
    }
    value
}

async fn single_entries_add_get_update_delete(server: &Server) {
    // Add with an id, as Python sends it (user_id null): 201, the entry, duration last.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"burger","data":{"name":"Burger","n":1.50},"user_id":null}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let added = strip_duration(&body);
    let value = assert_entry(&added, "food", "burger", r#"{"name":"Burger","n":1.5}"#);
    assert_eq!(value["created_at"], value["updated_at"]);

    // Get, with and without the trailing slash: the same bytes.
    for path in [
        "/api/v1.0/collections/food/burger/",
        "/api/v1.0/collections/food/burger",
    ] {
        let (status, body) = server.call(Method::GET, path, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(strip_duration(&body), added);
    }

    // A taken id: 409, whoever asks.
    let again = r#"{"id":"burger","data":{"name":"Other"}}"#;
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/collections/food", again)
        .await;
    assert_error(status, &body, 409, 22, "ConflictException");
    let (status, body) = server
        .call_as(
            &user_token("carol"),
            Method::POST,
            "/api/v1.0/collections/food/",
            again,
        )
        .await;
    assert_error(status, &body, 409, 22, "ConflictException");

    // No id (missing, null or ""): a generated UUID.
    for body in [
        r#"{"data":{"name":"A"}}"#,
        r#"{"id":null,"data":{"name":"A"}}"#,
        r#"{"id":"","data":{"name":"A"}}"#,
    ] {
        let (status, answer) = server
            .call(Method::POST, "/api/v1.0/collections/food/", body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let value: Value = serde_json::from_str(&strip_duration(&answer)).unwrap();
        let id = value["id"].as_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(value["foreign_id"], format!("food:{id}"));
        let (status, _) = server
            .call(
                Method::GET,
                &format!("/api/v1.0/collections/food/{id}/"),
                "",
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    // Update: 201, new data and updated_at, the same created_at; an equal body id is fine.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1.0/collections/food/burger/",
            r#"{"id":"burger","data":{"name":"Burger2"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let updated = assert_entry(
        &strip_duration(&body),
        "food",
        "burger",
        r#"{"name":"Burger2"}"#,
    );
    assert_eq!(updated["created_at"], value["created_at"]);
    assert_ne!(updated["updated_at"], value["updated_at"]);
    let (_, body) = server
        .call(Method::GET, "/api/v1.0/collections/food/burger", "")
        .await;
    assert_entry(
        &strip_duration(&body),
        "food",
        "burger",
        r#"{"name":"Burger2"}"#,
    );

    // Java adds user_id to an update: not a change of owner, accepted.
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1.0/collections/food/burger",
            r#"{"data":{"name":"Burger3"},"user_id":"someone"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Update may not change the id; absent is 404.
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1.0/collections/food/burger/",
            r#"{"id":"pizza","data":{"a":1}}"#,
        )
        .await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("id"), "{detail}");
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1.0/collections/food/nope/",
            r#"{"data":{"a":1}}"#,
        )
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");

    // Delete: 200, {"duration":…}, with Python's {} body or none; then get and delete are 404.
    let (status, body) = server
        .call(Method::DELETE, "/api/v1.0/collections/food/burger/", "{}")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(strip_duration(&body), "{}");
    let (status, body) = server
        .call(Method::GET, "/api/v1.0/collections/food/burger/", "")
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");
    let (status, body) = server
        .call(Method::DELETE, "/api/v1.0/collections/food/burger", "")
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");

    // Re-adding after a delete works, with new timestamps.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"burger","data":{"name":"New"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let readded = assert_entry(
        &strip_duration(&body),
        "food",
        "burger",
        r#"{"name":"New"}"#,
    );
    assert_ne!(readded["created_at"], value["created_at"]);
}

async fn bad_input_is_400_naming_the_problem(server: &Server) {
    let add = "/api/v1.0/collections/food/";
    for (path, body, named) in [
        (add, r#"{"id":"!abcdee!","data":{"a":1}}"#, "entry id"),
        (add, r#"{"id":"x","data":"text"}"#, "JSON object"),
        (add, r#"{"id":"x","data":{}}"#, "empty"),
        (add, r#"{"id":"x"}"#, "missing"),
        (add, r#"{"id":"x","data":null}"#, "missing"),
        (add, r#"{"id":7,"data":{"a":1}}"#, "id must be a string"),
        (
            add,
            r#"{"id":"x","data":{"a":1},"user_id":"bad id"}"#,
            "user id",
        ),
        (add, r#"{"id":"x","data":"#, "not valid JSON"),
        (add, "", "empty"),
        (
            "/api/v1.0/collections/bad%20name/",
            r#"{"id":"x","data":{"a":1}}"#,
            "collection name",
        ),
    ] {
        let (status, answer) = server.call(Method::POST, path, body).await;
        let detail = assert_error(status, &answer, 400, 4, "InputException");
        assert!(detail.contains(named), "{body}: {detail}");
    }
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (status, answer) = server
            .call(
                method.clone(),
                "/api/v1.0/collections/food/bad%20id/",
                r#"{"data":{"a":1}}"#,
            )
            .await;
        let detail = assert_error(status, &answer, 400, 4, "InputException");
        assert!(detail.contains("entry id"), "{method}: {detail}");
    }
    // Nothing of the refused adds was written.
    let (status, _) = server
        .call(Method::GET, "/api/v1.0/collections/food/x/", "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn upsert_select_and_delete_many(server: &Server) {
    // Ruby's items: flat, a `data` key stays nested; Stream answers the items under their
    // collection.
    let items = json!({"data": {
        "test": [
            {"id": "aabbcc", "name": "juniper", "data": {"hobbies": ["playing", "sleeping"]}},
            {"id": "ddeeff", "name": "ruby", "data": {"interests": ["sunbeams"]}},
        ],
        "food": [{"name": "no id", "user_id": "alice"}],
    }});
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/collections/", items.to_string())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let answer: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    assert_eq!(answer["data"]["test"], items["data"]["test"], "{body}");
    assert!(
        body.starts_with(r#"{"data":{"test":[{"id":"aabbcc","name":"juniper","data":{"hobbies""#),
        "{body}"
    );
    // An item without id gets one, as its first key; user_id is ordinary data.
    let food = answer["data"]["food"][0].as_object().unwrap();
    assert_eq!(
        food.keys().collect::<Vec<_>>(),
        ["id", "name", "user_id"],
        "{body}"
    );
    let generated = food["id"].as_str().unwrap().to_string();
    assert_eq!(generated.len(), 36);

    // Select: the order of foreign_ids, missing left out, repeats once, several collections.
    let select = format!(
        "/api/v1.0/collections/?foreign_ids=test:ddeeff,test:nope,food:{generated},test:aabbcc,test:ddeeff"
    );
    let (status, body) = server.call(Method::GET, &select, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    let data = answer["response"]["data"].as_array().unwrap();
    let ids: Vec<&str> = data
        .iter()
        .map(|e| e["foreign_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "test:ddeeff",
            format!("food:{generated}").as_str(),
            "test:aabbcc"
        ]
    );
    assert_eq!(
        data[0]["data"],
        json!({"id": "ddeeff", "name": "ruby", "data": {"interests": ["sunbeams"]}})
    );
    // Each entry is byte for byte what a get answers.
    let (_, one) = server
        .call(Method::GET, "/api/v1.0/collections/test/aabbcc/", "")
        .await;
    assert!(body.contains(&strip_duration(&one)), "{body}");
    assert!(
        !answer["response"]["data"][0]
            .as_object()
            .unwrap()
            .contains_key("duration")
    );
    // PHP's meta/ is the same endpoint.
    let (status, meta) = server
        .call(Method::GET, &select.replace("collections/", "meta/"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    assert_eq!(strip_duration(&meta), strip_duration(&body));

    // Upsert of an existing id replaces its data, keeps created_at; PHP's meta/ upserts too.
    let (_, before) = server
        .call(Method::GET, "/api/v1.0/collections/test/aabbcc/", "")
        .await;
    let before: Value = serde_json::from_str(&strip_duration(&before)).unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/meta/",
            r#"{"data":{"test":[{"id":"aabbcc","name":"B3"}]}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        strip_duration(&body),
        r#"{"data":{"test":[{"id":"aabbcc","name":"B3"}]}}"#
    );
    let (_, after) = server
        .call(Method::GET, "/api/v1.0/collections/test/aabbcc/", "")
        .await;
    let after = assert_entry(
        &strip_duration(&after),
        "test",
        "aabbcc",
        r#"{"id":"aabbcc","name":"B3"}"#,
    );
    assert_eq!(after["created_at"], before["created_at"]);
    assert_ne!(after["updated_at"], before["updated_at"]);

    // Delete many: comma-joined (JS, Go, Ruby, PHP, .NET, Java) or repeated (Python); absent
    // ids skipped; 200 {"duration":…}.
    let (status, body) = server
        .call(
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=test&ids=aabbcc,nope",
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(strip_duration(&body), "{}");
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/api/v1.0/collections/?collection_name=food&ids={generated}&ids=nope"),
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = server.call(Method::GET, &select, "").await;
    let answer: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    let ids: Vec<&str> = answer["response"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["foreign_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["test:ddeeff"]);

    // No ids (`foreign_ids=`, or none: Python's `requests` drops an empty list) ask for
    // nothing.
    for (method, path, want) in [
        (
            Method::GET,
            "/api/v1.0/collections/",
            r#"{"response":{"data":[]}}"#,
        ),
        (
            Method::GET,
            "/api/v1.0/collections/?foreign_ids=",
            r#"{"response":{"data":[]}}"#,
        ),
        (
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=test",
            "{}",
        ),
        (
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=test&ids=",
            "{}",
        ),
    ] {
        let (status, answer) = server.call(method, path, "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        assert_eq!(strip_duration(&answer), want, "{path}");
    }
    let (_, body) = server.call(Method::GET, &select, "").await;
    assert!(body.contains("test:ddeeff"), "nothing deleted: {body}");

    // Bad batch input: 400, code 4.
    for (method, path, body, named) in [
        (
            Method::GET,
            "/api/v1.0/collections/?foreign_ids=nocolon",
            "",
            "foreign id",
        ),
        (
            Method::GET,
            "/api/v1.0/collections/?foreign_ids=a:b:c",
            "",
            "entry id",
        ),
        (
            Method::DELETE,
            "/api/v1.0/collections/?ids=a",
            "",
            "collection_name",
        ),
        (
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=nope&collection_name=test&ids=a",
            "",
            "collection_name query parameter is given twice",
        ),
        (
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=test&ids=bad%20id",
            "",
            "entry id",
        ),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"items":[]}"#,
            "data",
        ),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"test":{}}}"#,
            "array",
        ),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"test":[1]}}"#,
            "data.test[0]",
        ),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"test":[{"id":"a b"}]}}"#,
            "entry id",
        ),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"bad name":[{"id":"a"}]}}"#,
            "collection name",
        ),
        // A group's name is checked even when the group is empty.
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"fine":[],"a:b":[]}}"#,
            r#"data: invalid collection name "a:b""#,
        ),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"":[{"id":"x"}]}}"#,
            r#"data: invalid collection name "": must not be empty"#,
        ),
    ] {
        let (status, answer) = server.call(method, path, body).await;
        let detail = assert_error(status, &answer, 400, 4, "InputException");
        assert!(detail.contains(named), "{path} {body}: {detail}");
    }
    // A refused upsert writes nothing, not even its valid items.
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"test":[{"id":"fine","a":1},{"id":"bad id"}]}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .call(Method::GET, "/api/v1.0/collections/test/fine/", "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn limits_are_named(server: &Server) {
    // 1,000 entries per batch call, over every collection of an upsert.
    let items: Vec<Value> = (0..600)
        .map(|i| json!({"id": format!("i{i}"), "n": i}))
        .collect();
    let fits = json!({"data": {"a": items[..500], "b": items[..500]}});
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/collections/", fits.to_string())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let over = json!({"data": {"a": items, "b": items[..401]}});
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/collections/", over.to_string())
        .await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(
        detail.contains("1001") && detail.contains("1000") && detail.contains("--max-batch-ids"),
        "{detail}"
    );
    // A repeated id counts once, as in a select: 1,200 items naming 1,000 entries fit.
    let b = [&items[..400], &items[..200]].concat();
    let repeated = json!({"data": {"a": items, "b": b}});
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/collections/", repeated.to_string())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Written once, as its last item, and answered as stored at every mention.
    let twice = json!({"data": {"c": [{"id": "d", "v": 1}, {"id": "d", "v": 2}]}});
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/collections/", twice.to_string())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let answered: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    let echoed: Vec<&Value> = (answered["data"]["c"].as_array().unwrap().iter())
        .map(|item| &item["v"])
        .collect();
    assert_eq!(echoed, [&json!(2), &json!(2)], "{body}");
    let (status, body) = server
        .call(Method::GET, "/api/v1.0/collections/?foreign_ids=c:d", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let selected: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    assert_eq!(selected["response"]["data"][0]["data"]["v"], 2, "{body}");
    let ids: Vec<String> = (0..1001).map(|i| format!("a:i{i}")).collect();
    let (status, body) = server
        .call(
            Method::GET,
            &format!("/api/v1.0/collections/?foreign_ids={}", ids.join(",")),
            "",
        )
        .await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("--max-batch-ids"), "{detail}");
    let (status, body) = server
        .call(
            Method::GET,
            &format!(
                "/api/v1.0/collections/?foreign_ids={}",
                ids[..1000].join(",")
            ),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&strip_duration(&body)).unwrap()["response"]["data"]
            .as_array()
            .unwrap()
            .len(),
        600,
        "the repeated upsert wrote collection a's 600"
    );
    // A select answer large enough to be charged to the memory budget comes whole, and its
    // charge is given back once it is read.
    let text_of_8k = "y".repeat(8_000);
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("e{i}"), "t": text_of_8k}))
        .collect();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/",
            json!({"data": {"eights": items}}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ids: Vec<String> = (0..10).map(|i| format!("eights:e{i}")).collect();
    let (status, body) = server
        .call(
            Method::GET,
            &format!("/api/v1.0/collections/?foreign_ids={}", ids.join(",")),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() > 80_000, "{}", body.len());
    let selected: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    assert_eq!(selected["response"]["data"].as_array().unwrap().len(), 10);
    assert_eq!(selected["response"]["data"][9]["data"]["t"], text_of_8k);
    let metrics = server.metrics().await;
    assert!(
        metrics.lines().any(|l| l == "enrich_in_flight_bytes 0"),
        "{metrics}"
    );

    let ids: Vec<String> = (0..1001).map(|i| format!("i{i}")).collect();
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!(
                "/api/v1.0/collections/?collection_name=a&ids={}",
                ids.join(",")
            ),
            "",
        )
        .await;
    assert_error(status, &body, 400, 4, "InputException");

    // An entry over 51,200 bytes (as {"id":…,"data":…}): 400, on add, update and upsert.
    let big = "x".repeat(51_200);
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            json!({"id": "big", "data": {"a": big}}).to_string(),
        )
        .await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("51200"), "{detail}");
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1.0/collections/a/i1/",
            json!({"data": {"a": big}}).to_string(),
        )
        .await;
    assert_error(status, &body, 400, 4, "InputException");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/",
            json!({"data": {"a": [{"id": "i1", "a": big}]}}).to_string(),
        )
        .await;
    assert_error(status, &body, 400, 4, "InputException");
    let fits = "x".repeat(51_200 - r#"{"id":"max","data":{"a":""}}"#.len());
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            json!({"id": "max", "data": {"a": fits}}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A body over the server's limit: 413.
    let huge = json!({"data": {"a": [{"id": "h", "a": "x".repeat(1 << 20)}]}}).to_string();
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/collections/", huge)
        .await;
    assert_error(status, &body, 413, 18, "RequestEntityTooLargeException");
}

async fn who_may_call_what(server: &Server) {
    let alice = user_token("alice");
    let bob = user_token("bob");
    let entry = |id: &str| format!("/api/v1.0/collections/food/{id}/");

    // Every client's server token may do everything; Java's only its action.
    let mut tokens: Vec<(String, &str)> = [
        json!({"resource": "collections", "action": "*", "feed_id": "*", "user_id": "*"}), // Python, Ruby, PHP
        json!({"resource": "collections", "action": "*", "feed_id": "*"}), // Go, JS batch
        json!({"resource": "*", "action": "*", "feed_id": "*"}),           // JS, .NET
    ]
    .iter()
    .map(|c| (sign(c, SECRET), "*"))
    .collect();
    for action in ["read", "write", "delete"] {
        tokens.push((
            sign(
                &json!({"resource": "collections", "action": action, "feed_id": "*"}),
                SECRET,
            ),
            action,
        ));
    }
    for (n, (token, action)) in tokens.iter().enumerate() {
        let id = format!("t{n}");
        let may = |what: &str| *action == "*" || *action == what;
        // Each call is made with the full token first where this one may not set it up.
        let calls: [(Method, String, String, &str, StatusCode); 7] = [
            (
                Method::POST,
                "/api/v1.0/collections/food/".into(),
                format!(r#"{{"id":"{id}","data":{{"a":1}}}}"#),
                "write",
                StatusCode::CREATED,
            ),
            (
                Method::GET,
                entry(&id),
                String::new(),
                "read",
                StatusCode::OK,
            ),
            (
                Method::PUT,
                entry(&id),
                r#"{"data":{"a":2}}"#.into(),
                "write",
                StatusCode::CREATED,
            ),
            (
                Method::POST,
                "/api/v1.0/collections/".into(),
                format!(r#"{{"data":{{"food":[{{"id":"{id}","a":3}}]}}}}"#),
                "write",
                StatusCode::CREATED,
            ),
            (
                Method::GET,
                format!("/api/v1.0/collections/?foreign_ids=food:{id}"),
                String::new(),
                "read",
                StatusCode::OK,
            ),
            (
                Method::DELETE,
                entry(&id),
                String::new(),
                "delete",
                StatusCode::OK,
            ),
            (
                Method::DELETE,
                format!("/api/v1.0/collections/?collection_name=food&ids={id}"),
                String::new(),
                "delete",
                StatusCode::OK,
            ),
        ];
        for (method, path, body, needs, ok) in calls {
            // Set up with the full token: the entry absent for an add, present otherwise.
            let adding = method == Method::POST && path.ends_with("/food/");
            let setup = if adding {
                (
                    Method::DELETE,
                    format!("/api/v1.0/collections/?collection_name=food&ids={id}"),
                    String::new(),
                )
            } else {
                (
                    Method::POST,
                    "/api/v1.0/collections/".to_string(),
                    format!(r#"{{"data":{{"food":[{{"id":"{id}","a":0}}]}}}}"#),
                )
            };
            let (status, answer) = server.call(setup.0, &setup.1, setup.2).await;
            assert!(status.is_success(), "{answer}");
            let (status, answer) = server.call_as(token, method.clone(), &path, body).await;
            if may(needs) {
                assert_eq!(status, ok, "{action} {method} {path}: {answer}");
            } else {
                let detail = assert_error(status, &answer, 403, 17, "NotAllowedException");
                assert!(detail.contains(&format!("action {needs}")), "{detail}");
            }
        }
    }

    // Tokens for other resources: 403 on collections; a collections token may not use users.
    let users_token = sign(
        &json!({"resource": "users", "action": "*", "feed_id": "*"}),
        SECRET,
    );
    let feed_token = sign(&json!({"resource": "feed", "action": "*"}), SECRET);
    for token in [&users_token, &feed_token] {
        let (status, body) = server.call_as(token, Method::GET, &entry("t0"), "").await;
        assert_error(status, &body, 403, 17, "NotAllowedException");
    }
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/user/",
            r#"{"id":"alice","data":{}}"#,
        )
        .await;
    assert_error(status, &body, 403, 17, "NotAllowedException");

    // A user token adds as its owner (a user_id in the body does not change that), reads any
    // entry, changes only its own.
    let (status, body) = server
        .call_as(
            &alice,
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"pie","data":{"a":1},"user_id":"bob"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        !body.contains("user_id") && !body.contains("alice"),
        "{body}"
    );
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"server","data":{"a":1}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"bobs","data":{"a":1},"user_id":"bob"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for id in ["pie", "server", "bobs"] {
        let (status, _) = server.call_as(&alice, Method::GET, &entry(id), "").await;
        assert_eq!(status, StatusCode::OK, "{id}");
    }
    for id in ["server", "bobs"] {
        let (status, body) = server
            .call_as(&alice, Method::PUT, &entry(id), r#"{"data":{"a":2}}"#)
            .await;
        let detail = assert_error(status, &body, 403, 17, "NotAllowedException");
        assert!(detail.contains("alice"), "{detail}");
        let (status, body) = server.call_as(&alice, Method::DELETE, &entry(id), "").await;
        assert_error(status, &body, 403, 17, "NotAllowedException");
    }
    // bob owns what a server token added for him; alice owns pie.
    let (status, body) = server
        .call_as(&bob, Method::PUT, &entry("bobs"), r#"{"data":{"a":2}}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .call_as(&bob, Method::PUT, &entry("pie"), r#"{"data":{"a":2}}"#)
        .await;
    assert_error(status, &body, 403, 17, "NotAllowedException");
    let (status, body) = server
        .call_as(&alice, Method::PUT, &entry("pie"), r#"{"data":{"b":2}}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The owner survives an update and an upsert by a server token.
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"food":[{"id":"pie","c":3}]}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server
        .call(Method::PUT, &entry("pie"), r#"{"data":{"d":4}}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server
        .call_as(&alice, Method::DELETE, &entry("pie"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An absent entry is 404 to a user token too.
    let (status, body) = server
        .call_as(&alice, Method::DELETE, &entry("pie"), "")
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");
    let (status, body) = server
        .call_as(&alice, Method::PUT, &entry("pie"), r#"{"data":{"a":1}}"#)
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");

    // The batch endpoints are server-side only.
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"food":[{"id":"x","a":1}]}}"#,
        ),
        (
            Method::POST,
            "/api/v1.0/meta/",
            r#"{"data":{"food":[{"id":"x","a":1}]}}"#,
        ),
        (
            Method::GET,
            "/api/v1.0/collections/?foreign_ids=food:server",
            "",
        ),
        (Method::GET, "/api/v1.0/meta/?foreign_ids=food:server", ""),
        (
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=food&ids=server",
            "",
        ),
    ] {
        let (status, answer) = server.call_as(&alice, method.clone(), path, body).await;
        let detail = assert_error(status, &answer, 403, 17, "NotAllowedException");
        assert!(detail.contains("server token"), "{method} {path}: {detail}");
    }
    let (status, _) = server.call(Method::GET, &entry("server"), "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refused delete many deleted nothing"
    );
}

async fn metrics_name_the_route_templates(server: &Server) {
    for i in 0..3 {
        server
            .call(
                Method::POST,
                "/api/v1.0/collections/food/",
                format!(r#"{{"id":"e{i}","data":{{"a":1}}}}"#),
            )
            .await;
        server
            .call(Method::GET, &format!("/api/v1.0/collections/food/e{i}"), "")
            .await;
    }
    server
        .call(
            Method::GET,
            "/api/v1.0/collections/?foreign_ids=food:e0",
            "",
        )
        .await;
    server
        .call(Method::GET, "/api/v1.0/meta/?foreign_ids=food:e0", "")
        .await;
    // Deleting one entry that exists and two that do not counts one.
    let (status, _) = server
        .call(
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=food&ids=e2,gone,never",
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let metrics = server.metrics().await;
    for line in [
        r#"enrich_http_requests_total{route="/api/v1.0/collections/{collection}",method="POST",status="201"} 3"#,
        r#"enrich_http_requests_total{route="/api/v1.0/collections/{collection}/{id}",method="GET",status="200"} 3"#,
        r#"enrich_http_requests_total{route="/api/v1.0/collections",method="GET",status="200"} 1"#,
        r#"enrich_http_requests_total{route="/api/v1.0/meta",method="GET",status="200"} 1"#,
        "enrich_entries_written_total 4",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(!metrics.contains("e1"), "{metrics}");
}

async fn writes_through_the_api_reach_the_next_enrichment(server: &Server) {
    let all = sign(
        &json!({"resource": "*", "action": "*", "feed_id": "*"}),
        SECRET,
    );
    let doc = r#"{"actor":"SU:nobody","object":"SO:food:burger","verb":"eat"}"#;
    let enriched = |answer: &str| -> Value {
        let value: Value = serde_json::from_str(answer).unwrap();
        value["object"].clone()
    };
    let missing = json!({"collection": "food", "id": "burger", "error": "ReferenceNotFound",
        "reference": "SO:food:burger", "reference_type": "object"});
    let (status, body) = server
        .call_as(&all, Method::POST, "/api/v1.0/enrich/", doc)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(enriched(&body), missing, "{body}");

    // Added: the entry as a get answers it, minus duration (the L1's miss was forgotten).
    let (_, added) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"burger","data":{"v":1}}"#,
        )
        .await;
    let (_, body) = server
        .call_as(&all, Method::POST, "/api/v1.0/enrich/", doc)
        .await;
    assert!(body.contains(&strip_duration(&added)), "{body}");
    // Updated, upserted, deleted: each shows in the next enrichment.
    let (_, updated) = server
        .call(
            Method::PUT,
            "/api/v1.0/collections/food/burger/",
            r#"{"data":{"v":2}}"#,
        )
        .await;
    let (_, body) = server
        .call_as(&all, Method::POST, "/api/v1.0/enrich/", doc)
        .await;
    assert!(body.contains(&strip_duration(&updated)), "{body}");
    server
        .call(
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"food":[{"id":"burger","v":3}]}}"#,
        )
        .await;
    let (_, body) = server
        .call_as(&all, Method::POST, "/api/v1.0/enrich/", doc)
        .await;
    assert_eq!(
        enriched(&body)["data"],
        json!({"id": "burger", "v": 3}),
        "{body}"
    );
    server
        .call(
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=food&ids=burger",
            "",
        )
        .await;
    let (_, body) = server
        .call_as(&all, Method::POST, "/api/v1.0/enrich/", doc)
        .await;
    assert_eq!(enriched(&body), missing, "{body}");
}

/// A user token's update or delete is one store call that checks the owner as it writes (a
/// check read first could find an entry that another user creates again before the write
/// lands): the stored entry is never read for it, and a refusal is the token's 403.
async fn user_writes_check_the_owner_as_they_write(server: &Server) {
    let alice = user_token("alice");
    let entry = |id: &str| format!("/api/v1.0/collections/food/{id}/");
    for (id, owner) in [("pie", "alice"), ("bobs", "bob")] {
        let body = format!(r#"{{"id":"{id}","data":{{"a":1}},"user_id":"{owner}"}}"#);
        let (status, _) = server
            .call(Method::POST, "/api/v1.0/collections/food/", body)
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let refusal =
        r#"a token of user "alice" may not change entry "food:bobs", which it does not own"#;
    let (status, body) = server
        .call_as(&alice, Method::PUT, &entry("bobs"), r#"{"data":{"a":2}}"#)
        .await;
    let detail = assert_error(status, &body, 403, 17, "NotAllowedException");
    assert_eq!(detail, refusal);
    let (status, body) = server
        .call_as(&alice, Method::DELETE, &entry("bobs"), "")
        .await;
    let detail = assert_error(status, &body, 403, 17, "NotAllowedException");
    assert_eq!(detail, refusal);
    let (status, body) = server
        .call_as(&alice, Method::PUT, &entry("pie"), r#"{"data":{"a":2}}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .call_as(&alice, Method::DELETE, &entry("pie"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .call_as(&alice, Method::PUT, &entry("pie"), r#"{"data":{"a":3}}"#)
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");
    // bob's entry is as it was.
    let (status, body) = server.call(Method::GET, &entry("bobs"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#""data":{"a":1}"#), "{body}");
    // A token whose user is no valid user id owns nothing: 404 or 403, nothing written.
    let invalid = user_token("no spaces");
    let (status, body) = server
        .call_as(&invalid, Method::PUT, &entry("bobs"), r#"{"data":{"a":4}}"#)
        .await;
    assert_error(status, &body, 403, 17, "NotAllowedException");
    let (status, body) = server
        .call_as(&invalid, Method::DELETE, &entry("pie"), "")
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");
    let metrics = server.metrics().await;
    for line in [
        r#"enrich_store_call_duration_seconds_count{op="update_owned_entry"} 3"#,
        r#"enrich_store_call_duration_seconds_count{op="delete_owned_entry"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    // Read only for the token of no valid user id, which writes nothing; a refusal is not a
    // store error.
    assert!(
        metrics.contains(r#"enrich_store_call_duration_seconds_count{op="get_entry"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains("not_owner"), "{metrics}");
}

/// Each named test body, once over every backend: `memory:`, a file store and a real
/// `redis-server` of the test's own, so the API answers the same whatever stores the entries.
macro_rules! over_every_store {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            use super::*;

            #[tokio::test]
            async fn memory() {
                let server = start("memory:").await;
                super::$body(&server).await;
                server.stop().await;
            }

            #[tokio::test]
            async fn file() {
                let (_dir, path) = support::temp_db();
                let server = start(&format!("file:{}", path.display())).await;
                super::$body(&server).await;
                server.stop().await;
            }

            #[tokio::test]
            async fn redis() {
                let redis = support::RedisServer::start();
                let server = start(&redis.url()).await;
                super::$body(&server).await;
                server.stop().await;
            }
        }
    )*};
}

over_every_store!(
    single_entries_add_get_update_delete,
    bad_input_is_400_naming_the_problem,
    upsert_select_and_delete_many,
    limits_are_named,
    who_may_call_what,
    metrics_name_the_route_templates,
    writes_through_the_api_reach_the_next_enrichment,
    user_writes_check_the_owner_as_they_write,
);

/// The largest answer [`answers_over_the_response_limit_are_refused`] allows.
const MAX_RESPONSE: usize = 20_000;

/// Selects and upserts whose answer would be over `--max-response-bytes` are refused before
/// it is built, naming the flag; an upsert refused so writes nothing.
async fn answers_over_the_response_limit_are_refused(server: &Server) {
    let refused = |status, body: &str| {
        let detail = assert_error(status, body, 400, 4, "InputException");
        assert!(detail.contains("--max-response-bytes"), "{detail}");
        detail
    };
    // Three entries of about 8 kB: two fit in 20,000 bytes, three do not.
    let data = json!({"text": "x".repeat(8_000)});
    for id in ["a", "b", "c"] {
        let (status, body) = server
            .call(
                Method::POST,
                "/api/v1.0/collections/big/",
                json!({"id": id, "data": data}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for route in ["collections", "meta"] {
        let (status, body) = server
            .call(
                Method::GET,
                &format!("/api/v1.0/{route}/?foreign_ids=big:a,big:b,big:c"),
                "",
            )
            .await;
        let detail = refused(status, &body);
        assert!(detail.contains(&MAX_RESPONSE.to_string()), "{detail}");
        let (status, body) = server
            .call(
                Method::GET,
                &format!("/api/v1.0/{route}/?foreign_ids=big:a,big:b,big:zz"),
                "",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.len() < MAX_RESPONSE + 30, "{}", body.len());
    }

    // An upsert whose echo would be over the limit writes nothing, even when the body is well
    // under it: `{}` items come back with a generated id of 36 characters.
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("u{i}"), "text": "x".repeat(8_000)}))
        .collect();
    let generated: Vec<Value> = (0..500).map(|_| json!({})).collect();
    for body in [
        json!({"data": {"big": items}}).to_string(),
        json!({"data": {"small": generated}}).to_string(),
    ] {
        assert!(body.len() < 30_000);
        let (status, answer) = server
            .call(Method::POST, "/api/v1.0/collections/", body)
            .await;
        refused(status, &answer);
    }
    let (status, body) = server
        .call(Method::GET, "/api/v1.0/collections/?foreign_ids=big:u0", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""data":[]"#), "{body}");
    // Two of them fit.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/",
            json!({"data": {"big": items[..2]}}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let metrics = server.metrics().await;
    let line = r#"enrich_limit_refusals_total{limit="max_response_bytes"} 4"#;
    assert!(
        metrics.lines().any(|l| l == line),
        "no {line} in\n{metrics}"
    );
}

mod response_limit {
    use super::*;

    fn limits() -> enrich::serve::Limits {
        enrich::serve::Limits::new().max_response_bytes(MAX_RESPONSE)
    }

    async fn start(url: &str) -> Server {
        Server::start_limited(url, limits()).await.signed(
            &json!({"resource": "collections", "action": "*", "feed_id": "*", "user_id": "*"}),
        )
    }

    #[tokio::test]
    async fn memory() {
        let server = start("memory:").await;
        answers_over_the_response_limit_are_refused(&server).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn redis() {
        let redis = support::RedisServer::start();
        let server = start(&redis.url()).await;
        answers_over_the_response_limit_are_refused(&server).await;
        server.stop().await;
    }
}

/// What a body costs once parsed (a node of some 70 bytes for each JSON value) is charged to
/// the memory budget before it is parsed: 120 kB of small values would take 8 MB.
#[tokio::test]
async fn parsed_bodies_are_charged_to_the_memory_budget() {
    use std::io::Write;
    let limits = enrich::serve::Limits::new().max_in_flight_bytes(1_200_000);
    let server = Server::start_limited("memory:", limits)
        .await
        .signed(&json!({"resource": "collections", "action": "*", "feed_id": "*"}));
    // 1,000 items of 50 numbers: 130 kB of body, 51,000 values.
    let items: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("i{i}"), "v": vec![0; 50]}))
        .collect();
    let body = json!({"data": {"many": items}}).to_string();
    assert!(body.len() < 150_000, "{}", body.len());

    // A client that declares a body of 1 MiB and sends 10 bytes of it holds 1 MiB of the
    // budget until it goes away.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "POST /api/v1.0/collections/?api_key={} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         stream-auth-type: jwt\r\nContent-Length: 1048576\r\n\r\n{{\"data\":{{",
        support::serve::KEY,
        server.token
    )
    .unwrap();
    let held = "enrich_in_flight_bytes 1048576";
    for _ in 0..100 {
        if server.metrics().await.lines().any(|l| l == held) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.metrics().await.lines().any(|l| l == held));

    // The body itself fits in what is left, its parsed values do not: 503 after the wait.
    let (status, answer) = server
        .call(Method::POST, "/api/v1.0/collections/", body.clone())
        .await;
    let detail = assert_error(status, &answer, 503, 1, "ServiceUnavailableException");
    assert!(detail.contains("--max-in-flight-bytes"), "{detail}");
    let (status, _) = server
        .call(Method::GET, "/api/v1.0/collections/many/i0/", "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Once the budget is free, the same upsert is made.
    drop(slow);
    for _ in 0..100 {
        if server
            .metrics()
            .await
            .lines()
            .any(|l| l == "enrich_in_flight_bytes 0")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = server
        .call(Method::POST, "/api/v1.0/collections/", body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn store_faults_are_503_never_missing_entries() {
    let mut redis = support::RedisServer::start();
    let server = start(&redis.url()).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"burger","data":{"a":1}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // With the store gone, a write made at once may already be on its way: its outcome is
    // unknown (504) or it is refused (503), and the answer names what to read.
    redis.stop();
    let (status, answer) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"pizza","data":{"a":1}}"#,
        )
        .await;
    if status == StatusCode::GATEWAY_TIMEOUT {
        let detail = assert_error(status, &answer, 504, 1, "WriteOutcomeUnknownException");
        assert!(detail.contains("entry"), "an entry write: {detail}");
    } else {
        assert_error(status, &answer, 503, 1, "ServiceUnavailableException");
    }

    // Past the idle second, the connection is checked before a write: every call is 503, and
    // none answers as if the entry were absent (404, an empty select, a delete many that
    // skipped it) or as if a write were kept.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"pizza","data":{"a":1}}"#,
        ),
        (Method::GET, "/api/v1.0/collections/food/burger/", ""),
        (
            Method::PUT,
            "/api/v1.0/collections/food/burger/",
            r#"{"data":{"a":2}}"#,
        ),
        (Method::DELETE, "/api/v1.0/collections/food/burger/", ""),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"food":[{"id":"burger","a":3}]}}"#,
        ),
        (
            Method::GET,
            "/api/v1.0/collections/?foreign_ids=food:burger",
            "",
        ),
        (Method::GET, "/api/v1.0/meta/?foreign_ids=food:burger", ""),
        (
            Method::DELETE,
            "/api/v1.0/collections/?collection_name=food&ids=burger",
            "",
        ),
    ] {
        let (status, answer) = text(
            server
                .api(method.clone(), path)
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &answer, 503, 1, "ServiceUnavailableException");
    }
    // A user token's change of an entry needs its owner first: a fault, not a refusal.
    let (status, answer) = server
        .call_as(
            &user_token("alice"),
            Method::DELETE,
            "/api/v1.0/collections/food/burger/",
            "",
        )
        .await;
    assert_error(status, &answer, 503, 1, "ServiceUnavailableException");
    server.stop().await;
}

#[tokio::test]
async fn store_refusals_of_entry_writes_are_answered_as_what_they_are() {
    let redis = support::RedisServer::start();
    let reader = redis.read_only_user("reader", "readerpw");
    let server = start(&reader).await;
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1.0/collections/food/",
            r#"{"id":"w","data":{"a":1}}"#,
        ),
        (
            Method::POST,
            "/api/v1.0/collections/",
            r#"{"data":{"food":[{"id":"w","a":1}]}}"#,
        ),
    ] {
        let (status, answer) = server.call(method, path, body).await;
        let detail = assert_error(status, &answer, 502, 1, "StorePermissionException");
        assert!(!detail.contains("readerpw"), "{detail}");
    }
    let (status, _) = server
        .call(Method::GET, "/api/v1.0/collections/food/w/", "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;

    // A store out of memory refuses entry writes; reads go on.
    let server = start(&redis.url()).await;
    redis.cap_memory("2mb");
    let big = "x".repeat(40_000);
    let mut full = None;
    for i in 0..100 {
        let body = format!(r#"{{"id":"big{i}","data":{{"a":"{big}"}}}}"#);
        let (status, answer) = server
            .call(Method::POST, "/api/v1.0/collections/food/", body)
            .await;
        if status != StatusCode::CREATED {
            full = Some((status, answer));
            break;
        }
    }
    let (status, answer) = full.expect("2 MB never filled");
    assert_error(status, &answer, 507, 1, "StoreFullException");
    let (status, answer) = server
        .call(
            Method::POST,
            "/api/v1.0/collections/",
            json!({"data": {"food": [{"id": "more", "a": big}]}}).to_string(),
        )
        .await;
    assert_error(status, &answer, 507, 1, "StoreFullException");
    let (status, _) = server
        .call(Method::GET, "/api/v1.0/collections/food/big0/", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// The value of the counter `name` in a metrics page.
fn counter(metrics: &str, name: &str) -> u64 {
    let line = (metrics.lines())
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A request whose distinct references are to large entries, or a select of them, is refused
/// once those read are more than an answer may hold, without the store being asked for the
/// rest: 100 entries of 20 kB behind a limit of 200 kB are about a dozen read, not 2 MB.
#[tokio::test]
async fn enrich_and_select_read_no_more_than_the_response_limit_of_large_entries() {
    const LIMIT: usize = 200_000;
    const ENTRY: usize = 20_000;
    const ENTRIES: usize = 100;
    let redis = support::RedisServer::start();
    let limits = enrich::serve::Limits::new().max_response_bytes(LIMIT);
    let server = Server::start_limited(&redis.url(), limits)
        .await
        .signed(&json!({"resource": "*", "action": "*", "feed_id": "*", "user_id": "*"}));
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(5) {
        let items: Vec<Value> = (chunk.iter())
            .map(|i| json!({"id": format!("e{i}"), "v": "x".repeat(ENTRY)}))
            .collect();
        let (status, body) = server
            .call(
                Method::POST,
                "/api/v1.0/collections/",
                json!({"data": {"big": items}}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    let activities: Vec<Value> = (0..ENTRIES)
        .map(|i| json!({"actor": "SU:nobody", "verb": "post", "object": format!("SO:big:e{i}")}))
        .collect();
    redis.reset_stats();
    let before = counter(&server.metrics().await, "enrich_store_fetched_users_total");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/enrich/",
            json!(activities).to_string(),
        )
        .await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("--max-response-bytes"), "{detail}");
    let metrics = server.metrics().await;
    let fetched = counter(&metrics, "enrich_store_fetched_users_total") - before;
    // The entries read add up to the limit and one entry of the largest size at most (the
    // user and one entry over the limit: 200 kB + 52 kB is 12 entries of 20 kB and a user).
    assert!(fetched <= 14, "{fetched} ids read\n{metrics}");
    // And as Redis counts them: the keys it found, each an entry read.
    let found = keyspace_hits(&redis);
    assert!(found <= 13, "{found} entries read");
    let line = r#"enrich_limit_refusals_total{limit="max_response_bytes"} 1"#;
    assert!(
        metrics.lines().any(|l| l == line),
        "no {line} in\n{metrics}"
    );

    // What fits is answered, in one read of the store: 5 entries and a user.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/enrich/",
            json!(activities[..5]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer[4]["object"]["id"], "e4", "{body}");

    // A select of them all: the same bound on what is read before it is refused.
    let ids: Vec<String> = (0..ENTRIES).map(|i| format!("big:e{i}")).collect();
    let select = format!("/api/v1.0/collections/?foreign_ids={}", ids.join(","));
    redis.reset_stats();
    let (status, body) = server.call(Method::GET, &select, "").await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("would be at least"), "{detail}");
    assert!(detail.contains("--max-response-bytes"), "{detail}");
    let found = keyspace_hits(&redis);
    assert!(found <= 13, "{found} entries read for a select");
    // What fits is answered whole, in order.
    let select = format!("/api/v1.0/collections/?foreign_ids={}", ids[..5].join(","));
    let (status, body) = server.call(Method::GET, &select, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["data"][4]["id"], "e4", "{body}");
    server.stop().await;
}

/// How many keys Redis found since its statistics were last reset.
fn keyspace_hits(redis: &support::RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut redis.connection())
        .unwrap();
    (info.lines())
        .find_map(|l| l.strip_prefix("keyspace_hits:"))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no keyspace_hits in\n{info}"))
}
