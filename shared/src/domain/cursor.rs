//! The opaque pagination cursor of `GET /v1/jobs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use super::JobId;

/// Where the next page starts: strictly older than this job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last job id of the previous page.
    pub before: JobId,
}

impl Cursor {
    /// Opaque text for clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}", self.before))
    }

    /// Parses a cursor a client sent back; never panics, whatever the input.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() > 128 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
        let text = std::str::from_utf8(&raw).ok()?;
        let id = text.strip_prefix("v1:")?;
        let uuid = Uuid::parse_str(id).ok()?;
        Some(Self {
            before: JobId::from(uuid),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let c = Cursor {
            before: JobId::new(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "!!!", "djE6bm9wZQ", "eA", &"A".repeat(500)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
