//! `snowflock gen-fasta`: writes a synthetic DNA database for the `align`
//! guest, with mutated copies of its queries planted in it. The guest makes
//! the same queries from the same seed, so `snowflock run --input db=FILE
//! align -- seed=S queries=Q qlen=L` finds what was planted.

use anyhow::{bail, Context};
use sf_apps::fasta::{self, GenSpec};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct GenFastaArgs {
    /// The file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Size of the database in MiB (the last record may run a little past).
    #[arg(long, default_value_t = 64)]
    pub mib: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many queries to plant (the guest's `queries=`).
    #[arg(long, default_value_t = 32)]
    pub queries: usize,
    /// Query length in bases (the guest's `qlen=`).
    #[arg(long, default_value_t = 100)]
    pub qlen: usize,
    /// Plant a query into every P-th record (the guest's `plant_every=`).
    #[arg(long, default_value_t = 50)]
    pub plant_every: u64,
}

pub fn main(a: GenFastaArgs) -> anyhow::Result<u8> {
    let t = std::time::Instant::now();
    let bytes = write(&a.out, &a)?;
    eprintln!(
        "wrote {} ({:.1} MiB, {} queries of {} bases planted every {} records) in {:.2} s",
        a.out.display(),
        bytes as f64 / (1 << 20) as f64,
        a.queries,
        a.qlen,
        a.plant_every,
        t.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Writes the database `a` describes to `path`; returns its size.
pub fn write(path: &Path, a: &GenFastaArgs) -> anyhow::Result<u64> {
    if a.queries == 0 || a.qlen < sf_apps::align::K || a.plant_every == 0 {
        bail!(
            "--queries and --plant-every must be positive and --qlen at least {}",
            sf_apps::align::K
        );
    }
    let queries = fasta::queries(a.seed, a.queries, a.qlen);
    let spec = GenSpec {
        seed: a.seed,
        bytes: a.mib << 20,
        queries: &queries,
        plant_every: a.plant_every,
    };
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let (mut total, mut err) = (0u64, None);
    fasta::generate(&spec, |chunk| {
        if err.is_none() {
            total += chunk.len() as u64;
            err = w.write_all(chunk).err();
        }
    });
    if let Some(e) = err {
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(total)
}
