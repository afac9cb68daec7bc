//! Minimal line-chart renderer for benchmark results.
//!
//! Writes an RGB PNG using only pure-Rust crates (`png` to encode, `font8x8`
//! bitmap glyphs for text) so the benchmark needs no system libraries or font
//! files. Every pixel write is bounds-checked, so no input can make it panic.

use std::io::{self, BufWriter};
use std::path::Path;

use font8x8::legacy::BASIC_LEGACY;

pub struct Series {
    pub name: String,
    pub rgb: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

const W: i64 = 900;
const H: i64 = 560;
/// All text uses 8x8 glyphs doubled; 1x is too small to read comfortably.
const TS: i64 = 2;
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];
const LEGEND_ROW: i64 = 22;
/// Long series names would squeeze the plot area to nothing.
const MAX_NAME: usize = 22;

struct Canvas(Vec<u8>);

impl Canvas {
    // Dropping off-canvas pixels here is what lets callers skip clamping.
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..W).contains(&x) && (0..H).contains(&y) {
            let i = ((y * W + x) * 3) as usize;
            self.0[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for dy in 0..h {
            for dx in 0..w {
                self.set(x + dx, y + dy, c);
            }
        }
    }

    /// Bresenham, stamping a 2x2 square per step to get a 2-px-wide line.
    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = ((x1 - x0).signum(), (y1 - y0).signum());
        let mut err = dx + dy;
        loop {
            self.rect(x0 - 1, y0 - 1, 2, 2, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// Horizontal text has (x, y) at its top-left; vertical text is rotated
    /// 90° counter-clockwise (the usual y-axis label) with (x, y) at its bottom-left.
    fn text(&mut self, x: i64, y: i64, s: &str, vertical: bool) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = BASIC_LEGACY
                .get(ch as usize)
                .unwrap_or(&BASIC_LEGACY[b'?' as usize]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in (0..8).filter(|col| bits >> col & 1 == 1) {
                    let (gx, gy) = (i as i64 * 8 + col, row as i64);
                    let (px, py) = match vertical {
                        true => (x + gy * TS, y - (gx + 1) * TS),
                        false => (x + gx * TS, y + gy * TS),
                    };
                    self.rect(px, py, TS, TS, BLACK);
                }
            }
        }
    }
}

fn text_w(s: &str) -> i64 {
    s.chars().count() as i64 * 8 * TS
}

/// Rounds span/target up to 1, 2 or 5 times a power of ten, so tick labels stay short.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let m = [1.0, 2.0, 5.0].into_iter().find(|&m| raw / mag <= m);
    m.unwrap_or(10.0) * mag
}

/// Multiples of `step` within [lo, hi]; capped so a degenerate range cannot loop long.
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step).ceil();
    let all = (0..=60).map(|k| (first + k as f64) * step);
    all.take_while(|&v| v <= hi).collect()
}

fn fmt_val(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e6).contains(&v.abs()) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn render(chart: &Chart) -> Vec<u8> {
    let mut cv = Canvas(vec![255; (W * H * 3) as usize]);
    let log = chart.log_x;
    // Log axes cannot show x <= 0, and non-finite values have no position at all.
    let valid = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log || x > 0.0);
    let tx = |x: f64| if log { x.log10() } else { x };
    let series_pts = |s: &Series| {
        let mut p: Vec<(f64, f64)> = s.points.iter().copied().filter(valid).collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let pts: Vec<(f64, f64)> = chart.series.iter().flat_map(series_pts).collect();

    let ymax = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let ytop = ymax.min(f64::MAX / 1.1) * 1.1;
    let ytop = if ytop > 0.0 { ytop } else { 1.0 };
    let yticks = ticks(0.0, ytop, nice_step(ytop, 6.0));

    let xs = pts.iter().map(|p| tx(p.0));
    let (lo, hi) = (
        xs.clone().fold(f64::INFINITY, f64::min),
        xs.fold(f64::NEG_INFINITY, f64::max),
    );
    // Padding keeps end markers off the axes and gives a lone x value a range.
    let (xlo, xhi) = match hi - lo {
        span if span > 0.0 => (lo - span * 0.05, hi + span * 0.05),
        0.0 => (lo - lo.abs() * 0.1 - 0.5, hi + hi.abs() * 0.1 + 0.5),
        _ => (0.0, 1.0),
    };
    let xticks = if log {
        let mut v: Vec<f64> = pts.iter().map(|p| p.0).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    } else {
        ticks(xlo, xhi, nice_step(xhi - xlo, 8.0))
    };

    // Margins are sized from the actual labels so nothing is cut off.
    let ylabels: Vec<String> = yticks.iter().map(|&v| fmt_val(v)).collect();
    let ylab_w = ylabels.iter().map(|s| text_w(s)).max().unwrap_or(0);
    let short = |s: &Series| s.name.chars().take(MAX_NAME).collect::<String>();
    let names: Vec<String> = chart.series.iter().map(short).collect();
    let legend_w = names.iter().map(|s| text_w(s)).max().map_or(0, |w| w + 44);
    let (left, top, bottom) = (12 + 8 * TS + 12 + ylab_w + 8, 52, H - 62);
    let right = W - 20 - if legend_w > 0 { legend_w + 16 } else { 0 };
    let (pw, ph) = ((right - left) as f64, (bottom - top) as f64);
    // Clamping before the cast keeps negative/huge values on the plot edge.
    let map = |x: f64, y: f64| {
        let px = left as f64 + (tx(x) - xlo) / (xhi - xlo) * pw;
        let py = bottom as f64 - y / ytop * ph;
        // max/min (unlike clamp) also send NaN from an infinite span to the edge.
        let px = px.max(left as f64).min(right as f64) as i64;
        (px, py.max(top as f64).min(bottom as f64) as i64)
    };

    for (&v, label) in yticks.iter().zip(&ylabels) {
        let (_, py) = map(xlo, v);
        if v > 0.0 {
            cv.rect(left + 1, py, right - left, 1, GRID);
        }
        cv.rect(left - 6, py, 6, 1, BLACK);
        cv.text(left - 10 - text_w(label), py - 4 * TS, label, false);
    }
    let mut last_label_end = i64::MIN;
    for &v in &xticks {
        let (px, _) = map(v, 0.0);
        cv.rect(px, bottom, 1, 6, BLACK);
        let label = fmt_val(v);
        let lx = px - text_w(&label) / 2;
        // Dense log ticks would overprint each other; keep the tick, drop the label.
        if lx > last_label_end + 8 {
            cv.text(lx, bottom + 10, &label, false);
            last_label_end = lx + text_w(&label);
        }
    }
    cv.rect(left, top, 1, bottom - top + 1, BLACK);
    cv.rect(left, bottom, right - left + 1, 1, BLACK);

    cv.text((W - text_w(&chart.title)) / 2, 14, &chart.title, false);
    let (cx, cy) = ((left + right) / 2, (top + bottom) / 2);
    let xl_x = cx - text_w(&chart.x_label) / 2;
    cv.text(xl_x, bottom + 36, &chart.x_label, false);
    cv.text(12, cy + text_w(&chart.y_label) / 2, &chart.y_label, true);

    for s in &chart.series {
        let px: Vec<(i64, i64)> = series_pts(s).into_iter().map(|(x, y)| map(x, y)).collect();
        for w in px.windows(2) {
            cv.line(w[0], w[1], s.rgb);
        }
        for &(x, y) in &px {
            cv.rect(x - 3, y - 3, 7, 7, s.rgb);
        }
    }

    if legend_w > 0 {
        let (lx, ly, lh) = (right + 16, top, names.len() as i64 * LEGEND_ROW + 12);
        cv.rect(lx, ly, legend_w, 1, BLACK);
        cv.rect(lx, ly + lh - 1, legend_w, 1, BLACK);
        cv.rect(lx, ly, 1, lh, BLACK);
        cv.rect(lx + legend_w - 1, ly, 1, lh, BLACK);
        for (i, (s, name)) in chart.series.iter().zip(&names).enumerate() {
            let ry = ly + 8 + i as i64 * LEGEND_ROW;
            cv.rect(lx + 10, ry, 16, 16, s.rgb);
            cv.text(lx + 34, ry, name, false);
        }
    }
    cv.0
}

pub fn write_png(chart: &Chart, path: &Path) -> io::Result<()> {
    let pixels = render(chart);
    let file = BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(io::Error::other)?;
    writer.write_image_data(&pixels).map_err(io::Error::other)?;
    writer.finish().map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const COLORS: [[u8; 3]; 3] = [[31, 119, 180], [214, 39, 40], [44, 160, 44]];

    fn chart(series: Vec<Series>) -> Chart {
        let (title, x_label, y_label) = ("clone latency vs clones (1024 MiB)", "clones", "ms");
        let (title, x_label, y_label) = (title.into(), x_label.into(), y_label.into());
        let log_x = true;
        Chart {
            title,
            x_label,
            y_label,
            log_x,
            series,
        }
    }

    fn sample() -> Chart {
        let names = ["copy", "reflink", "snapshot"];
        let slopes = [(305.0, 5.0), (90.0, 6.0), (9.5, 3.0)];
        let series = (0..3).map(|i| {
            let (a, b) = slopes[i];
            let points = [1.0, 4.0, 16.0, 32.0].map(|x| (x, a * x + b)).to_vec();
            let (name, rgb) = (names[i].to_string(), COLORS[i]);
            Series { name, rgb, points }
        });
        chart(series.collect())
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("plot_test_{}_{name}.png", std::process::id()))
    }

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn writes_decodable_png_with_series_colors() {
        // Set PLOT_SAMPLE=/some/file.png to keep the image for a visual check.
        let keep = std::env::var_os("PLOT_SAMPLE").map(PathBuf::from);
        let path = keep.clone().unwrap_or_else(|| tmp("sample"));
        write_png(&sample(), &path).unwrap();
        let (w, h, buf) = decode(&path);
        if keep.is_none() {
            std::fs::remove_file(path).ok();
        }
        assert_eq!((w, h), (W as u32, H as u32));
        for c in COLORS {
            // More than the 16x16 legend swatch alone proves the line was drawn.
            let n = buf.chunks(3).filter(|p| *p == c).count();
            assert!(n > 500, "color {c:?} has only {n} pixels");
        }
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let (nan, inf, big, tiny) = (f64::NAN, f64::INFINITY, f64::MAX, f64::MIN_POSITIVE);
        let cases: Vec<Vec<Vec<(f64, f64)>>> = vec![
            vec![],
            vec![vec![]],
            vec![vec![(nan, 1.0), (2.0, inf), (0.0, 1.0), (-3.0, -1.0)]],
            vec![vec![(4.0, 7.0)]],
            vec![vec![(1.0, 0.0), (2.0, 0.0)]],
            vec![vec![(1e300, big), (1e-300, -big), (tiny, 1e-320)]],
            vec![vec![(1.0, 1.0)]; 40],
        ];
        for (i, case) in cases.into_iter().enumerate() {
            for log_x in [true, false] {
                let (name, rgb) = ("é".repeat(i * 20), COLORS[0]);
                let s = case.iter().map(|p| (name.clone(), p.clone()));
                let mut c = chart(
                    s.map(|(name, points)| Series { name, rgb, points })
                        .collect(),
                );
                (c.log_x, c.title) = (log_x, name.repeat(10));
                let path = tmp(&format!("degenerate{i}_{log_x}"));
                write_png(&c, &path).unwrap();
                assert_eq!(decode(&path).0, W as u32);
                std::fs::remove_file(path).ok();
            }
        }
    }
}
