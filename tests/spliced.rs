//! The spliced `Value` path ([`Enricher::enrich_value_page`]) against the two others: its bytes
//! must be those of `serde_json::to_vec` after [`Enricher::enrich_values`], and those of the
//! raw-bytes path for the same documents written compact.

mod support;

use std::sync::Arc;

use enrich::batch::parse_import_line;
use enrich::store::{MemoryStore, SharedStore};
use enrich::{Depth, EnrichStats, Enricher, RawPage};
use serde_json::Value;

/// An enricher over the fixture users (alice, bob, carol-ng, dave_99, Eve, frank), stored with
/// their timestamps.
async fn fixture_enricher() -> Enricher {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let text = std::fs::read_to_string(support::fixture("users.ndjson")).unwrap();
    let users: Vec<_> = text
        .lines()
        .map(|l| parse_import_line(l.as_bytes()).unwrap())
        .collect();
    store.import(&users, false).await.unwrap();
    Enricher::new(store)
}

fn fixture_docs() -> Vec<Value> {
    std::fs::read_to_string(support::fixture("activities.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Documents written by hand to reach what the fixtures do not: escapes in keys and strings,
/// an escaped reference and an escaped `results` key, numbers serde_json rewrites, nesting,
/// containers that are not what they seem, and empty ones.
const HAND_WRITTEN: &[&str] = &[
    r#"{"id":"h1","actor":"SU:alice","k\u00e9y":"caf\u00e9","quote\"d":"\"","back\\slash":"\\","SU:bob":"a key is never a reference","ctl":"\u0001\n\t\/","emoji":"\ud83d\ude00","cjk":"東京","object":"SU:\u0061lice","target":"SU:\u0061l","origin":"SU:ghost"}"#,
    r#"{"actor":"SU:bob","u64":18446744073709551615,"i64":-9223372036854775808,"huge":123456789012345678901234567890,"float":1.5e300,"tiny":-2.5e-8,"negzero":-0.0,"exp":1E2,"frac":0.1000,"n":[-1,0,1.0,[2,[3,["SU:frank"]]]]}"#,
    r#"{"actor":"SU:Eve","nested":[[1,["SU:bob",{"by":"SU:carol-ng","x":[{"y":"SU:nobody"}]}]],{"a":{"b":"SU:dave_99"}}],"meta":{"by":"SU:frank","tags":["SU:alice","SU:"]}}"#,
    r#"{"id":"g","group":"SU:alice","actor":"SU:alice","activities":[{"actor":"SU:bob","meta":{"by":"SU:Eve"},"list":["SU:frank",3]},"SU:alice",5,["SU:bob"],{"activities":[{"actor":"SU:dave_99"}],"actor":"SU:carol-ng"}]}"#,
    r#"{"results":[{"activities":[{"actor":"SU:dave_99"}],"actor":"SU:alice"},{"actor":"SU:Eve","results":[{"actor":"SU:bob"}]},"SU:alice",null],"next":"SU:alice","duration":"1ms"}"#,
    r#"{"r\u0065sults":[{"actor":"SU:bob"},{"\u0061ctivities":[{"actor":"SU:Eve"}],"actor":"SU:alice"}],"next":"SU:frank"}"#,
    r#"{"results":[{"actor":"SU:alice"}],"activities":[{"actor":"SU:bob"}],"actor":"SU:carol-ng"}"#,
    r#"{"activities":[{"actor":"SU:bob"}],"results":[{"actor":"SU:alice"}],"actor":"SU:frank"}"#,
    r#"{"results":[{"results":[{"actor":"SU:bob"}],"activities":[{"actor":"SU:Eve"}],"actor":"SU:alice"}]}"#,
    r#"{"results":"SU:alice","activities":{"actor":"SU:bob"},"actor":"SU:frank"}"#,
    r#"{"a":{},"b":[],"c":"","d":[{}],"actor":"SU:nobody","other":"SU:é","bad":"SU:bad id"}"#,
    r#"{}"#,
    // Reactions: users inserted after `user_id` or replacing `user`, children, look-alikes.
    r#"{"actor":"SU:alice","latest_reactions":{"like":[{"created_at":"t","id":"r1","user_id":"bob","kind":"like","data":{"by":"SU:carol-ng"},"parent":"","latest_children":{"reply":[{"id":"c1","user":{"stale":true},"user_id":"ghost","latest_children":{"reply":[{"user_id":"Eve","own_children":{"x":[{"user_id":"frank"}]}}]}}]},"children_counts":{"reply":1}},{"user_id":"bad id"},{"user_id":""},{"user_id":7,"user":"SU:bob"},"SU:alice",3,{"user":null}],"comment":{"user_id":"bob"},"x":"SU:frank"},"own_reactions":{"like":[{"user":"old","user_id":"dave_99"}]},"reaction_counts":{"like":3},"latest_reactions_extra":{"like":{"next":""}},"reactions":{"like":[{"user_id":"bob"}]},"object":{"latest_reactions":{"like":[{"user_id":"bob"}]}}}"#,
    r#"{"latest_reactions":{"like":[{"user_id":"bob","user":1},{"user_id":"SU:alice"}]},"own_reactions":"SU:bob","latest_reactions_extra":[{"user_id":"bob"}]}"#,
    r#"{"latest_reactions":{"like":[{"user_id":"alice"}]},"activities":[{"own_reactions":{"like":[{"user_id":"bob"}]},"activities":[]},{"latest_reactions":{}}]}"#,
    r#"{"results":[{"latest_reactions":{"like":[{"user_id":"Eve"}]}},{"activities":[{"own_reactions":{"like":[{"id":"z","user_id":"nobody","kind":"like"}]}}]}],"own_reactions":{"like":[{"user_id":"bob"}]}}"#,
];

fn hand_written() -> Vec<Value> {
    HAND_WRITTEN
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
}

/// The counters that do not depend on what the L1 held.
fn found(stats: EnrichStats) -> (u64, u64, u64, u64, u64) {
    (
        stats.activities,
        stats.references,
        stats.distinct,
        stats.missing,
        stats.unavailable,
    )
}

/// Enriches `docs` three ways and checks that every document comes out as the same bytes;
/// returns the spliced output, one document a line.
async fn assert_three_paths_agree(enricher: &Enricher, docs: &[Value], depth: Depth) -> String {
    let mut in_place = docs.to_vec();
    let in_place_stats = enricher.enrich_values(&mut in_place, depth).await.unwrap();
    let spliced = enricher.enrich_value_page(docs, depth).await.unwrap();
    let mut raw_page = RawPage::new(depth);
    for doc in docs {
        raw_page.push(&serde_json::to_vec(doc).unwrap()).unwrap();
    }
    let raw = enricher.enrich_page(&raw_page).await.unwrap();

    assert_eq!(spliced.len(), docs.len());
    assert_eq!(found(spliced.stats()), found(in_place_stats), "{depth:?}");
    assert_eq!(found(spliced.stats()), found(raw.stats()), "{depth:?}");
    let mut lines = String::new();
    for (i, expected) in in_place.iter().enumerate() {
        let mut out = Vec::new();
        spliced.write(i, &mut out);
        let out = String::from_utf8(out).unwrap();
        let expected = serde_json::to_string(expected).unwrap();
        assert_eq!(out, expected, "{depth:?} document {i}: spliced vs in place");
        let mut raw_out = Vec::new();
        raw.write(i, &mut raw_out);
        assert_eq!(
            out,
            String::from_utf8(raw_out).unwrap(),
            "{depth:?} document {i}: spliced vs raw"
        );
        lines.push_str(&out);
        lines.push('\n');
    }
    lines
}

#[tokio::test]
async fn fixture_pages_come_out_as_the_other_paths_write_them() {
    let enricher = fixture_enricher().await;
    let docs = fixture_docs();
    let alice = enricher
        .users()
        .get(&enrich::UserId::parse("alice").unwrap())
        .await
        .unwrap();
    for depth in [Depth::TopLevel, Depth::Deep] {
        let out = assert_three_paths_agree(&enricher, &docs, depth).await;
        // The comparison is not vacuous: users are in, missing ones stand in.
        assert!(out.contains(alice.as_str()), "{out}");
        assert!(out.contains(r#""error":"ReferenceNotFound""#), "{out}");
    }
    // Deep reaches references top-level leaves alone.
    let top = enricher
        .enrich_value_page(&docs, Depth::TopLevel)
        .await
        .unwrap()
        .stats();
    let deep = enricher
        .enrich_value_page(&docs, Depth::Deep)
        .await
        .unwrap()
        .stats();
    assert!(deep.references > top.references, "{top:?} {deep:?}");
}

#[tokio::test]
async fn escapes_numbers_and_shapes_come_out_as_the_other_paths_write_them() {
    let enricher = fixture_enricher().await;
    let docs = hand_written();
    for depth in [Depth::TopLevel, Depth::Deep] {
        let out = assert_three_paths_agree(&enricher, &docs, depth).await;
        // An escaped reference is a reference: `SU:\u0061l` names the missing user `al`.
        assert!(out.contains(r#""reference":"SU:al","#), "{out}");
        assert!(
            out.contains(r#""kéy":"café","quote\"d":"\"","back\\slash":"\\""#),
            "{out}"
        );
    }
    // The raw path fed the documents as written (escapes and numbers as they were) agrees on
    // the values.
    let spliced = enricher
        .enrich_value_page(&docs, Depth::Deep)
        .await
        .unwrap();
    let mut raw_page = RawPage::new(Depth::Deep);
    for text in HAND_WRITTEN {
        raw_page.push(text.as_bytes()).unwrap();
    }
    let raw = enricher.enrich_page(&raw_page).await.unwrap();
    for i in 0..docs.len() {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        spliced.write(i, &mut ours);
        raw.write(i, &mut theirs);
        let ours: Value = serde_json::from_slice(&ours).unwrap();
        let theirs: Value = serde_json::from_slice(&theirs).unwrap();
        assert_eq!(ours, theirs, "document {i}");
    }
}

#[tokio::test]
async fn documents_that_are_not_objects_are_written_as_they_are() {
    let enricher = fixture_enricher().await;
    let docs: Vec<Value> =
        serde_json::from_str(r#"["SU:alice",["SU:bob"],3.25,null,"é"]"#).unwrap();
    let spliced = enricher
        .enrich_value_page(&docs, Depth::Deep)
        .await
        .unwrap();
    let mut in_place = docs.clone();
    enricher
        .enrich_values(&mut in_place, Depth::Deep)
        .await
        .unwrap();
    assert_eq!(in_place, docs);
    assert_eq!(spliced.stats().references, 0);
    for (i, doc) in docs.iter().enumerate() {
        let mut out = Vec::new();
        spliced.write(i, &mut out);
        assert_eq!(out, serde_json::to_vec(doc).unwrap());
    }
}

#[tokio::test]
async fn an_empty_page_asks_nothing() {
    let enricher = fixture_enricher().await;
    let spliced = enricher
        .enrich_value_page(&[], Depth::TopLevel)
        .await
        .unwrap();
    assert!(spliced.is_empty());
    assert_eq!(spliced.stats(), EnrichStats::default());
}

#[tokio::test]
async fn serializing_gives_the_written_documents() {
    let enricher = fixture_enricher().await;
    let mut docs = fixture_docs();
    docs.extend(hand_written());
    for depth in [Depth::TopLevel, Depth::Deep] {
        let spliced = enricher.enrich_value_page(&docs, depth).await.unwrap();
        let mut array = b"[".to_vec();
        for i in 0..spliced.len() {
            let mut written = Vec::new();
            spliced.write(i, &mut written);
            let alone = serde_json::to_vec(&spliced.doc(i)).unwrap();
            assert_eq!(
                String::from_utf8(alone).unwrap(),
                String::from_utf8(written.clone()).unwrap(),
                "{depth:?} document {i}"
            );
            if i > 0 {
                array.push(b',');
            }
            array.extend_from_slice(&written);
        }
        array.push(b']');
        let page = serde_json::to_vec(&spliced).unwrap();
        assert_eq!(
            String::from_utf8(page).unwrap(),
            String::from_utf8(array).unwrap(),
            "{depth:?}"
        );

        // Through serde_json's `Value` serializer too: the same values as enriched in place.
        let mut in_place = docs.clone();
        enricher.enrich_values(&mut in_place, depth).await.unwrap();
        assert_eq!(
            serde_json::to_value(&spliced).unwrap(),
            Value::Array(in_place)
        );
    }
}

/// A reaction's user is written where Stream's reactions have it, on every path, at every
/// level of children; everything else about reactions stays as it was.
#[tokio::test]
async fn reaction_users_come_out_in_place_on_every_path() {
    let enricher = fixture_enricher().await;
    let docs: Vec<Value> = hand_written()
        .into_iter()
        .filter(|doc| doc.to_string().contains("reactions"))
        .collect();
    assert_eq!(docs.len(), 4);
    let user = |id: &'static str| {
        let enricher = &enricher;
        async move {
            let id = enrich::UserId::parse(id).unwrap();
            enricher
                .get(&id)
                .await
                .unwrap()
                .unwrap()
                .as_str()
                .to_owned()
        }
    };
    let (bob, dave, frank) = (
        user("bob").await,
        user("dave_99").await,
        user("frank").await,
    );
    let nf = |id: &str| {
        format!(
            r#"{{"error":"ReferenceNotFound","reference":"SU:{id}","reference_type":"user","id":"{id}"}}"#
        )
    };
    for depth in [Depth::TopLevel, Depth::Deep] {
        let out = assert_three_paths_agree(&enricher, &docs, depth).await;
        let lines: Vec<&str> = out.lines().collect();
        for expected in [
            format!(r#""id":"r1","user_id":"bob","user":{bob},"kind":"like""#),
            format!(r#"{{"id":"c1","user":{},"user_id":"ghost","latest_children""#, nf("ghost")),
            r#"{"user_id":"bad id"},{"user_id":""},{"user_id":7,"#.to_owned(),
            r#"{"user":null}],"comment":{"user_id":"bob"}"#.to_owned(),
            r#""reaction_counts":{"like":3},"latest_reactions_extra":{"like":{"next":""}},"reactions":{"like":[{"user_id":"bob"}]},"object":{"latest_reactions":{"like":[{"user_id":"bob"}]}}}"#.to_owned(),
            format!(r#""own_children":{{"x":[{{"user_id":"frank","user":{frank}}}]}}"#),
            format!(r#""own_reactions":{{"like":[{{"user":{dave},"user_id":"dave_99"}}]}}"#),
        ] {
            assert!(lines[0].contains(&expected), "{depth:?} {expected}\n{}", lines[0]);
        }
        // Data holding references is left alone unless the activity is searched deep.
        assert_eq!(
            lines[0].contains(r#""data":{"by":"SU:carol-ng"}"#),
            depth == Depth::TopLevel
        );
        // An escaped `user_id` under escaped keys; a `user_id` that is a reference is not an id.
        assert!(
            lines[1].contains(&format!(r#"{{"user_id":"bob","user":{bob}}}"#)),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(r#"{"user_id":"SU:alice"}"#) == (depth == Depth::TopLevel));
        // A group's own reactions are its own; its activities' and a response's results' are
        // searched.
        assert!(lines[2].starts_with(r#"{"latest_reactions":{"like":[{"user_id":"alice"}]}"#));
        assert!(lines[2].contains(&format!(r#"{{"user_id":"bob","user":{bob}}}"#)));
        assert!(lines[3].contains(&format!(
            r#""user_id":"nobody","user":{},"kind""#,
            nf("nobody")
        )));
        assert!(lines[3].ends_with(r#""own_reactions":{"like":[{"user_id":"bob"}]}}"#));
    }
}
