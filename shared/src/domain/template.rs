//! Prompt templates: named prompt fragments a request expands into its prompt at submit.
//!
//! A template belongs to a user or, made by an operator, to everyone (global). A request names
//! one with `template`; its `character` and `style` may also name templates, whose fragment of
//! that kind is expanded, and are otherwise kept as plain labels.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::request::{ValidationError, MAX_NAME_CHARS, MAX_PROMPT_CHARS};
use super::UserId;

/// Longest fragment of a template, in characters.
pub const MAX_FRAGMENT_CHARS: usize = 1000;

/// A stored template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Unique per owner: 1-64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The owning user; `None` for a global template.
    pub owner: Option<UserId>,
    /// Describes a character; expanded before the prompt.
    pub character: Option<String>,
    /// Describes a style; expanded after the prompt.
    pub style: Option<String>,
    /// Text put first.
    pub prompt_prefix: Option<String>,
    /// Text put last.
    pub prompt_suffix: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// A template as a client sends it. Unknown fields are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    /// See [`Template::name`].
    pub name: Option<String>,
    /// See [`Template::character`].
    pub character: Option<String>,
    /// See [`Template::style`].
    pub style: Option<String>,
    /// See [`Template::prompt_prefix`].
    pub prompt_prefix: Option<String>,
    /// See [`Template::prompt_suffix`].
    pub prompt_suffix: Option<String>,
}

/// Whether `name` can name a template (and so a `template`, `character` or `style` lookup).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl NewTemplate {
    /// Checks every field; the first problem names its field.
    pub fn validate(
        self,
        owner: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<Template, ValidationError> {
        let name = self
            .name
            .ok_or_else(|| ValidationError::new("name", "is required"))?;
        if !valid_name(&name) {
            return Err(ValidationError::new(
                "name",
                format!(
                    "must be 1 to {MAX_NAME_CHARS} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
                ),
            ));
        }
        Ok(Template {
            name,
            owner,
            character: fragment("character", self.character)?,
            style: fragment("style", self.style)?,
            prompt_prefix: fragment("prompt_prefix", self.prompt_prefix)?,
            prompt_suffix: fragment("prompt_suffix", self.prompt_suffix)?,
            created_at: now,
        })
    }
}

fn fragment(field: &str, s: Option<String>) -> Result<Option<String>, ValidationError> {
    let Some(s) = s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let chars = s.chars().count();
    if chars > MAX_FRAGMENT_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_FRAGMENT_CHARS} characters (got {chars})"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(Some(s))
}

/// The templates a request's names resolved to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolved<'a> {
    /// The request's `template`.
    pub template: Option<&'a Template>,
    /// The template named by the request's `character`, if one is.
    pub character: Option<&'a Template>,
    /// The template named by the request's `style`, if one is.
    pub style: Option<&'a Template>,
}

/// The prompt with the templates expanded, joined by `", "` in this order: the template's
/// `prompt_prefix`, the character fragment, the prompt, the style fragment, the template's
/// `prompt_suffix`. The character fragment is that of the template named by `character`, else
/// the `template`'s own; likewise for the style. An expansion longer than the prompt limit is
/// refused, naming `template`.
pub fn expand(prompt: &str, resolved: Resolved<'_>) -> Result<String, ValidationError> {
    let own = |f: fn(&Template) -> &Option<String>| resolved.template.and_then(|t| f(t).as_deref());
    let character = resolved
        .character
        .and_then(|t| t.character.as_deref())
        .or_else(|| own(|t| &t.character));
    let style = resolved
        .style
        .and_then(|t| t.style.as_deref())
        .or_else(|| own(|t| &t.style));
    let parts = [
        own(|t| &t.prompt_prefix),
        character,
        Some(prompt),
        style,
        own(|t| &t.prompt_suffix),
    ];
    let expanded = parts.into_iter().flatten().collect::<Vec<_>>().join(", ");
    let chars = expanded.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(ValidationError::new(
            "template",
            format!(
                "the expanded prompt must be at most {MAX_PROMPT_CHARS} characters (got {chars})"
            ),
        ));
    }
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, json: serde_json::Value) -> Template {
        let mut body: NewTemplate = serde_json::from_value(json).unwrap();
        body.name = Some(name.into());
        body.validate(None, Utc::now()).unwrap()
    }

    #[test]
    fn fragments_go_around_the_prompt_in_order() {
        let t = template(
            "poster",
            serde_json::json!({"prompt_prefix": "a poster of", "prompt_suffix": "4k",
                "character": "a fox", "style": "woodcut"}),
        );
        let knight = template("knight", serde_json::json!({"character": "a knight"}));
        let plain = Resolved {
            template: Some(&t),
            ..Default::default()
        };
        assert_eq!(
            expand("at dusk", plain).unwrap(),
            "a poster of, a fox, at dusk, woodcut, 4k"
        );
        let with_knight = Resolved {
            character: Some(&knight),
            ..plain
        };
        assert_eq!(
            expand("at dusk", with_knight).unwrap(),
            "a poster of, a knight, at dusk, woodcut, 4k"
        );
        assert_eq!(expand("x", Resolved::default()).unwrap(), "x");
    }

    #[test]
    fn bad_templates_name_their_field() {
        let long = "x".repeat(MAX_FRAGMENT_CHARS);
        let t = template("long", serde_json::json!({"prompt_prefix": long}));
        let err = expand(
            &"y".repeat(MAX_PROMPT_CHARS),
            Resolved {
                template: Some(&t),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.field, "template");
        for (body, field) in [
            (serde_json::json!({}), "name"),
            (serde_json::json!({"name": "a b"}), "name"),
            (serde_json::json!({"name": "a", "style": "x\u{1}"}), "style"),
        ] {
            let t: NewTemplate = serde_json::from_value(body).unwrap();
            assert_eq!(t.validate(None, Utc::now()).unwrap_err().field, field);
        }
    }
}
