//! Answers put in place as `Value`s: each user is parsed once per page and cloned into each
//! place that names it, for callers who read or edit the users afterwards.

use serde_json::Value;

use super::{Place, References, Search, referenced_id, walk_mut};
use crate::answer::Answer;
use crate::shape::Depth;

/// Replaces every reference of `page` (found as `refs` says) with its answer.
pub(crate) fn enrich_in_place(
    page: &mut [Value],
    depth: Depth,
    refs: &References,
    answers: &[Answer],
) {
    let users: Vec<Value> = answers
        .iter()
        .zip(&refs.ids)
        .map(|(answer, id)| answer_value(answer, id))
        .collect();
    // The walk meets the references in the order they were collected.
    let mut sites = refs.sites.iter();
    for doc in page.iter_mut() {
        walk_mut(doc, Place::DOCUMENT, depth, &mut |value, search| {
            if search == Search::User || referenced_id(value).is_some() {
                let i = *sites
                    .next()
                    .expect("the same walk finds the same references")
                    as usize;
                *value = users[i].clone();
            }
        });
    }
}

/// An answer as a `Value`.
fn answer_value(answer: &Answer, id: &str) -> Value {
    let mut bytes = Vec::new();
    answer.write(|| id, &mut bytes);
    serde_json::from_slice(&bytes).expect("user records and error objects are valid JSON")
}
