//! One JSON object per line on stdout (what every bench prints).

use serde_json::{Map, Value};

/// Print `fields` as one JSON line, in the given order.
pub fn emit(fields: &[(&str, Value)]) {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert((*k).to_string(), v.clone());
    }
    println!("{}", Value::Object(m));
}
