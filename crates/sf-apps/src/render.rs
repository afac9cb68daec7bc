//! A small ray tracer: spheres on a checkered plane, two point lights with
//! hard shadows, mirror reflections and supersampling. A pixel's colour is
//! a function of its coordinates only (f64 with libm, the same bits on host
//! and guest), so tiles rendered anywhere assemble into the same image.

use alloc::vec::Vec;
use core::ops::{Add, Mul, Sub};
use libm::{floor, pow, sqrt};

#[derive(Clone, Copy, Debug, PartialEq)]
struct V(f64, f64, f64);

impl Add for V {
    type Output = V;
    fn add(self, o: V) -> V {
        V(self.0 + o.0, self.1 + o.1, self.2 + o.2)
    }
}
impl Sub for V {
    type Output = V;
    fn sub(self, o: V) -> V {
        V(self.0 - o.0, self.1 - o.1, self.2 - o.2)
    }
}
impl Mul<f64> for V {
    type Output = V;
    fn mul(self, k: f64) -> V {
        V(self.0 * k, self.1 * k, self.2 * k)
    }
}
impl V {
    fn dot(self, o: V) -> f64 {
        self.0 * o.0 + self.1 * o.1 + self.2 * o.2
    }
    fn times(self, o: V) -> V {
        V(self.0 * o.0, self.1 * o.1, self.2 * o.2)
    }
    fn unit(self) -> V {
        self * (1.0 / sqrt(self.dot(self)))
    }
}

struct Sphere {
    center: V,
    radius: f64,
    color: V,
    mirror: f64,
}

const SPHERES: [Sphere; 5] = [
    Sphere {
        center: V(0.0, 1.0, 0.0),
        radius: 1.0,
        color: V(0.9, 0.9, 0.95),
        mirror: 0.8,
    },
    Sphere {
        center: V(-2.2, 0.7, 0.8),
        radius: 0.7,
        color: V(0.9, 0.2, 0.15),
        mirror: 0.15,
    },
    Sphere {
        center: V(2.0, 0.6, 1.2),
        radius: 0.6,
        color: V(0.15, 0.5, 0.9),
        mirror: 0.25,
    },
    Sphere {
        center: V(0.9, 0.35, 2.2),
        radius: 0.35,
        color: V(0.95, 0.75, 0.1),
        mirror: 0.1,
    },
    Sphere {
        center: V(-0.9, 0.3, 2.4),
        radius: 0.3,
        color: V(0.2, 0.8, 0.3),
        mirror: 0.3,
    },
];

const LIGHTS: [(V, f64); 2] = [(V(-4.0, 6.0, 5.0), 0.75), (V(5.0, 4.0, 3.0), 0.45)];
const EYE: V = V(0.0, 1.6, 6.5);

/// Nearest hit along a ray: distance, point, normal, colour, mirror.
fn hit(o: V, d: V) -> Option<(f64, V, V, V, f64)> {
    let mut best: Option<(f64, V, V, V, f64)> = None;
    for s in &SPHERES {
        let oc = o - s.center;
        let b = oc.dot(d);
        let disc = b * b - (oc.dot(oc) - s.radius * s.radius);
        if disc > 0.0 {
            let t = -b - sqrt(disc);
            if t > 1e-6 && best.is_none_or(|h| t < h.0) {
                let p = o + d * t;
                best = Some((t, p, (p - s.center) * (1.0 / s.radius), s.color, s.mirror));
            }
        }
    }
    if d.1 < -1e-9 {
        let t = -o.1 / d.1;
        if t > 1e-6 && best.is_none_or(|h| t < h.0) {
            let p = o + d * t;
            let check = (floor(p.0) + floor(p.2)) as i64 & 1 == 0;
            let color = if check {
                V(0.85, 0.85, 0.8)
            } else {
                V(0.2, 0.2, 0.25)
            };
            best = Some((t, p, V(0.0, 1.0, 0.0), color, 0.2));
        }
    }
    best
}

fn trace(o: V, d: V, depth: u32) -> V {
    let Some((_, p, n, color, mirror)) = hit(o, d) else {
        let k = 0.5 * (d.1 + 1.0);
        return V(0.55, 0.7, 0.95) * k + V(1.0, 1.0, 1.0) * (1.0 - k);
    };
    let p = p + n * 1e-7;
    let mut light = 0.1; // ambient
    for &(pos, power) in &LIGHTS {
        let to = pos - p;
        let dist = sqrt(to.dot(to));
        let l = to * (1.0 / dist);
        let lambert = n.dot(l);
        if lambert > 0.0 && hit(p, l).is_none_or(|h| h.0 > dist) {
            let r = l - n * (2.0 * lambert);
            let spec = pow(r.dot(d).max(0.0), 40.0);
            light += power * (lambert + spec);
        }
    }
    let mut c = color * light;
    if depth < 4 && mirror > 0.0 {
        let r = d - n * (2.0 * d.dot(n));
        c = c * (1.0 - mirror)
            + trace(p, r, depth + 1).times(color * 0.5 + V(0.5, 0.5, 0.5)) * mirror;
    }
    c
}

/// The image's size and quality.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub width: u32,
    pub height: u32,
    /// Samples per pixel along each axis (ss x ss per pixel).
    pub ss: u32,
}

/// RGB bytes of rows `rows` of the image, in that order.
pub fn render_rows(v: &View, rows: impl Iterator<Item = u32>) -> Vec<u8> {
    // Sized once: a growing buffer writes every byte again on each
    // doubling, and in a fresh clone each page it moves to is a first
    // write (a copy-on-write or zero-fill fault on the host).
    let mut out = Vec::with_capacity(rows.size_hint().0 * v.width as usize * 3);
    let (w, h) = (v.width as f64, v.height as f64);
    let ss = v.ss.max(1);
    let scale = 2.0 / h;
    for y in rows {
        for x in 0..v.width {
            let mut c = V(0.0, 0.0, 0.0);
            for sy in 0..ss {
                for sx in 0..ss {
                    let px = x as f64 + (sx as f64 + 0.5) / ss as f64;
                    let py = y as f64 + (sy as f64 + 0.5) / ss as f64;
                    let d = V((px - w / 2.0) * scale, (h / 2.0 - py) * scale - 0.25, -2.6).unit();
                    c = c + trace(EYE, d, 0);
                }
            }
            let c = c * (1.0 / (ss * ss) as f64);
            for ch in [c.0, c.1, c.2] {
                out.push((sqrt(ch.clamp(0.0, 1.0)) * 255.0 + 0.5) as u8);
            }
        }
    }
    out
}

/// The image cut into tiles of at most `max_bytes` of RGB each. Tile `t`
/// (0-based) of `n` holds rows `t, t + n, t + 2n, ...`: interleaved rows
/// give every tile the same mix of cheap sky and costly reflections, so the
/// clones of a round finish together.
#[derive(Clone, Copy, Debug)]
pub struct Tiles {
    pub count: u32,
    height: u32,
}

impl Tiles {
    /// As few tiles as keep each within `max_bytes` of RGB.
    pub fn new(v: &View, max_bytes: usize) -> Tiles {
        let rows = (max_bytes / (v.width.max(1) as usize * 3)).clamp(1, v.height.max(1) as usize);
        Tiles::with_count(v, v.height.div_ceil(rows as u32))
    }

    /// `count` tiles (1..=height: none is empty).
    pub fn with_count(v: &View, count: u32) -> Tiles {
        Tiles {
            count: count.clamp(1, v.height.max(1)),
            height: v.height,
        }
    }

    /// The image rows of tile `t`.
    pub fn rows(&self, t: u32) -> impl Iterator<Item = u32> {
        (t..self.height).step_by(self.count as usize)
    }

    /// The whole image's RGB from every tile's RGB (in tile order), or None
    /// if a tile has the wrong size.
    pub fn assemble(&self, v: &View, tiles: &[Vec<u8>]) -> Option<Vec<u8>> {
        let row = v.width as usize * 3;
        let mut rgb = alloc::vec![0u8; row * v.height as usize];
        if tiles.len() != self.count as usize {
            return None;
        }
        for (t, bytes) in tiles.iter().enumerate() {
            let rows: Vec<u32> = self.rows(t as u32).collect();
            if bytes.len() != rows.len() * row {
                return None;
            }
            for (y, line) in rows.iter().zip(bytes.chunks(row)) {
                let at = *y as usize * row;
                rgb[at..at + row].copy_from_slice(line);
            }
        }
        Some(rgb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_assemble_into_the_whole_image() {
        let v = View {
            width: 64,
            height: 48,
            ss: 2,
        };
        let whole = render_rows(&v, 0..48);
        assert_eq!(whole.len(), 64 * 48 * 3);
        // 10 rows per tile: 5 tiles, the last one shorter.
        let t = Tiles::new(&v, 64 * 3 * 10 + 5);
        assert_eq!(t.count, 5);
        let tiles: Vec<Vec<u8>> = (0..5).map(|i| render_rows(&v, t.rows(i))).collect();
        assert_eq!(tiles[4].len(), 9 * 64 * 3);
        assert_eq!(t.assemble(&v, &tiles).unwrap(), whole);
        assert!(t.assemble(&v, &tiles[..4]).is_none());
        // One tile per clone, however the rows divide; never an empty tile.
        for n in [1, 2, 7, 48, 1000] {
            let t = Tiles::with_count(&v, n);
            let tiles: Vec<Vec<u8>> = (0..t.count).map(|i| render_rows(&v, t.rows(i))).collect();
            assert!(tiles.iter().all(|b| !b.is_empty()));
            assert_eq!(t.assemble(&v, &tiles).unwrap(), whole, "{n} tiles");
        }
        // Not blank: sky, floor and spheres give many distinct colours.
        let mut colours: Vec<&[u8]> = whole.chunks(3).collect();
        colours.sort();
        colours.dedup();
        assert!(colours.len() > 100, "{}", colours.len());
    }
}
