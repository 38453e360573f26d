//! The `serde_json::Value` path: the same shapes and rules as the raw-bytes path in
//! [`crate::page`], over documents a caller already holds as values.

use serde_json::Value;

use crate::page::{Depth, Role};
use crate::reference::user_ref;

/// Calls `visit` on every string value in `doc` that sits where a reference counts, in
/// document order; `activity` is called once per activity.
pub(crate) fn walk(
    doc: &mut Value,
    role: Role,
    depth: Depth,
    visit: &mut impl FnMut(&mut Value),
    activity: &mut impl FnMut(),
) {
    let Value::Object(object) = doc else {
        return;
    };
    let is_array = |key: &str| object.get(key).is_some_and(Value::is_array);
    if role == Role::Document && is_array("results") {
        for result in array_mut(doc, "results") {
            walk(result, Role::Result, depth, visit, activity);
        }
    } else if role != Role::Activity && is_array("activities") {
        for inner in array_mut(doc, "activities") {
            walk(inner, Role::Activity, depth, visit, activity);
        }
    } else {
        activity();
        for value in object.values_mut() {
            match value {
                Value::String(_) => visit(value),
                Value::Object(_) | Value::Array(_) if depth == Depth::Deep => deep(value, visit),
                _ => {}
            }
        }
    }
}

fn array_mut<'a>(doc: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    match doc.get_mut(key) {
        Some(Value::Array(items)) => items,
        _ => unreachable!("checked to be an array"),
    }
}

fn deep(value: &mut Value, visit: &mut impl FnMut(&mut Value)) {
    match value {
        Value::String(_) => visit(value),
        Value::Array(items) => items.iter_mut().for_each(|v| deep(v, visit)),
        Value::Object(object) => object.values_mut().for_each(|v| deep(v, visit)),
        _ => {}
    }
}

/// The id a string value refers to, if it is a user reference.
pub(crate) fn referenced_id(value: &Value) -> Option<&str> {
    value.as_str().and_then(user_ref)
}
