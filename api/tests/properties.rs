//! Property tests of the JSON body parser: any bytes get a `400` naming a field (or a parsed
//! body), never a panic; the canonical hash ignores key order and whitespace.

use kiln_api::body::{canonical_hash, parse};
use kiln_api::ApiError;
use kiln_shared::domain::SubmitJob;
use proptest::prelude::*;

fn shuffled_object(pairs: Vec<(String, i64)>, seed: u64) -> (String, String) {
    let mut dedup: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        dedup.insert(k, v);
    }
    let entries: Vec<(String, i64)> = dedup.into_iter().collect();
    let ordered = serde_json::to_string(
        &entries
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>(),
    )
    .unwrap();
    let mut rotated = entries.clone();
    if !rotated.is_empty() {
        let by = (seed as usize) % rotated.len();
        rotated.rotate_left(by);
    }
    let body: Vec<String> = rotated
        .iter()
        .map(|(k, v)| format!("  {} :\n {v}", serde_json::Value::from(k.clone())))
        .collect();
    (ordered, format!("{{ {} }}", body.join(" ,\t")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_bytes_parse_or_name_a_field(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match parse::<SubmitJob>(&bytes) {
            Ok(_) => {}
            Err(ApiError::InvalidRequest { field, .. }) => prop_assert!(field.is_some()),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn json_shaped_text_parses_or_names_a_field(
        s in r#"\{("(prompt|n|size|seed|metadata|x)": ?(-?[0-9]{1,25}(\.[0-9])?|"[^"\\]{0,10}"|\[|\{|null|true),? ?){0,6}\}?"#
    ) {
        match parse::<SubmitJob>(s.as_bytes()) {
            Ok(_) => {}
            Err(ApiError::InvalidRequest { field, .. }) => prop_assert!(field.is_some()),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion(depth in 0usize..5000) {
        let body = format!(r#"{{"metadata": {{"k": {}{}}}, "prompt": "a"}}"#, "[".repeat(depth), "]".repeat(depth));
        let result = parse::<SubmitJob>(body.as_bytes());
        if depth + 2 > kiln_api::body::MAX_DEPTH {
            let refused = matches!(result, Err(ApiError::InvalidRequest { .. }));
            prop_assert!(refused, "depth {} was accepted", depth);
        }
    }

    #[test]
    fn the_hash_ignores_key_order_and_whitespace(
        pairs in prop::collection::vec(("[a-z\\u{e9}\"]{1,6}", any::<i64>()), 0..12),
        seed in any::<u64>(),
    ) {
        let (a, b) = shuffled_object(pairs, seed);
        let va: serde_json::Value = serde_json::from_str(&a).unwrap();
        let vb: serde_json::Value = serde_json::from_str(&b).unwrap();
        prop_assert_eq!(canonical_hash(&va), canonical_hash(&vb));
    }
}
