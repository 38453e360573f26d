//! `enrich serve` driven over real HTTP, on port 0, over every backend: Stream's bodies, status
//! codes, errors and auth, the enrich endpoint, limits, health and metrics.

mod support;

use std::time::Duration;

use enrich::serve::ServeConfig;
use enrich::{StoreOptions, store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::RedisServer;
use support::serve::{KEY, SECRET, Server, assert_error, now, sign, strip_duration, text};

/// The default limit on request bodies.
const MAX_BODY: usize = 1 << 20;

async fn users_api(server: &Server) {
    // Create: 201, the user with duration last, Stream's key order.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/user/",
            r#"{"id":"alice","data":{"name":"Alice","n":1}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created = strip_duration(&body);
    assert!(created.starts_with(r#"{"created_at":""#), "{created}");
    assert!(
        created.ends_with(r#"Z","id":"alice","data":{"name":"Alice","n":1}}"#),
        "{created}"
    );

    // Read, with and without the trailing slash: the same bytes.
    for path in ["/api/v1.0/user/alice/", "/api/v1.0/user/alice"] {
        let (status, body) = text(server.api(Method::GET, path).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(strip_duration(&body), created);
    }

    // A second create conflicts.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/user",
            r#"{"id":"alice","data":{}}"#,
        )
        .await;
    assert_error(status, &body, 409, 22, "ConflictException");

    // get_or_create in every spelling returns the stored user untouched.
    for flag in ["true", "True", "TRUE", "1"] {
        let (status, body) = text(
            server
                .api(
                    Method::POST,
                    &format!("/api/v1.0/user/?get_or_create={flag}"),
                )
                .body(r#"{"id":"alice","data":{"name":"Other"}}"#)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{flag}: {body}");
        assert_eq!(strip_duration(&body), created, "{flag}");
    }
    for flag in ["False", "0", "false"] {
        let (status, body) = text(
            server
                .api(
                    Method::POST,
                    &format!("/api/v1.0/user/?get_or_create={flag}"),
                )
                .body(r#"{"id":"alice"}"#)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &body, 409, 22, "ConflictException");
    }
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/user/?get_or_create=maybe",
            r#"{"id":"alice"}"#,
        )
        .await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("maybe"), "{detail}");

    // Update replaces data, keeps created_at, 201.
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1.0/user/alice/",
            r#"{"data":{"name":"Alicia"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let updated: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    let original: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(updated["created_at"], original["created_at"]);
    assert_eq!(updated["data"], json!({"name": "Alicia"}));

    // Bad input: invalid id, data not an object, body not JSON, missing id.
    let cases = [
        (r#"{"id":"bad id","data":{}}"#, "bad id"),
        (r#"{"id":"bob","data":[1]}"#, "an array"),
        (r#"{"id":"bob","data":{"#, "not valid JSON"),
        (r#"{"data":{}}"#, "no id field"),
        (r#"[1]"#, "an array"),
        // PHP's empty map is an empty object, so it has no id.
        (r#"[]"#, "no id field"),
    ];
    for (request, named) in cases {
        let (status, body) = server.call(Method::POST, "/api/v1.0/user/", request).await;
        let detail = assert_error(status, &body, 400, 4, "InputException");
        assert!(detail.contains(named), "{request}: {detail}");
    }

    // Batch: create many (skip existing unless override), get many, delete many.
    let (status, body) = server.call(Method::POST, "/api/v1.0/users/", r#"{"users":[{"id":"alice","data":{"x":1}},{"id":"bob","data":{"name":"Bob"}}],"override_existing":false}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let batch: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    let users = batch["created_users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "{body}");
    assert_eq!(
        users[0]["data"],
        json!({"name": "Alicia"}),
        "skipped, not overridden"
    );
    assert_eq!(users[1]["data"], json!({"name": "Bob"}));
    let (_, body) = server
        .call(
            Method::POST,
            "/api/v1.0/users",
            r#"{"users":[{"id":"alice","data":{"x":1}}],"override":true}"#,
        )
        .await;
    assert!(body.contains(r#""data":{"x":1}"#), "{body}");

    let (status, body) = text(
        server
            .api(Method::GET, "/api/v1.0/users/?ids=alice,nobody,bob")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    let ids: Vec<&str> = got["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    // No ids (JS's `getUsers([])` sends `ids=`; Python's `requests` drops an empty list) asks
    // for nothing.
    for path in ["/api/v1.0/users/", "/api/v1.0/users/?ids="] {
        let (status, body) = text(server.api(Method::GET, path).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["users"], json!([]), "{path}: {body}");
    }

    let (status, body) = text(
        server
            .api(Method::DELETE, "/api/v1.0/users/?ids=bob,nobody")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(strip_duration(&body), r#"{"deleted_user_ids":["bob"]}"#);

    // Delete: 200 {"duration":…}; then gone, 404 in Stream's format.
    let (status, body) = text(
        server
            .api(Method::DELETE, "/api/v1.0/user/alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(strip_duration(&body), "{}");
    for (method, path) in [
        (Method::GET, "/api/v1.0/user/alice/"),
        (Method::DELETE, "/api/v1.0/user/alice/"),
        (Method::GET, "/api/v1.0/user/bob/"),
    ] {
        let (status, body) = text(server.api(method, path).send().await.unwrap()).await;
        assert_error(status, &body, 404, 16, "DoesNotExistException");
    }
    let (status, body) = server
        .call(Method::PUT, "/api/v1.0/user/alice/", r#"{"data":{}}"#)
        .await;
    assert_error(status, &body, 404, 16, "DoesNotExistException");
}

#[tokio::test]
async fn users_api_over_memory() {
    let server = Server::start("memory:").await;
    users_api(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn users_api_over_file() {
    let (_dir, path) = support::temp_db();
    let server = Server::start(&format!("file:{}", path.display())).await;
    users_api(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn users_api_over_redis() {
    let redis = RedisServer::start();
    let server = Server::start(&redis.url()).await;
    users_api(&server).await;
    server.stop().await;
}

async fn enrich(server: &Server, query: &str, doc: &str) -> String {
    let (status, body) = text(
        server
            .api(Method::POST, &format!("/api/v1.0/enrich{query}"))
            .body(doc.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn enrich_endpoint_takes_every_shape() {
    let server = Server::start("memory:").await;
    let (_, created) = server
        .call(
            Method::POST,
            "/api/v1.0/user/",
            r#"{"id":"eric","data":{"name":"Eric"}}"#,
        )
        .await;
    let eric = strip_duration(&created);
    let missing =
        r#"{"error":"ReferenceNotFound","reference":"SU:bob","reference_type":"user","id":"bob"}"#;

    // No such entry: Stream's object `ReferenceNotFound`; `SO:post` is no reference.
    let post = r#"{"collection":"post","id":"1","error":"ReferenceNotFound","reference":"SO:post:1","reference_type":"object"}"#;
    let activity = r#"{"actor":"SU:eric","verb":"post","object":"SO:post:1","to":["SU:eric"],"target":"SO:post"}"#;
    let enriched = enrich(&server, "/", activity).await;
    assert_eq!(
        enriched,
        format!(
            r#"{{"actor":{eric},"verb":"post","object":{post},"to":["SU:eric"],"target":"SO:post"}}"#
        )
    );
    let deep = enrich(&server, "/?deep=true", activity).await;
    assert_eq!(
        deep,
        format!(
            r#"{{"actor":{eric},"verb":"post","object":{post},"to":[{eric}],"target":"SO:post"}}"#
        )
    );

    let group = r#"{"id":"g","verb":"like","activity_count":2,"activities":[{"actor":"SU:eric"},{"actor":"SU:bob"}]}"#;
    assert_eq!(
        enrich(&server, "", group).await,
        format!(
            r#"{{"id":"g","verb":"like","activity_count":2,"activities":[{{"actor":{eric}}},{{"actor":{missing}}}]}}"#
        )
    );

    let response = r#"{"results":[{"actor":"SU:eric"}],"next":"","duration":"3ms"}"#;
    assert_eq!(
        enrich(&server, "", response).await,
        format!(r#"{{"results":[{{"actor":{eric}}}],"next":"","duration":"3ms"}}"#)
    );

    let array = r#"[{"actor":"SU:eric"},{"actor":"su:eric","x":"SU:"}]"#;
    assert_eq!(
        enrich(&server, "", array).await,
        format!(r#"[{{"actor":{eric}}},{{"actor":"su:eric","x":"SU:"}}]"#)
    );

    // A write through the API is seen by the next enrichment at once (the L1 is invalidated).
    server
        .call(
            Method::PUT,
            "/api/v1.0/user/eric/",
            r#"{"data":{"name":"Erik"}}"#,
        )
        .await;
    assert!(
        enrich(&server, "", activity)
            .await
            .contains(r#""name":"Erik""#)
    );

    // Not an object or array, not JSON: 400 naming it.
    for (doc, named) in [
        ("42", "not an object or an array"),
        ("{\"a\":", ""),
        (" \n", "the request body is empty"),
    ] {
        let (status, body) = server.call(Method::POST, "/api/v1.0/enrich/", doc).await;
        let detail = assert_error(status, &body, 400, 4, "InputException");
        assert!(detail.contains(named), "{detail}");
    }
    server.stop().await;
}

#[tokio::test]
async fn auth_is_checked() {
    let server = Server::start("memory:").await;
    server
        .call(
            Method::POST,
            "/api/v1.0/user/",
            r#"{"id":"alice","data":{}}"#,
        )
        .await;
    let path = "/api/v1.0/user/alice/";

    // No token, a token signed with another secret, an expired one, garbage.
    let expired = sign(
        &json!({"resource": "*", "action": "*", "exp": now() - 60}),
        SECRET,
    );
    let forged = sign(&json!({"resource": "*", "action": "*"}), "not-the-secret");
    for (token, named) in [
        ("", "missing"),
        (forged.as_str(), "signature"),
        (expired.as_str(), "expired"),
        ("not.a.jwt", "malformed"),
    ] {
        let (status, body) = text(
            server
                .as_token(Method::GET, path, token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let detail = assert_error(status, &body, 401, 17, "NotAllowedException");
        assert!(detail.contains(named), "{detail}");
        assert!(!body.contains(SECRET), "{body}");
    }

    // A Bearer prefix is accepted, its scheme in any case; a live exp is fine.
    let live = sign(
        &json!({"resource": "*", "action": "*", "exp": now() + 600}),
        SECRET,
    );
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let resp = server
            .as_token(Method::GET, path, &format!("{scheme} {live}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
    }

    // Wrong or missing api_key.
    let resp = server
        .client
        .get(format!("{}{path}?api_key=wrong", server.base))
        .header("Authorization", &server.token)
        .send()
        .await
        .unwrap();
    let (status, body) = text(resp).await;
    assert_error(status, &body, 401, 2, "ApiKeyException");
    let resp = server
        .client
        .get(format!("{}{path}", server.base))
        .header("Authorization", &server.token)
        .send()
        .await
        .unwrap();
    let (status, body) = text(resp).await;
    assert_error(status, &body, 401, 2, "ApiKeyException");

    // A user token reads anyone, enriches, writes itself, and nobody else.
    let bob = sign(&json!({"user_id": "bob"}), SECRET);
    let (status, _) = text(
        server
            .as_token(Method::GET, path, &bob)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = text(
        server
            .as_token(Method::POST, "/api/v1.0/enrich/", &bob)
            .body(r#"{"actor":"SU:alice"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = text(
        server
            .as_token(Method::POST, "/api/v1.0/user/", &bob)
            .body(r#"{"id":"bob","data":{}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    for (method, target, body) in [
        (Method::PUT, path, r#"{"data":{"hacked":true}}"#),
        (Method::DELETE, path, ""),
        (
            Method::POST,
            "/api/v1.0/user/",
            r#"{"id":"alice","data":{}}"#,
        ),
        (Method::DELETE, "/api/v1.0/users/?ids=alice", ""),
    ] {
        let (status, body) = text(
            server
                .as_token(method, target, &bob)
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &body, 403, 17, "NotAllowedException");
    }
    // A token for another resource may not use the users API.
    let feed = sign(&json!({"resource": "feed", "action": "*"}), SECRET);
    let (status, body) = text(
        server
            .as_token(Method::GET, path, &feed)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 403, 17, "NotAllowedException");
    // Alice is untouched.
    let (_, body) = text(server.api(Method::GET, path).send().await.unwrap()).await;
    assert!(body.contains(r#""data":{}"#), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn limits_and_unknown_routes() {
    let server = Server::start("memory:").await;
    // Over 1 MiB: 413 in Stream's format.
    let big = format!(r#"{{"actor":"{}"}}"#, "x".repeat(MAX_BODY));
    let (status, body) = server.call(Method::POST, "/api/v1.0/enrich/", big).await;
    assert_error(status, &body, 413, 18, "RequestEntityTooLargeException");
    // Just under the limit is fine.
    let fits = format!(r#"{{"actor":"{}"}}"#, "x".repeat(MAX_BODY - 20));
    let (status, _) = server.call(Method::POST, "/api/v1.0/enrich/", fits).await;
    assert_eq!(status, StatusCode::OK);

    // Unknown routes, with or without a token: 404 in Stream's format.
    for path in ["/api/v1.0/nothing/", "/", "/api/v2.0/user/alice/"] {
        let (status, body) = text(server.api(Method::GET, path).send().await.unwrap()).await;
        assert_error(status, &body, 404, 16, "DoesNotExistException");
    }
    let (status, body) = text(
        server
            .api(Method::PATCH, "/api/v1.0/user/a/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 405, 4, "MethodNotAllowedException");
    server.stop().await;
}

#[tokio::test]
async fn store_down_is_503_and_health_says_so() {
    let mut redis = RedisServer::start();
    let server = Server::start(&redis.url()).await;
    let health = format!("{}/healthz", server.base);
    let resp = server.client.get(&health).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"], redis.url());

    redis.stop();
    let (status, body) = text(
        server
            .api(Method::GET, "/api/v1.0/user/alice/")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 503, 1, "ServiceUnavailableException");
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/enrich/", r#"{"actor":"SU:alice"}"#)
        .await;
    assert_error(status, &body, 503, 1, "ServiceUnavailableException");
    let resp = server.client.get(&health).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_and_the_cache() {
    let server = Server::start("memory:").await;
    server
        .call(
            Method::POST,
            "/api/v1.0/user/",
            r#"{"id":"eric","data":{}}"#,
        )
        .await;
    for _ in 0..3 {
        enrich(&server, "/", r#"{"actor":"SU:eric","object":"SU:bob"}"#).await;
    }
    server
        .api(Method::GET, "/api/v1.0/user/nobody")
        .send()
        .await
        .unwrap();
    let text = server.metrics().await;
    for line in [
        r#"enrich_http_requests_total{route="/api/v1.0/enrich",method="POST",status="200"} 3"#,
        r#"enrich_http_requests_total{route="/api/v1.0/user/{id}",method="GET",status="404"} 1"#,
        r#"enrich_http_requests_total{route="/api/v1.0/user",method="POST",status="201"} 1"#,
        r#"enrich_http_request_duration_seconds_count{route="/api/v1.0/enrich"} 3"#,
        "enrich_l1_hits_total 4",
        "enrich_l1_misses_total 2",
        "enrich_store_calls_total 1",
        "enrich_l1_invalidations_total 1",
        "enrich_missing_references_total 3",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn per_action_tokens_and_not_before() {
    let server = Server::start("memory:").await;
    let token = |action: &str| sign(&json!({"resource": "users", "action": action}), SECRET);
    let (read, write, delete) = (token("read"), token("write"), token("delete"));
    let call = |method: Method, path: &'static str, token: String, body: &'static str| {
        let request = server.as_token(method, path, &token).body(body);
        async move { text(request.send().await.unwrap()).await }
    };
    // What Java signs for each call: write creates and updates, read gets, delete deletes.
    let (status, _) = call(
        Method::POST,
        "/api/v1.0/user/",
        write.clone(),
        r#"{"id":"jo","data":{}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(
        Method::PUT,
        "/api/v1.0/user/jo/",
        write.clone(),
        r#"{"data":{"v":2}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(Method::GET, "/api/v1.0/user/jo/", read.clone(), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#""v":2"#), "{body}");
    // Each only what it names.
    for (method, path, token, body) in [
        (Method::GET, "/api/v1.0/user/jo/", write.clone(), ""),
        (Method::DELETE, "/api/v1.0/user/jo/", write.clone(), ""),
        (Method::DELETE, "/api/v1.0/user/jo/", read.clone(), ""),
        (
            Method::PUT,
            "/api/v1.0/user/jo/",
            read.clone(),
            r#"{"data":{}}"#,
        ),
        (
            Method::PUT,
            "/api/v1.0/user/jo/",
            delete.clone(),
            r#"{"data":{}}"#,
        ),
        (
            Method::POST,
            "/api/v1.0/enrich/",
            write.clone(),
            r#"{"actor":"SU:jo"}"#,
        ),
    ] {
        let (status, body) = call(method, path, token, body).await;
        assert_error(status, &body, 403, 17, "NotAllowedException");
    }
    let (status, _) = call(Method::POST, "/api/v1.0/enrich/", read, r#"{"a":"SU:jo"}"#).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(Method::DELETE, "/api/v1.0/user/jo/", delete, "").await;
    assert_eq!(status, StatusCode::OK);

    // A token that is valid only from an hour on may do nothing yet; one valid since a
    // minute ago may.
    let later = sign(
        &json!({"resource": "*", "action": "*", "nbf": now() + 3600}),
        SECRET,
    );
    let (status, body) = call(Method::PUT, "/api/v1.0/user/jo/", later, r#"{"data":{}}"#).await;
    let detail = assert_error(status, &body, 401, 17, "NotAllowedException");
    assert!(detail.contains("nbf"), "{detail}");
    let since = sign(
        &json!({"resource": "*", "action": "*", "nbf": now() - 60}),
        SECRET,
    );
    let (status, _) = call(
        Method::POST,
        "/api/v1.0/user/",
        since,
        r#"{"id":"jo","data":{}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
}

#[tokio::test]
async fn an_empty_php_array_is_empty_data() {
    let server = Server::start("memory:").await;
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/user/", r#"{"id":"php","data":[]}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        strip_duration(&body).ends_with(r#""id":"php","data":{}}"#),
        "{body}"
    );
    let (status, body) = server
        .call(Method::PUT, "/api/v1.0/user/php/", r#"{"data":[]}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/users/",
            r#"{"users":[{"id":"p2","data":[]}]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.contains(r#""id":"p2","data":{}}"#), "{body}");
    let (status, body) = server
        .call(Method::PUT, "/api/v1.0/user/php/", r#"{"data":[1]}"#)
        .await;
    assert_error(status, &body, 400, 4, "InputException");
    // PHP's update without data sends the whole body as [].
    let (status, body) = server.call(Method::PUT, "/api/v1.0/user/php/", "[]").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        strip_duration(&body).ends_with(r#""id":"php","data":{}}"#),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn numbers_in_user_data_come_back_as_they_were_sent() {
    let server = Server::start("memory:").await;
    let numbers = "[0.1,2.5,-943305.0469559873,443080.06468156516,-109225.61189039715,\
                   -941918.4248502641,1.5e-300,1.7976931348623157e308,5e-324,-0.0,\
                   9007199254740993,-9223372036854775808,18446744073709551615]";
    let body = format!(r#"{{"id":"n","data":{{"v":{numbers}}}}}"#);
    // Each double is the same double (exponent signs may be written differently), each
    // integer the same integer.
    let sent: Value = serde_json::from_str(numbers).unwrap();
    let (status, body) = server.call(Method::POST, "/api/v1.0/user/", body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    assert_eq!(created["data"]["v"], sent, "{body}");
    let (_, body) = text(
        server
            .api(Method::GET, "/api/v1.0/user/n/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let read: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    assert_eq!(read["data"]["v"], sent, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn requests_over_a_limit_are_refused_naming_it() {
    let limits = enrich::serve::Limits::new()
        .max_activities(3)
        .max_references(4)
        .max_response_bytes(2_000)
        .max_batch_ids(2);
    let store = store::open("memory:", &StoreOptions::new()).await.unwrap();
    let server = Server::start_with(store, ServeConfig::new(KEY, SECRET).limits(limits)).await;
    let user = format!(r#"{{"id":"u","data":{{"bio":"{}"}}}}"#, "x".repeat(600));
    let (status, _) = server.call(Method::POST, "/api/v1.0/user/", user).await;
    assert_eq!(status, StatusCode::CREATED);

    let group = r#"{"activities":[{"a":1},{"a":2},{"a":3},{"a":4}]}"#;
    let (status, body) = server.call(Method::POST, "/api/v1.0/enrich/", group).await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(
        detail.contains("4 activities") && detail.contains("--max-activities"),
        "{detail}"
    );

    let many = r#"{"a":"SU:u","b":"SU:u","c":"SU:u","d":"SU:u","e":"SU:x"}"#;
    let (status, body) = server.call(Method::POST, "/api/v1.0/enrich/", many).await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(
        detail.contains("5 references") && detail.contains("--max-references"),
        "{detail}"
    );

    // Four references fit the count, but four users of 700 bytes do not fit 2,000 bytes.
    let big = r#"{"a":"SU:u","b":"SU:u","c":"SU:u","d":"SU:u"}"#;
    let (status, body) = server.call(Method::POST, "/api/v1.0/enrich/", big).await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("--max-response-bytes"), "{detail}");
    let fits = r#"{"a":"SU:u","b":"SU:u"}"#;
    let (status, _) = server.call(Method::POST, "/api/v1.0/enrich/", fits).await;
    assert_eq!(status, StatusCode::OK);

    for (method, path, body) in [
        (Method::GET, "/api/v1.0/users/?ids=a,b,c", ""),
        (Method::DELETE, "/api/v1.0/users/?ids=a,b,c", ""),
        (
            Method::POST,
            "/api/v1.0/users/",
            r#"{"users":[{"id":"a"},{"id":"b"},{"id":"c"}]}"#,
        ),
    ] {
        let (status, body) = server.call(method.clone(), path, body).await;
        let detail = assert_error(status, &body, 400, 4, "InputException");
        assert!(detail.contains("--max-batch-ids"), "{method} {detail}");
    }
    // Repeated ids count once.
    let (status, _) = text(
        server
            .api(Method::GET, "/api/v1.0/users/?ids=u,u,u,u")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let metrics = server.metrics().await;
    for (limit, times) in [
        ("max_activities", 1),
        ("max_references", 1),
        ("max_response_bytes", 1),
        ("max_batch_ids", 3),
    ] {
        let line = format!(r#"enrich_limit_refusals_total{{limit="{limit}"}} {times}"#);
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    server.stop().await;
}

/// A users batch answers every user it names as stored: its size is held to
/// `--max-response-bytes`, a batch add's before anything is written (without override, each
/// user may come back as an existing one of the largest size).
#[tokio::test]
async fn users_batches_answer_within_the_response_limit() {
    let limits = enrich::serve::Limits::new().max_response_bytes(30_000);
    let store = store::open("memory:", &StoreOptions::new()).await.unwrap();
    let server = Server::start_with(store, ServeConfig::new(KEY, SECRET).limits(limits)).await;
    let three = r#"{"users":[{"id":"a"},{"id":"b"},{"id":"a"}]}"#;
    let (status, body) = server.call(Method::POST, "/api/v1.0/users/", three).await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("--max-response-bytes"), "{detail}");
    let (status, _) = server.call(Method::GET, "/api/v1.0/user/a/", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing written");
    // Overriding, the answer is the users as written.
    let three = r#"{"users":[{"id":"a"},{"id":"b"},{"id":"a"}],"override_existing":true}"#;
    let (status, body) = server.call(Method::POST, "/api/v1.0/users/", three).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Four users of 9 kB read back are over 30 kB.
    let big = |id: &str| {
        format!(
            r#"{{"id":"{id}","data":{{"bio":"{}"}}}}"#,
            "x".repeat(9_000)
        )
    };
    for id in ["w", "x", "y", "z"] {
        let (status, _) = server.call(Method::POST, "/api/v1.0/user/", big(id)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = server
        .call(Method::GET, "/api/v1.0/users/?ids=w,x,y,z", "")
        .await;
    let detail = assert_error(status, &body, 400, 4, "InputException");
    assert!(detail.contains("--max-response-bytes"), "{detail}");
    let (status, _) = server
        .call(Method::GET, "/api/v1.0/users/?ids=w,x,y", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn metric_labels_stay_bounded_whatever_clients_send() {
    let server = Server::start("memory:").await;
    for i in 0..50 {
        let method = Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
        server
            .client
            .request(method, format!("{}/api/v1.0/user/x{i}/", server.base))
            .send()
            .await
            .unwrap();
        server
            .api(Method::GET, &format!("/some/path/{i}"))
            .send()
            .await
            .unwrap();
    }
    let metrics = server.metrics().await;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("enrich_http_requests_total"))
        .collect();
    assert!(
        series
            .iter()
            .all(|l| !l.contains("FOO") && !l.contains("/some/path")),
        "{series:#?}"
    );
    assert!(
        series.contains(
            &r#"enrich_http_requests_total{route="/api/v1.0/user/{id}",method="other",status="405"} 50"#
        ),
        "{series:#?}"
    );
    assert!(
        series.contains(
            &r#"enrich_http_requests_total{route="unmatched",method="GET",status="404"} 50"#
        ),
        "{series:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn liveness_and_readiness() {
    let mut redis = RedisServer::start();
    let server = Server::start(&redis.url()).await;
    let get = |path: &str| server.client.get(format!("{}{path}", server.base)).send();
    let ready: Value = get("/readyz").await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["invalidations"], "up");
    redis.stop();
    let resp = get("/readyz").await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(get("/healthz").await.unwrap().status(), 503);
    // The process itself is fine.
    let resp = get("/livez").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Back: ready again once the store answers and its announcements are heard.
    redis.restart();
    let mut ready = false;
    for _ in 0..200 {
        if get("/readyz").await.unwrap().status() == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready);
    server.stop().await;
}

#[tokio::test]
async fn reads_answer_while_a_failover_pauses_writes() {
    let redis = RedisServer::start();
    let server = Server::start(&redis.url()).await;
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1.0/user/",
            r#"{"id":"p","data":{"v":1}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // What a failover does: the server holds every write for 3 s.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .exec(&mut redis.connection())
        .unwrap();
    let write = server
        .api(Method::PUT, "/api/v1.0/user/p/")
        .body(r#"{"data":{"v":2}}"#)
        .send();
    let write = tokio::spawn(async move { text(write.await.unwrap()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (method, path, body) in [
        (Method::GET, "/api/v1.0/user/p/", ""),
        (Method::GET, "/api/v1.0/users/?ids=p,q", ""),
        (Method::POST, "/api/v1.0/enrich/", r#"{"actor":"SU:p"}"#),
        (Method::GET, "/readyz", ""),
    ] {
        let started = std::time::Instant::now();
        let (status, body) = server.call(method.clone(), path, body).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{method} {path}: {body}");
        assert!(
            took < Duration::from_millis(500),
            "{method} {path} took {took:?} behind a paused write"
        );
    }
    assert!(!write.is_finished(), "the write was not held back");
    // Its answer never came within the store's 2 s: it may have been applied.
    let (status, body) = write.await.unwrap();
    let detail = assert_error(status, &body, 504, 1, "WriteOutcomeUnknownException");
    assert!(detail.contains("may have been applied"), "{detail}");
    server.stop().await;
}

#[tokio::test]
async fn store_refusals_are_answered_as_what_they_are() {
    let redis = RedisServer::start();
    let reader = redis.read_only_user("reader", "readerpw");
    let server = Server::start(&reader).await;
    let (status, body) = server
        .call(Method::POST, "/api/v1.0/user/", r#"{"id":"w","data":{}}"#)
        .await;
    let detail = assert_error(status, &body, 502, 1, "StorePermissionException");
    assert!(!detail.contains("readerpw"), "{detail}");
    let (status, _) = text(
        server
            .api(Method::GET, "/api/v1.0/user/w/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;

    // A store out of memory refuses writes; reads go on.
    let server = Server::start(&redis.url()).await;
    redis.cap_memory("2mb");
    let bio = "x".repeat(10_000);
    let mut full = None;
    for i in 0..400 {
        let body = format!(r#"{{"id":"big{i}","data":{{"bio":"{bio}"}}}}"#);
        let (status, body) = server.call(Method::POST, "/api/v1.0/user/", body).await;
        if status != StatusCode::CREATED {
            full = Some((status, body));
            break;
        }
    }
    let (status, body) = full.expect("2 MB never filled");
    assert_error(status, &body, 507, 1, "StoreFullException");
    let (status, _) = text(
        server
            .api(Method::GET, "/api/v1.0/user/big0/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// A token the server remembers still expires on time, its `exp` a whole number or not (PyJWT
/// signs `time.time() + 60`).
#[tokio::test]
async fn a_token_seen_before_still_expires_on_time() {
    let server = Server::start("memory:").await;
    let whole = sign(
        &json!({"resource": "*", "action": "*", "exp": now() + 2}),
        SECRET,
    );
    let fractional = sign(
        &json!({"resource": "*", "action": "*", "exp": now() as f64 + 2.5}),
        SECRET,
    );
    for short in [&whole, &fractional] {
        let get = || {
            let request = server.as_token(Method::GET, "/api/v1.0/user/nobody/", short);
            async move { text(request.send().await.unwrap()).await }
        };
        // Verified once, then answered from what the server remembers of it.
        assert_eq!(get().await.0, StatusCode::NOT_FOUND);
        assert_eq!(get().await.0, StatusCode::NOT_FOUND);
    }
    tokio::time::sleep(Duration::from_millis(4100)).await;
    for short in [&whole, &fractional] {
        let request = server.as_token(Method::GET, "/api/v1.0/user/nobody/", short);
        let (status, body) = text(request.send().await.unwrap()).await;
        let detail = assert_error(status, &body, 401, 17, "NotAllowedException");
        assert!(detail.contains("expired"), "{detail}");
    }
    server.stop().await;
}

/// A query parameter given twice: `ids` add up, as the collections routes take them; an
/// `api_key` given twice with different values is refused whichever comes first.
#[tokio::test]
async fn repeated_query_parameters() {
    let server = Server::start("memory:").await;
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1.0/users/",
            r#"{"users":[{"id":"d1"},{"id":"d2"}]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server
        .call(Method::GET, "/api/v1.0/users/?ids=d1&ids=d2", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Value = serde_json::from_str(&strip_duration(&body)).unwrap();
    assert_eq!(got["users"].as_array().unwrap().len(), 2, "{body}");
    // The helper adds the right key last: the wrong one comes before it, then after it.
    for path in [
        "/api/v1.0/user/d1/?api_key=wrong".to_string(),
        format!("/api/v1.0/user/d1/?api_key={KEY}&api_key=wrong"),
    ] {
        let (status, body) = text(server.api(Method::GET, &path).send().await.unwrap()).await;
        let detail = assert_error(status, &body, 401, 2, "ApiKeyException");
        assert!(detail.contains("more than once"), "{detail}");
    }
    let same = format!("/api/v1.0/user/d1/?api_key={KEY}");
    let (status, _) = text(server.api(Method::GET, &same).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// A store whose delete of `b` fails, as a store that goes away part way through a batch, and
/// whose reads of `unread` fail.
#[derive(Debug)]
struct FailsOnB(enrich::SharedStore);

#[async_trait::async_trait]
impl enrich::UserSource for FailsOnB {
    async fn get_many(
        &self,
        ids: &[enrich::user::UserId],
    ) -> enrich::Result<Vec<Option<enrich::user::UserJson>>> {
        if ids.iter().any(|id| id.as_str() == "unread") {
            return Err(enrich::Error::new(
                enrich::ErrorKind::Unavailable,
                "the store went away",
            ));
        }
        self.0.get_many(ids).await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[async_trait::async_trait]
impl enrich::UserStore for FailsOnB {
    async fn add(
        &self,
        user: &enrich::user::NewUser,
        get_or_create: bool,
    ) -> enrich::Result<enrich::store::Added> {
        self.0.add(user, get_or_create).await
    }

    async fn update(&self, user: &enrich::user::NewUser) -> enrich::Result<enrich::user::UserJson> {
        self.0.update(user).await
    }

    async fn delete(&self, id: &enrich::user::UserId) -> enrich::Result<()> {
        if id.as_str() == "b" {
            return Err(enrich::Error::new(
                enrich::ErrorKind::OutcomeUnknown,
                "the store went away",
            ));
        }
        self.0.delete(id).await
    }

    async fn import(
        &self,
        users: &[enrich::store::ImportUser],
        override_existing: bool,
    ) -> enrich::Result<Vec<enrich::store::ImportOutcome>> {
        self.0.import(users, override_existing).await
    }
}

/// A batch delete that fails part way says which users it deleted before the failure.
#[tokio::test]
async fn a_batch_delete_cut_short_says_what_it_deleted() {
    let inner = store::open("memory:", &StoreOptions::new()).await.unwrap();
    let store: enrich::SharedStore = std::sync::Arc::new(FailsOnB(inner));
    let server = Server::start_with(store, ServeConfig::new(KEY, SECRET)).await;
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1.0/users/",
            r#"{"users":[{"id":"a"},{"id":"b"},{"id":"c"}]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server
        .call(Method::DELETE, "/api/v1.0/users/?ids=a,b,c", "")
        .await;
    let detail = assert_error(status, &body, 504, 1, "WriteOutcomeUnknownException");
    assert!(
        detail.ends_with("(deleted before it: a; stopped at b)"),
        "{detail}"
    );
    let (status, _) = server.call(Method::GET, "/api/v1.0/user/a/", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.call(Method::GET, "/api/v1.0/user/c/", "").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// A batch add whose users were written but could not be read back for the answer says that
/// they were written.
#[tokio::test]
async fn a_batch_add_unread_says_it_was_written() {
    let inner = store::open("memory:", &StoreOptions::new()).await.unwrap();
    let store: enrich::SharedStore = std::sync::Arc::new(FailsOnB(inner.clone()));
    let server = Server::start_with(store, ServeConfig::new(KEY, SECRET)).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1.0/users/",
            r#"{"users":[{"id":"unread"}]}"#,
        )
        .await;
    let detail = assert_error(status, &body, 503, 1, "ServiceUnavailableException");
    assert!(detail.contains("the users were written"), "{detail}");
    let unread = enrich::user::UserId::parse("unread").unwrap();
    assert_eq!(inner.get(&unread).await.unwrap().id(), "unread");
    server.stop().await;
}
