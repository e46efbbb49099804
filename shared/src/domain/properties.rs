//! Property tests of what clients can send: request validation, the pagination cursor, rate
//! limits and template expansion must never panic, and hold their promises for any input.

use proptest::prelude::*;
use serde_json::json;

use super::request::{MAX_IMAGES, MAX_PROMPT_CHARS};
use super::template::{expand, NewTemplate, Resolved};
use super::{Cursor, JobId, RateLimit, SubmitJob};

fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..40)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_submit() -> impl Strategy<Value = SubmitJob> {
    (
        prop::option::of(".{0,50}|\\PC{4000,4010}"),
        prop::option::of(".{0,30}"),
        prop::option::of(any::<i64>()),
        prop::option::of("[0-9x]{0,12}|1024x1024|512x512"),
        prop::option::of(".{0,70}"),
        prop::option::of(".{0,70}"),
        prop::option::of(any::<u64>()),
        prop::option::of("standard|high|.{0,8}"),
        prop::option::of(any_json()),
    )
        .prop_map(
            |(prompt, negative_prompt, n, size, style, character, seed, quality, metadata)| {
                SubmitJob {
                    prompt,
                    negative_prompt,
                    n,
                    size,
                    style,
                    template: character.clone(),
                    character,
                    seed,
                    quality,
                    metadata,
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the fields, validation answers; what it accepts is within every limit, and
    /// what it refuses names a field.
    #[test]
    fn validation_never_panics_and_keeps_its_limits(body in any_submit()) {
        match body.clone().validate() {
            Ok((req, metadata)) => {
                prop_assert!(!req.prompt.trim().is_empty());
                prop_assert!(req.prompt.chars().count() <= MAX_PROMPT_CHARS);
                prop_assert_eq!(req.prompt.trim(), req.prompt.as_str());
                prop_assert!((1..=MAX_IMAGES).contains(&req.n));
                prop_assert_eq!(req.seed, body.seed);
                if let Some(m) = metadata {
                    prop_assert!(serde_json::to_vec(&m).unwrap().len() <= 4096);
                }
            }
            Err(e) => prop_assert!(!e.field.is_empty()),
        }
    }

    /// `n` is accepted exactly from 1 to 4.
    #[test]
    fn n_is_accepted_exactly_in_range(n in any::<i64>()) {
        let body = SubmitJob { prompt: Some("p".into()), n: Some(n), ..Default::default() };
        let ok = body.validate().is_ok();
        prop_assert_eq!(ok, (1..=i64::from(MAX_IMAGES)).contains(&n));
    }

    /// Any text at all decodes to a cursor or to nothing, never a panic.
    #[test]
    fn cursor_decoding_never_panics(s in ".{0,200}") {
        let _ = Cursor::decode(&s);
    }

    /// Base64-looking text, the likelier fuzz, too.
    #[test]
    fn cursor_decoding_never_panics_on_base64ish(s in "[A-Za-z0-9_=+/-]{0,200}") {
        if let Some(c) = Cursor::decode(&s) {
            prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
    }

    /// Every cursor handed out decodes to itself.
    #[test]
    fn cursors_round_trip(bytes in any::<[u8; 16]>()) {
        let c = Cursor { before: JobId::from(uuid::Uuid::from_bytes(bytes)) };
        prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }

    /// Rate limits parse or refuse any text, and a window always contains its instant.
    #[test]
    fn rate_windows_contain_now(s in ".{0,20}", n in 1u32..10_000, secs in 0i64..4_000_000_000) {
        let _ = s.parse::<RateLimit>();
        let limit: RateLimit = format!("{n}/min").parse().unwrap();
        let now = chrono::DateTime::from_timestamp(secs, 0).unwrap();
        let start = limit.window_start(now);
        prop_assert!(start <= now);
        prop_assert!(limit.retry_after(now) <= limit.window);
        prop_assert!(!limit.retry_after(now).is_zero());
    }

    /// Expansion keeps the prompt and never exceeds the limit it promises.
    #[test]
    fn expansion_keeps_the_prompt_within_the_limit(
        prompt in "\\PC{1,300}",
        prefix in prop::option::of("\\PC{0,1200}"),
        style in prop::option::of("\\PC{0,1200}"),
    ) {
        let t = NewTemplate {
            name: Some("t".into()),
            prompt_prefix: prefix,
            style,
            ..Default::default()
        }
        .validate(None, chrono::Utc::now());
        if let Ok(t) = t {
            let r = Resolved { template: Some(&t), ..Default::default() };
            match expand(&prompt, r) {
                Ok(p) => {
                    prop_assert!(p.contains(&prompt));
                    prop_assert!(p.chars().count() <= MAX_PROMPT_CHARS);
                }
                Err(e) => prop_assert_eq!(e.field, "template"),
            }
        }
    }
}
