//! Ray tracer: renders a scene in tiles of interleaved rows, one tile per
//! clone, each as large as the clone may hand back through `join` (one
//! round when the ticket's result cap holds the image's share, rounds of
//! smaller tiles otherwise); the parent assembles the image and writes it
//! as `render.png` when the host gave an output directory.
//!
//! Arguments: `w=640 h=480 ss=2` (ss x ss samples per pixel), and the
//! driver's `clones=N split=K warm=1` (`split=K`: K tiles in one VM).
#![no_std]
#![no_main]

extern crate alloc;

use sf_apps::render::{self, Tiles, View};
use sf_guest::{output, println};
use sf_shares::{arg_u64, Plan, Shares};

sf_guest::main!(main);

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run() -> Result<(), i32> {
    let plan = Plan::from_args("render")?;
    let view = View {
        width: arg_u64("render", "w", 640)? as u32,
        height: arg_u64("render", "h", 480)? as u32,
        ss: arg_u64("render", "ss", 2)? as u32,
    };
    if view.width == 0 || view.height == 0 || view.width > 4096 || view.height > 4096 || view.ss > 8
    {
        println!("render: w and h must be 1..=4096, ss at most 8");
        return Err(2);
    }
    // At least one tile per clone, each within what a clone may hand back.
    let fit = |clones: u64, share_max: usize| {
        (Tiles::new(&view, share_max).count as u64).max(clones.min(view.height as u64))
    };
    println!(
        "render: {}x{} ss={} in tiles of interleaved rows",
        view.width, view.height, view.ss
    );
    let done = sf_shares::run("render", &plan, Shares::Fit(&fit), |s, n| {
        render::render_rows(&view, Tiles::with_count(&view, n as u32).rows(s as u32 - 1))
    })?;
    let t = sf_guest::time::now_ns();
    let tiles = Tiles::with_count(&view, done.results.len() as u32);
    let Some(rgb) = tiles.assemble(&view, &done.results) else {
        println!("render: the tiles do not make up the image");
        return Err(1);
    };
    let assembled = sf_guest::time::now_ns();
    let Some(png) = sf_apps::png::encode_rgb(view.width, view.height, &rgb) else {
        println!("render: the image cannot be encoded");
        return Err(1);
    };
    let encoded = sf_guest::time::now_ns();
    done.finish("render");
    println!(
        "render: assemble_ns={} encode_ns={}",
        assembled - t,
        encoded - assembled
    );
    println!(
        "render: png {} bytes answer={:016x}",
        png.len(),
        sf_apps::digest(&rgb)
    );
    match output::write("render.png", &png) {
        Ok(()) => println!("render: wrote output render.png"),
        Err(output::OutputError::NoOutputDir) => println!("render: no output directory"),
        Err(e) => println!("render: output render.png not written: {e:?}"),
    }
    Ok(())
}
