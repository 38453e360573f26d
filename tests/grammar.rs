//! One JSON grammar: the raw-bytes path takes exactly the documents serde_json parses into a
//! `Value`, and means the same by them (see `tests/differential/mod.rs` for what is compared).
//! A bounded property test over generated documents and mutations of them, and the cases that
//! once differed, through the library and through the built binary. The same oracle runs
//! unbounded under cargo-fuzz: see `fuzz/README.md`.

mod differential;
mod support;

use differential::{Oracle, USERS};
use enrich::Depth;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Documents serde_json and an older scanner disagreed on, and their neighbours.
const ONCE_DIFFERED: &[&str] = &[
    r#"{"a":"\ud800"}"#,
    r#"{"a":"\udc00\ud800"}"#,
    r#"{"a":"\ud800\u0041"}"#,
    r#"{"a":"\ud800\ud800"}"#,
    r#"{"a":"\udbff\udfff"}"#,
    r#"{"\udc00":1}"#,
    r#"{"actor":"SU:\ud800"}"#,
    r#"{"a":1E400}"#,
    r#"{"a":-1e400}"#,
    r#"{"a":1e-400}"#,
    r#"{"a":123456789012345678901234567890e300}"#,
    r#"{"a":0.000000000000000000000000000001e330}"#,
    r#"{"a":1.7976931348623157e308}"#,
    r#"{"a":1.7976931348623159e308}"#,
    "\u{c}{}",
    r#"{"results":[{"actor":"SU:u0"}],"results":5,"actor":"SU:u1"}"#,
    r#"{"activities":[{"x":"SU:u0"}],"activities":[{"x":"SU:u1"}],"actor":"SU:u2"}"#,
];

#[test]
fn documents_that_once_differed_agree() {
    let oracle = Oracle::new();
    for doc in ONCE_DIFFERED {
        for depth in [Depth::TopLevel, Depth::Deep] {
            oracle.check(doc.as_bytes(), depth);
        }
    }
    let digits = format!(r#"{{"a":{}}}"#, "9".repeat(310));
    oracle.check(digits.as_bytes(), Depth::TopLevel);
}

/// `enrich run` refuses what serde_json refuses, naming the line, and passes on what it takes
/// as it was written.
#[test]
fn the_binary_refuses_what_serde_json_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--store", "memory:"];
    for doc in [
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\udc00\ud800"}"#,
        r#"{"a":"\ud800\u0041"}"#,
        r#"{"a":1E400}"#,
        r#"{"a":-1e400}"#,
    ] {
        let input = format!("{{\"ok\":1}}\n{doc}\n{{\"after\":1}}\n");
        let out = support::run_enrich(
            dir.path(),
            &[&store[..], &["run", "--quiet"]].concat(),
            input,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{doc}: {err}");
        assert!(
            err.starts_with("error: -:2: not valid JSON"),
            "{doc}: {err}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "{\"ok\":1}\n",
            "{doc}"
        );
    }
    let taken = r#"{"a":1e-400,"b":"\ud83d\ude00","c":-0.0E+5}"#;
    let out = support::run_enrich(
        dir.path(),
        &[&store[..], &["run", "--quiet"]].concat(),
        taken,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{taken}\n"));
}

/// White space JSON allows, or none.
fn ws() -> BoxedStrategy<String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => select(vec![" ", "\n", "\t", "\r\n ", "  "]).prop_map(str::to_string),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<String> {
    let digits = |max: usize| prop::collection::vec(0u8..10, 1..max);
    let render = |d: Vec<u8>| d.iter().map(|d| char::from(b'0' + d)).collect::<String>();
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        // Hand-built: sign, integer part, fraction, exponent (of any size).
        (
            any::<bool>(),
            digits(25),
            prop::option::of(digits(25)),
            prop::option::of((
                select(vec!["e", "E"]),
                select(vec!["", "+", "-"]),
                digits(5)
            )),
        )
            .prop_map(move |(minus, int, frac, exp)| {
                let int = render(int);
                let int = int.trim_start_matches('0');
                let int = if int.is_empty() { "0" } else { int };
                let mut n = format!("{}{int}", if minus { "-" } else { "" });
                if let Some(frac) = frac {
                    n += &format!(".{}", render(frac));
                }
                if let Some((e, sign, digits)) = exp {
                    n += &format!("{e}{sign}{}", render(digits));
                }
                n
            }),
        // Near the edges of f64.
        (1usize..330, select(vec!["", "e5", "e-5", ".5", "e10"]))
            .prop_map(|(n, tail)| format!("1{}{tail}", "0".repeat(n))),
        (
            280u32..330,
            select(vec!["1", "1.8", "17976931348623157", "0.001", "0"])
        )
            .prop_map(|(e, m)| format!("{m}e{e}")),
    ]
    .boxed()
}

/// A string token: plain text, text beyond ASCII, escapes (surrogates included, paired or not).
fn string() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        select(vec![
            "a", "b", "SU", ":", "x y", "é", "€", "😀", "\u{7f}", "'"
        ])
        .prop_map(str::to_string),
        select(vec![
            r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t"
        ])
        .prop_map(str::to_string),
        any::<u16>().prop_map(|u| format!("\\u{u:04x}")),
        (0xd800u16..0xdc00, 0xdc00u16..0xe000).prop_map(|(h, l)| format!("\\u{h:04X}\\u{l:04x}")),
    ];
    prop::collection::vec(piece, 0..5)
        .prop_map(|pieces| format!("\"{}\"", pieces.concat()))
        .boxed()
}

/// A reference, or something close to one.
fn reference() -> BoxedStrategy<String> {
    let mut ids: Vec<String> = USERS.iter().map(|id| format!("\"SU:{id}\"")).collect();
    ids.extend(
        [
            r#""SU:missing""#,
            r#""SU:bad id""#,
            r#""SU:""#,
            r#""SU:\u0075\u0031""#,
            r#""\u0053U:u2""#,
            r#""SO:u1""#,
        ]
        .map(str::to_string),
    );
    select(ids).boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(vec!["actor", "object", "results", "activities", "a", "é", "SU:u0"])
            .prop_map(|k| format!("\"{k}\"")),
        1 => select(vec!["latest_reactions", "own_reactions", "user_id", "user", "latest_children"])
            .prop_map(|k| format!("\"{k}\"")),
        1 => Just(r#""result\u0073""#.to_string()),
        1 => string(),
    ]
    .boxed()
}

fn value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        select(vec!["null", "true", "false"]).prop_map(str::to_string),
        number(),
        string(),
        reference(),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        let item = (ws(), inner, ws())
            .prop_map(|(a, v, b)| format!("{a}{v}{b}"))
            .boxed();
        prop_oneof![
            prop::collection::vec(item.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((ws(), key(), ws(), item), 0..5).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(a, k, b, v)| format!("{a}{k}{b}:{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
    .boxed()
}

/// A plain id where a reaction's `user_id` goes, or something close to one.
fn user_id() -> BoxedStrategy<String> {
    let mut ids: Vec<String> = USERS.iter().map(|id| format!("\"{id}\"")).collect();
    ids.extend(
        [
            r#""missing""#,
            r#""bad id""#,
            r#""""#,
            r#""\u0075\u0031""#,
            r#""SU:u1""#,
            "7",
        ]
        .map(str::to_string),
    );
    select(ids).boxed()
}

/// A reaction: `user_id`, `user` and children among other members, in any order, any of them
/// repeated; its children (if `children`) are reactions too.
fn reaction(children: bool) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        3 => (
            select(vec!["\"user_id\"", "\"\\u0075ser_id\""]),
            user_id()
        )
            .prop_map(|(k, v)| format!("{k}:{v}")),
        2 => value().prop_map(|v| format!("\"user\":{v}")),
        2 => (key(), value()).prop_map(|(k, v)| format!("{k}:{v}")),
    ];
    let member = if children {
        prop_oneof![
            4 => leaf,
            1 => (
                select(vec!["latest_children", "own_children"]),
                prop::collection::vec(reaction(false), 0..3)
            )
                .prop_map(|(k, rs)| format!(r#""{k}":{{"reply":[{}]}}"#, rs.join(","))),
        ]
        .boxed()
    } else {
        leaf.boxed()
    };
    prop::collection::vec((ws(), member), 0..5)
        .prop_map(|members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(a, m)| format!("{a}{m}"))
                .collect();
            format!("{{{}}}", members.join(","))
        })
        .boxed()
}

/// An activity with reactions, maybe inside a group.
fn with_reactions() -> BoxedStrategy<String> {
    let items = prop_oneof![4 => reaction(true), 1 => value()];
    (
        select(vec!["latest_reactions", "own_reactions"]),
        prop::collection::vec(items, 0..4),
        any::<bool>(),
    )
        .prop_map(|(k, items, grouped)| {
            let activity = format!(
                r#"{{"actor":"SU:u0","{k}":{{"like":[{}]}},"reaction_counts":{{"like":1}}}}"#,
                items.join(",")
            );
            if grouped {
                format!(r#"{{"activities":[{activity}]}}"#)
            } else {
                activity
            }
        })
        .boxed()
}

/// A document: mostly an object (an activity, a group, a response), sometimes anything.
fn document() -> impl Strategy<Value = String> {
    let object = prop::collection::vec((key(), value()), 0..6).prop_map(|members| {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        format!("{{{}}}", members.join(","))
    });
    let group = prop::collection::vec(value(), 0..4)
        .prop_map(|acts| format!(r#"{{"actor":"SU:u0","activities":[{}]}}"#, acts.join(",")));
    prop_oneof![
        4 => object,
        1 => group,
        2 => with_reactions(),
        1 => value(),
    ]
    .prop_flat_map(|doc| (ws(), Just(doc), ws()).prop_map(|(a, d, b)| format!("{a}{d}{b}")))
}

/// What a mutation may put in: JSON's own bytes, and what sits on the grammar's edges.
const SNIPPETS: &[&[u8]] = &[
    br"\ud800",
    br"\udc00",
    br"\udbff\udfff",
    br"\u0041",
    br"\u",
    br"\",
    b"\"",
    b"e400",
    b"E400",
    b"e-400",
    b"e309",
    b"1e309",
    b"9",
    b"0",
    b"-",
    b"+",
    b".",
    b"e",
    b",",
    b":",
    b"[",
    b"]",
    b"{",
    b"}",
    b" ",
    b"\t",
    b"\x0c",
    b"\x00",
    b"\x1f",
    b"\x7f",
    b"\xff",
    b"\xc3",
    "é".as_bytes(),
    b"true",
    b"null",
    b"\"SU:u1\"",
    b"\"results\":[",
    b"\"activities\":[",
];

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, Index),
    Delete(Index),
    Insert(Index, Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<Index>()).prop_map(|(at, s)| Mutation::Replace(at, s)),
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), any::<Index>()).prop_map(|(at, s)| Mutation::Insert(at, s)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(doc: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut doc = doc.as_bytes().to_vec();
    for m in mutations {
        let len = doc.len().max(1);
        match m {
            Mutation::Replace(at, s) if !doc.is_empty() => {
                let at = at.index(len);
                doc.splice(at..at + 1, s.get(SNIPPETS).iter().copied());
            }
            Mutation::Delete(at) if !doc.is_empty() => {
                doc.remove(at.index(len));
            }
            Mutation::Insert(at, s) => {
                let at = at.index(doc.len() + 1);
                doc.splice(at..at, s.get(SNIPPETS).iter().copied());
            }
            Mutation::Truncate(at) => doc.truncate(at.index(len)),
            _ => {}
        }
    }
    doc
}

thread_local! {
    static ORACLE: Oracle = Oracle::new();
}

proptest! {
    // A fixed, moderate number of cases, so that the suite stays quick; the fuzz target runs
    // the same oracle for as long as it is given.
    #![proptest_config(ProptestConfig {
        cases: 1500,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_raw_path_and_serde_json_agree(
        doc in document(),
        mutations in prop_oneof![
            2 => Just(Vec::new()),
            3 => prop::collection::vec(mutation(), 1..4),
        ],
        deep in any::<bool>(),
    ) {
        let bytes = mutate(&doc, &mutations);
        let depth = if deep { Depth::Deep } else { Depth::TopLevel };
        ORACLE.with(|oracle| oracle.check(&bytes, depth));
    }
}

/// The generator makes both kinds, so the property above is not vacuous.
#[test]
fn generated_documents_are_both_taken_and_refused() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (document(), prop::collection::vec(mutation(), 0..3));
    let (mut taken, mut refused) = (0, 0);
    for _ in 0..400 {
        let (doc, mutations) = strategy.new_tree(&mut runner).unwrap().current();
        if serde_json::from_slice::<serde_json::Value>(&mutate(&doc, &mutations)).is_ok() {
            taken += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        taken > 100 && refused > 100,
        "{taken} taken, {refused} refused"
    );
}
