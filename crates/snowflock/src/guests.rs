//! `snowflock guests`: the shipped guest images.

use anyhow::Context;
use sf_images::{Kind, IMAGES};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GuestsArgs {
    /// Also write every guest ELF into this directory (e.g. to boot one
    /// with QEMU: `qemu-system-x86_64 -M microvm -kernel DIR/hello.elf ...`).
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
}

pub fn main(a: GuestsArgs) -> anyhow::Result<u8> {
    println!("{:<10} {:<8} {:>7}  WHAT IT DOES", "NAME", "KIND", "SIZE");
    for i in IMAGES {
        let kind = match i.kind {
            Kind::Example => "example",
            Kind::Test => "test",
        };
        println!(
            "{:<10} {:<8} {:>5}KB  {}",
            i.name,
            kind,
            i.elf.len() / 1024,
            i.summary
        );
        println!("{:<28}  try: snowflock run {}", "", i.usage);
    }
    if let Some(dir) = a.write {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for i in IMAGES {
            let p = dir.join(format!("{}.elf", i.name));
            std::fs::write(&p, i.elf).with_context(|| format!("cannot write {}", p.display()))?;
        }
        println!("wrote {} guest images to {}", IMAGES.len(), dir.display());
    }
    Ok(0)
}
