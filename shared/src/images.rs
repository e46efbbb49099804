//! Checks of image bytes before they are stored: only real PNG, JPEG and WebP files within the
//! byte and dimension limits get through, whatever a provider claims to have sent.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};
use sha2::{Digest, Sha256};

/// Bounds an image must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded size, in bytes.
    pub max_bytes: usize,
    /// Largest width and largest height, in pixels.
    pub max_side: u32,
}

impl Default for ImageLimits {
    /// 20 MiB and 4096 px per side.
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_side: 4096,
        }
    }
}

/// What [`inspect`] learned about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `image/png`, `image/jpeg` or `image/webp`.
    pub content_type: &'static str,
    /// File extension for the format: `png`, `jpg` or `webp`.
    pub extension: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Encoded size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageCheckError {
    /// Nothing at all.
    #[error("image is empty")]
    Empty,
    /// More bytes than allowed.
    #[error("image is {bytes} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size given.
        bytes: usize,
        /// Limit.
        max: usize,
    },
    /// Not a PNG, JPEG or WebP file.
    #[error("not a PNG, JPEG or WebP image{}", .0.as_deref().map(|f| format!(" (looks like {f})")).unwrap_or_default())]
    UnsupportedFormat(Option<String>),
    /// The header could not be read.
    #[error("image header is unreadable: {0}")]
    Malformed(String),
    /// The file stops before its end marker.
    #[error("image is truncated")]
    Truncated,
    /// Zero width or height, or a side above the limit.
    #[error("image is {width}x{height}; each side must be between 1 and {max_side} px")]
    BadDimensions {
        /// Width found.
        width: u32,
        /// Height found.
        height: u32,
        /// Limit per side.
        max_side: u32,
    },
}

/// Checks that `bytes` are one PNG, JPEG or WebP image within `limits`, reading only the header
/// (and the end marker, to catch a transfer cut short), and describes it.
pub fn inspect(bytes: &[u8], limits: &ImageLimits) -> Result<ImageInfo, ImageCheckError> {
    if bytes.is_empty() {
        return Err(ImageCheckError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageCheckError::TooLarge {
            bytes: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageCheckError::Malformed(e.to_string()))?;
    let (content_type, extension) = match reader.format() {
        Some(ImageFormat::Png) => ("image/png", "png"),
        Some(ImageFormat::Jpeg) => ("image/jpeg", "jpg"),
        Some(ImageFormat::WebP) => ("image/webp", "webp"),
        other => {
            return Err(ImageCheckError::UnsupportedFormat(
                other.map(|f| format!("{f:?}")),
            ))
        }
    };
    let (width, height) = reader.into_dimensions().map_err(|e| match e {
        image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageCheckError::Truncated
        }
        e => ImageCheckError::Malformed(e.to_string()),
    })?;
    if width == 0 || height == 0 || width > limits.max_side || height > limits.max_side {
        return Err(ImageCheckError::BadDimensions {
            width,
            height,
            max_side: limits.max_side,
        });
    }
    if !has_end(bytes, extension) {
        return Err(ImageCheckError::Truncated);
    }
    Ok(ImageInfo {
        content_type,
        extension,
        width,
        height,
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    })
}

/// Whether the file reaches its format's end marker. Encoders may pad after it, so the marker is
/// looked for near the end rather than exactly at it.
fn has_end(bytes: &[u8], extension: &str) -> bool {
    const TAIL: usize = 64;
    let tail = &bytes[bytes.len().saturating_sub(TAIL)..];
    match extension {
        "png" => tail.windows(8).any(|w| w == b"IEND\xAE\x42\x60\x82"),
        "jpg" => tail.windows(2).any(|w| w == [0xFF, 0xD9]),
        "webp" => {
            // RIFF size field: bytes after the first 8.
            let declared = bytes
                .get(4..8)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(u32::from_le_bytes);
            matches!(declared, Some(n) if (n as usize).saturating_add(8) <= bytes.len())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};

    fn encode(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img = ImageBuffer::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn accepts_each_format() {
        for (format, ct, ext) in [
            (ImageFormat::Png, "image/png", "png"),
            (ImageFormat::Jpeg, "image/jpeg", "jpg"),
            (ImageFormat::WebP, "image/webp", "webp"),
        ] {
            let bytes = encode(format, 40, 30);
            let info = inspect(&bytes, &ImageLimits::default()).unwrap();
            assert_eq!(info.content_type, ct);
            assert_eq!(info.extension, ext);
            assert_eq!((info.width, info.height), (40, 30));
            assert_eq!(info.bytes, bytes.len() as u64);
            assert_eq!(info.sha256, hex::encode(Sha256::digest(&bytes)));
        }
    }

    #[test]
    fn refuses_garbage_and_other_formats() {
        let limits = ImageLimits::default();
        assert_eq!(inspect(b"", &limits), Err(ImageCheckError::Empty));
        assert!(matches!(
            inspect(b"hello, this is not an image at all", &limits),
            Err(ImageCheckError::UnsupportedFormat(None))
        ));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(matches!(
            inspect(gif, &limits),
            Err(ImageCheckError::UnsupportedFormat(_))
        ));
        // A PNG signature followed by junk.
        let mut fake = b"\x89PNG\r\n\x1a\n".to_vec();
        fake.extend_from_slice(&[7u8; 100]);
        assert!(inspect(&fake, &limits).is_err());
    }

    #[test]
    fn refuses_truncated_images() {
        let limits = ImageLimits::default();
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let bytes = encode(format, 64, 64);
            for cut in [12, bytes.len() / 2, bytes.len() - 3] {
                assert!(
                    inspect(&bytes[..cut], &limits).is_err(),
                    "{format:?} cut at {cut} of {}",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn enforces_byte_and_dimension_limits() {
        let bytes = encode(ImageFormat::Png, 64, 32);
        let small_bytes = ImageLimits {
            max_bytes: bytes.len() - 1,
            max_side: 4096,
        };
        assert!(matches!(
            inspect(&bytes, &small_bytes),
            Err(ImageCheckError::TooLarge { .. })
        ));
        let small_side = ImageLimits {
            max_bytes: usize::MAX,
            max_side: 63,
        };
        assert_eq!(
            inspect(&bytes, &small_side),
            Err(ImageCheckError::BadDimensions {
                width: 64,
                height: 32,
                max_side: 63
            })
        );
        let exact = ImageLimits {
            max_bytes: bytes.len(),
            max_side: 64,
        };
        assert!(inspect(&bytes, &exact).is_ok());
    }
}
