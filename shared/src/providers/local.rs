//! The built-in `local` renderer: real PNG files with no network and no keys, deterministic from
//! the prompt, negative prompt, seed, size and image index, so the whole pipeline can run and be
//! tested offline. Each image is a soft gradient with translucent discs and rings whose palette
//! and layout come from a hash of those inputs.

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::ports::{GeneratedImage, GenerationRequest, ImageProvider, ProviderError};

/// The built-in renderer as an [`ImageProvider`].
#[derive(Debug, Clone)]
pub struct LocalProvider {
    name: String,
    latency: Duration,
}

impl LocalProvider {
    /// The renderer under the name `local`, answering after `latency` (zero: at once).
    pub fn new(latency: Duration) -> Self {
        Self::named("local", latency)
    }

    /// The renderer under another configured name.
    pub fn named(name: impl Into<String>, latency: Duration) -> Self {
        Self {
            name: name.into(),
            latency,
        }
    }
}

#[async_trait]
impl ImageProvider for LocalProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn generate(
        &self,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, ProviderError> {
        let started = Instant::now();
        if !self.latency.is_zero() {
            // Behave like a slow remote provider: the caller waits until its deadline either way.
            if started + self.latency > deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(ProviderError::Timeout(started.elapsed()));
            }
            tokio::time::sleep(self.latency).await;
        }
        let req = req.clone();
        let work = tokio::task::spawn_blocking(move || {
            (0..req.n)
                .map(|i| render_png(&req, u32::from(i)).map(|bytes| GeneratedImage { bytes }))
                .collect::<Result<Vec<_>, _>>()
        });
        match tokio::time::timeout_at(deadline, work).await {
            Err(_) => Err(ProviderError::Timeout(started.elapsed())),
            Ok(Err(join)) => Err(ProviderError::Transient {
                status: None,
                message: format!("renderer did not finish: {join}"),
                retry_after: None,
            }),
            Ok(Ok(Err(e))) => Err(ProviderError::Transient {
                status: None,
                message: format!("renderer could not encode the image: {e}"),
                retry_after: None,
            }),
            Ok(Ok(Ok(images))) => Ok(images),
        }
    }
}

/// Renders the `index`th image for `req` as an RGB PNG of `req.size`; the same inputs always give
/// the same bytes. CPU-bound: call it off the async runtime.
pub fn render_png(req: &GenerationRequest, index: u32) -> Result<Vec<u8>, png::EncodingError> {
    let (w, h) = (req.size.width, req.size.height);
    let scene = Scene::new(&mut Rng::new(scene_seed(req, index)), w, h);
    let pixels = scene.render(w, h);
    let mut out = Vec::with_capacity(pixels.len() / 4);
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::FilterType::Up);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

/// A stable hash of everything that decides the picture. Versioned so that a change of the
/// drawing can change the output on purpose.
fn scene_seed(req: &GenerationRequest, index: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kiln-local-v1\0");
    h.update((req.prompt.len() as u64).to_le_bytes());
    h.update(req.prompt.as_bytes());
    match &req.negative_prompt {
        Some(n) => {
            h.update([1]);
            h.update((n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
        }
        None => h.update([0]),
    }
    match req.seed {
        Some(s) => {
            h.update([1]);
            h.update(s.to_le_bytes());
        }
        None => h.update([0]),
    }
    h.update(req.size.width.to_le_bytes());
    h.update(req.size.height.to_le_bytes());
    h.update(index.to_le_bytes());
    h.finalize().into()
}

/// SplitMix64: tiny, fast and fixed forever, unlike library generators whose streams may change
/// between versions.
struct Rng(u64);

impl Rng {
    fn new(seed: [u8; 32]) -> Self {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&seed[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Self(word(0) ^ word(1).rotate_left(17) ^ word(2).rotate_left(31) ^ word(3))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Rgb = [f32; 3];

/// HSL (hue in degrees, saturation and lightness in 0..1) to linear-ish RGB in 0..255.
fn hsl(hue: f32, s: f32, l: f32) -> Rgb {
    let hue = hue.rem_euclid(360.0) / 60.0;
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let x = c * (1.0 - (hue % 2.0 - 1.0).abs());
    let (r, g, b) = match hue as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

enum Shape {
    Disc,
    Ring { thickness: f32 },
}

struct Blob {
    shape: Shape,
    cx: f32,
    cy: f32,
    radius: f32,
    softness: f32,
    color: Rgb,
    alpha: f32,
}

struct Scene {
    top: Rgb,
    bottom: Rgb,
    /// Gradient direction (unit vector).
    dir: (f32, f32),
    blobs: Vec<Blob>,
    vignette: f32,
}

impl Scene {
    fn new(rng: &mut Rng, w: u32, h: u32) -> Self {
        let base = rng.range(0.0, 360.0);
        // Colour schemes that tend to look good: analogous, complementary, triadic, split.
        let schemes: [&[f32]; 4] = [
            &[0.0, 25.0, -25.0],
            &[0.0, 180.0, 20.0],
            &[0.0, 120.0, 240.0],
            &[0.0, 150.0, 210.0],
        ];
        let offsets = schemes[rng.below(4) as usize];
        let sat = rng.range(0.45, 0.75);
        let top = hsl(base, sat, rng.range(0.16, 0.32));
        let bottom = hsl(
            base + offsets[1 % offsets.len()] * 0.5,
            sat,
            rng.range(0.55, 0.75),
        );
        let angle = rng.range(0.0, std::f32::consts::TAU);
        let (fw, fh) = (w as f32, h as f32);
        let short = fw.min(fh);
        let count = 5 + rng.below(5);
        let blobs = (0..count)
            .map(|_| {
                let hue = base + offsets[rng.below(offsets.len() as u64) as usize];
                let shape = if rng.below(4) == 0 {
                    Shape::Ring {
                        thickness: rng.range(0.06, 0.18),
                    }
                } else {
                    Shape::Disc
                };
                Blob {
                    shape,
                    cx: rng.range(-0.1, 1.1) * fw,
                    cy: rng.range(-0.1, 1.1) * fh,
                    radius: rng.range(0.06, 0.34) * short,
                    softness: rng.range(0.08, 0.6),
                    color: hsl(hue, rng.range(0.5, 0.9), rng.range(0.45, 0.8)),
                    alpha: rng.range(0.25, 0.7),
                }
            })
            .collect();
        Self {
            top,
            bottom,
            dir: (angle.cos(), angle.sin()),
            blobs,
            vignette: rng.range(0.15, 0.4),
        }
    }

    /// RGB8 pixels, row by row.
    fn render(&self, w: u32, h: u32) -> Vec<u8> {
        let (wu, hu) = (w as usize, h as usize);
        let (fw, fh) = (w as f32, h as f32);
        let mut buf = vec![0f32; wu * hu * 3];

        // Background: linear gradient along `dir`, normalised over the image's extent.
        let (dx, dy) = self.dir;
        let corners = [0.0, dx * fw, dy * fh, dx * fw + dy * fh];
        let lo = corners.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = corners.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let span = (hi - lo).max(1.0);
        let delta: Rgb = std::array::from_fn(|c| self.bottom[c] - self.top[c]);
        for (y, row) in buf.chunks_exact_mut(wu * 3).enumerate() {
            let row_base = (y as f32 * dy - lo) / span;
            let step = dx / span;
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let t = (row_base + x as f32 * step).clamp(0.0, 1.0);
                let t = t * t * (3.0 - 2.0 * t);
                for c in 0..3 {
                    px[c] = self.top[c] + delta[c] * t;
                }
            }
        }

        // Shapes: only their bounding boxes are visited.
        for b in &self.blobs {
            let x0 = (b.cx - b.radius).floor().max(0.0) as usize;
            let x1 = ((b.cx + b.radius).ceil().max(0.0) as usize).min(wu);
            let y0 = (b.cy - b.radius).floor().max(0.0) as usize;
            let y1 = ((b.cy + b.radius).ceil().max(0.0) as usize).min(hu);
            let r2 = b.radius * b.radius;
            for y in y0..y1 {
                let ddy = y as f32 + 0.5 - b.cy;
                let row = &mut buf[y * wu * 3..(y + 1) * wu * 3];
                for x in x0..x1 {
                    let ddx = x as f32 + 0.5 - b.cx;
                    let d2 = ddx * ddx + ddy * ddy;
                    if d2 >= r2 {
                        continue;
                    }
                    let d = d2.sqrt();
                    let cover = match b.shape {
                        Shape::Disc => (b.radius - d) / (b.radius * b.softness),
                        Shape::Ring { thickness } => {
                            let half = b.radius * thickness;
                            let mid = b.radius - half;
                            (half - (d - mid).abs()) / (half * b.softness.max(0.3))
                        }
                    }
                    .clamp(0.0, 1.0);
                    let a = b.alpha * cover * cover * (3.0 - 2.0 * cover);
                    if a <= 0.0 {
                        continue;
                    }
                    for (p, target) in row[x * 3..x * 3 + 3].iter_mut().zip(b.color) {
                        *p += (target - *p) * a;
                    }
                }
            }
        }

        // Vignette, then quantise with a 4x4 ordered dither so gradients do not band.
        const BAYER: [[f32; 4]; 4] = [
            [0.0, 8.0, 2.0, 10.0],
            [12.0, 4.0, 14.0, 6.0],
            [3.0, 11.0, 1.0, 9.0],
            [15.0, 7.0, 13.0, 5.0],
        ];
        let vx: Vec<f32> = (0..wu)
            .map(|x| {
                let u = (x as f32 + 0.5) / fw * 2.0 - 1.0;
                u * u
            })
            .collect();
        let mut out = vec![0u8; wu * hu * 3];
        for (y, (src, dst)) in buf
            .chunks_exact(wu * 3)
            .zip(out.chunks_exact_mut(wu * 3))
            .enumerate()
        {
            let v = (y as f32 + 0.5) / fh * 2.0 - 1.0;
            let vy = v * v;
            let bayer = &BAYER[y % 4];
            for (x, (s, d)) in src.chunks_exact(3).zip(dst.chunks_exact_mut(3)).enumerate() {
                let shade = 1.0 - self.vignette * 0.5 * (vx[x] + vy);
                let dither = bayer[x % 4] / 16.0;
                for c in 0..3 {
                    d[c] = (s[c] * shade + dither).clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::ALLOWED_SIZES;
    use crate::domain::{ImageSize, Quality};

    fn request(prompt: &str, size: ImageSize, n: u8) -> GenerationRequest {
        GenerationRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            n,
            size,
            seed: Some(7),
            quality: Quality::Standard,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    fn small() -> ImageSize {
        ImageSize {
            width: 256,
            height: 256,
        }
    }

    #[tokio::test]
    async fn same_input_same_bytes_and_each_index_differs() {
        let p = LocalProvider::new(Duration::ZERO);
        let req = request("a lighthouse at dusk", small(), 2);
        let a = p.generate(&req, far()).await.unwrap();
        let b = p.generate(&req, far()).await.unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].bytes, b[0].bytes);
        assert_eq!(a[1].bytes, b[1].bytes);
        assert_ne!(a[0].bytes, a[1].bytes);
    }

    #[tokio::test]
    async fn different_inputs_give_different_images() {
        let p = LocalProvider::new(Duration::ZERO);
        let base = request("a lighthouse at dusk", small(), 1);
        let one = |r: &GenerationRequest| render_png(r, 0).unwrap();
        let reference = one(&base);
        let mut other = base.clone();
        other.prompt = "a lighthouse at dawn".into();
        assert_ne!(one(&other), reference);
        let mut other = base.clone();
        other.seed = Some(8);
        assert_ne!(one(&other), reference);
        let mut other = base.clone();
        other.negative_prompt = Some("fog".into());
        assert_ne!(one(&other), reference);
        assert_eq!(p.generate(&base, far()).await.unwrap()[0].bytes, reference);
    }

    #[test]
    fn every_allowed_size_decodes_at_that_size() {
        for &(width, height) in ALLOWED_SIZES {
            let req = request("sizes", ImageSize { width, height }, 1);
            let bytes = render_png(&req, 0).unwrap();
            let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
                .unwrap()
                .to_rgb8();
            assert_eq!(img.dimensions(), (width, height));
            // Not a flat fill: the picture has some variety.
            let first = *img.get_pixel(0, 0);
            assert!(img.pixels().any(|p| *p != first));
        }
    }

    #[tokio::test]
    async fn latency_is_simulated_and_bounded_by_the_deadline() {
        let p = LocalProvider::new(Duration::from_millis(400));
        let req = request("slow", small(), 1);
        let start = Instant::now();
        let err = p
            .generate(&req, start + Duration::from_millis(40))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Timeout(_)), "{err}");
        assert!(Instant::now() - start < Duration::from_millis(300));
        let start = Instant::now();
        let ok = p.generate(&req, start + Duration::from_secs(30)).await;
        assert_eq!(ok.unwrap().len(), 1);
        assert!(Instant::now() - start >= Duration::from_millis(400));
    }
}
