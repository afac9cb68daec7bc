//! Sequence search: a batch of DNA queries against a FASTA database, split
//! across clones by database bytes; the parent merges every share's best
//! hits and prints the top ones per query (and writes them to `hits.tsv`
//! when the host gave an output directory).
//!
//! The database is the input `db` (`snowflock gen-fasta` writes one with
//! planted matches), or, without it, generated here from the seed
//! (`db_mib=N`, the same bytes as `gen-fasta --seed S --mib N`). Queries
//! are the input `queries` (FASTA) or generated from the seed, as
//! `gen-fasta` plants them.
//!
//! Arguments: `seed=S queries=Q qlen=L top=T min_score=M db_mib=N
//! plant_every=P`, and the driver's `clones=N split=K warm=1`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use sf_apps::align::{self, Index, Params};
use sf_apps::fasta::{self, GenSpec};
use sf_guest::{input, output, println};
use sf_shares::{arg_u64, Plan, Shares};

sf_guest::main!(main);

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run() -> Result<(), i32> {
    let plan = Plan::from_args("align")?;
    let seed = arg_u64("align", "seed", 1)?;
    let nq = arg_u64("align", "queries", 32)? as usize;
    let qlen = arg_u64("align", "qlen", 100)? as usize;
    let p = Params {
        top: arg_u64("align", "top", 3)? as usize,
        min_score: arg_u64("align", "min_score", 60)? as i32,
    };
    let queries: Vec<Vec<u8>> = match input::get("queries") {
        Some(q) => fasta::records(q, 0..q.len())
            .map(|r| {
                let mut v = Vec::new();
                fasta::residues(r.body, &mut v);
                v
            })
            .collect(),
        None => fasta::queries(seed, nq, qlen),
    };
    if queries.is_empty() || queries.iter().any(|q| q.len() < align::K) {
        println!(
            "align: need at least one query of {} bases or more",
            align::K
        );
        return Err(2);
    }
    let generated;
    let input_db = input::get("db");
    let from_input = input_db.is_some();
    let db: &[u8] = match input_db {
        Some(db) => db,
        None => {
            let mib = arg_u64("align", "db_mib", 16)?;
            let spec = GenSpec {
                seed,
                bytes: mib << 20,
                queries: &queries,
                plant_every: arg_u64("align", "plant_every", 50)?,
            };
            let mut v = Vec::with_capacity((mib << 20) as usize + (64 << 10));
            fasta::generate(&spec, |c| v.extend_from_slice(c));
            generated = v;
            &generated
        }
    };
    println!(
        "align: {} queries, database {} bytes, top {}",
        queries.len(),
        db.len(),
        p.top
    );
    let index = Index::new(&queries);
    let done = sf_shares::run("align", &plan, Shares::PerClone, |s, n| {
        let range = sf_apps::share_range(db.len(), s, n);
        // A clone on another host streams its share of the input ahead of
        // the search instead of faulting it in window by window.
        if from_input && !range.is_empty() {
            if let Err(e) = input::will_read("db", range.clone()) {
                println!("align: will_read of the share failed: {e:?}");
            }
        }
        let hits = align::search(db, range, &queries, &index, &p);
        align::encode(&hits)
    })?;
    let mut all = Vec::new();
    for r in &done.results {
        match align::decode(r) {
            Some(h) => all.extend(h),
            None => {
                println!("align: a share's hits are malformed");
                return Err(1);
            }
        }
    }
    let merged = align::merge(all, queries.len(), p.top);
    done.finish("align");
    let mut tsv = String::from("query\trank\tscore\trecord\tend\n");
    let mut rank = 0;
    for (i, h) in merged.iter().enumerate() {
        rank = if i > 0 && merged[i - 1].query == h.query {
            rank + 1
        } else {
            1
        };
        let name = fasta::records(db, h.record as usize..h.record as usize + 1)
            .next()
            .map(|r| String::from_utf8_lossy(r.name).into_owned())
            .unwrap_or_default();
        tsv.push_str(&format!(
            "{}\t{rank}\t{}\t{name}\t{}\n",
            h.query, h.score, h.end
        ));
    }
    for line in tsv.lines().skip(1).take(12) {
        println!("align: hit {line}");
    }
    println!(
        "align: hits={} answer={:016x}",
        merged.len(),
        sf_apps::digest(&align::encode(&merged))
    );
    write_output("align", "hits.tsv", tsv.as_bytes());
    Ok(())
}

/// Writes an output if the host gave a directory; says so either way.
fn write_output(app: &str, name: &str, bytes: &[u8]) {
    match output::write(name, bytes) {
        Ok(()) => println!("{app}: wrote output {name} ({} bytes)", bytes.len()),
        Err(output::OutputError::NoOutputDir) => println!("{app}: no output directory"),
        Err(e) => println!("{app}: output {name} not written: {e:?}"),
    }
}
