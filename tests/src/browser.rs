//! Headless Chromium (Debian's `chromium`), for tests of the HTML reports.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run, text};

fn chromium() -> PathBuf {
    crate::which("chromium", &[]).unwrap_or_else(|| {
        panic!("chromium not found: install Debian's package (apt-get install chromium); the README's test command does")
    })
}

fn headless(user_data: &Path) -> Command {
    let mut c = Command::new("timeout");
    c.arg("120").arg(chromium()).args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1000,1200",
    ]);
    c.arg(format!("--user-data-dir={}", user_data.display()));
    c
}

/// A page as Chromium rendered it: its DOM after scripts, and a screenshot.
pub struct Rendered {
    pub dom: String,
    pub width: u32,
    pub height: u32,
    /// RGBA, row by row.
    pub pixels: Vec<u8>,
}

impl Rendered {
    /// Pixels of exactly this colour in the rows `rows`.
    pub fn count_colour(&self, rgb: [u8; 3], rows: std::ops::Range<u32>) -> usize {
        let w = self.width as usize;
        rows.flat_map(|y| (0..w).map(move |x| (y as usize * w + x) * 4))
            .filter(|&i| i + 3 <= self.pixels.len() && self.pixels[i..i + 3] == rgb)
            .count()
    }
}

/// Renders a local HTML file (no network: the page must be self-contained).
pub fn render(page: &Path) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.display());
    let o = run(headless(&dir.path().join("profile")).arg("--dump-dom").arg(&url));
    assert!(o.status.success(), "chromium --dump-dom failed:\n{}", text(&o));
    let dom = String::from_utf8_lossy(&o.stdout).to_string();
    let shot = dir.path().join("shot.png");
    let o = run(headless(&dir.path().join("profile")).arg(format!("--screenshot={}", shot.display())).arg(&url));
    assert!(o.status.success() && shot.exists(), "chromium --screenshot failed:\n{}", text(&o));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().expect("the screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("the screenshot decodes");
    let pixels = match info.color_type {
        png::ColorType::Rgba => buf[..info.buffer_size()].to_vec(),
        png::ColorType::Rgb => buf[..info.buffer_size()].chunks(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    Rendered { dom, width: info.width, height: info.height, pixels }
}
