//! Monte-Carlo option pricing: a European and an arithmetic-average Asian
//! call, paths split across clones; the parent adds the shares' sums in
//! share order, prints both prices with their standard errors, and checks
//! the European one against the Black–Scholes closed form (exit 1 if it is
//! more than 3 standard errors off).
//!
//! Arguments: `paths=1000000 steps=64 seed=1 strike=100`, and the driver's
//! `clones=N split=K warm=1`.
#![no_std]
#![no_main]

use sf_apps::price::{self, Contract, Sums};
use sf_guest::println;
use sf_shares::{arg_u64, Plan, Shares};

sf_guest::main!(main);

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run() -> Result<(), i32> {
    let plan = Plan::from_args("price")?;
    let paths = arg_u64("price", "paths", 1_000_000)?;
    let seed = arg_u64("price", "seed", 1)?;
    let c = Contract {
        steps: arg_u64("price", "steps", 64)?.clamp(1, 100_000) as u32,
        strike: arg_u64("price", "strike", 100)? as f64,
        ..Contract::default()
    };
    if paths == 0 {
        println!("price: paths must be positive");
        return Err(2);
    }
    println!("price: {paths} paths of {} steps", c.steps);
    let done = sf_shares::run("price", &plan, Shares::PerClone, |s, n| {
        // Share 1 takes the remainder, so the shares add up to `paths`.
        let count = paths / n + if s == 1 { paths % n } else { 0 };
        price::simulate(&c, count, sf_apps::rng::share_seed(seed, s)).encode()
    })?;
    let mut total = Sums::default();
    for r in &done.results {
        let Some(s) = Sums::decode(r) else {
            println!("price: a share's sums are malformed");
            return Err(1);
        };
        total.add(&s);
    }
    let p = price::prices(&c, &total);
    done.finish("price");
    let bs = price::black_scholes_call(&c);
    let off = (p.euro - bs).abs() / p.euro_se;
    println!(
        "price: european {:.4} +- {:.4} (black-scholes {bs:.4}, {off:.2} se off)",
        p.euro, p.euro_se
    );
    println!("price: asian {:.4} +- {:.4}", p.asian, p.asian_se);
    println!(
        "price: paths={} answer={:016x}",
        total.paths,
        sf_apps::digest(&total.encode())
    );
    if off > 3.0 {
        println!("price: black-scholes check FAILED");
        return Err(1);
    }
    println!("price: black-scholes check ok");
    Ok(())
}
