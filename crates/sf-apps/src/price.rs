//! Monte-Carlo pricing of a European and an arithmetic-average Asian call
//! on one asset following geometric Brownian motion, and the Black–Scholes
//! closed form the European price is checked against. A share simulates its
//! own paths from its own seed; the shares' sums add up in share order, so
//! N clones and one VM doing the same N shares give the same bits.

use crate::codec::{Reader, Writer};
use crate::rng::Rng;
use alloc::vec::Vec;
use libm::{erfc, exp, log, sqrt};

#[derive(Clone, Copy, Debug)]
pub struct Contract {
    pub spot: f64,
    pub strike: f64,
    pub rate: f64,
    pub vol: f64,
    pub years: f64,
    /// Averaging dates of the Asian option (also the path's time steps).
    pub steps: u32,
}

impl Default for Contract {
    fn default() -> Self {
        Contract {
            spot: 100.0,
            strike: 100.0,
            rate: 0.05,
            vol: 0.2,
            years: 1.0,
            steps: 64,
        }
    }
}

/// Undiscounted payoff sums of a set of paths.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sums {
    pub paths: u64,
    pub euro: f64,
    pub euro_sq: f64,
    pub asian: f64,
    pub asian_sq: f64,
}

impl Sums {
    pub fn add(&mut self, o: &Sums) {
        self.paths += o.paths;
        self.euro += o.euro;
        self.euro_sq += o.euro_sq;
        self.asian += o.asian;
        self.asian_sq += o.asian_sq;
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.paths)
            .f64(self.euro)
            .f64(self.euro_sq)
            .f64(self.asian)
            .f64(self.asian_sq);
        w.0
    }

    pub fn decode(b: &[u8]) -> Option<Sums> {
        let mut r = Reader(b);
        let s = Sums {
            paths: r.u64()?,
            euro: r.f64()?,
            euro_sq: r.f64()?,
            asian: r.f64()?,
            asian_sq: r.f64()?,
        };
        r.is_empty().then_some(s)
    }
}

/// Simulates `paths` paths from `seed`.
pub fn simulate(c: &Contract, paths: u64, seed: u64) -> Sums {
    let mut rng = Rng::new(seed);
    let steps = c.steps.max(1);
    let dt = c.years / steps as f64;
    let drift = (c.rate - 0.5 * c.vol * c.vol) * dt;
    let diffusion = c.vol * sqrt(dt);
    let mut s = Sums {
        paths,
        ..Sums::default()
    };
    let mut spare: Option<f64> = None;
    for _ in 0..paths {
        let (mut log_s, mut sum) = (log(c.spot), 0.0);
        let mut price = c.spot;
        for _ in 0..steps {
            let z = match spare.take() {
                Some(z) => z,
                None => {
                    let (a, b) = rng.normal_pair();
                    spare = Some(b);
                    a
                }
            };
            log_s += drift + diffusion * z;
            price = exp(log_s);
            sum += price;
        }
        let euro = (price - c.strike).max(0.0);
        let asian = (sum / steps as f64 - c.strike).max(0.0);
        s.euro += euro;
        s.euro_sq += euro * euro;
        s.asian += asian;
        s.asian_sq += asian * asian;
    }
    s
}

/// Discounted prices and their Monte-Carlo standard errors.
#[derive(Clone, Copy, Debug)]
pub struct Prices {
    pub euro: f64,
    pub euro_se: f64,
    pub asian: f64,
    pub asian_se: f64,
}

pub fn prices(c: &Contract, s: &Sums) -> Prices {
    let n = s.paths.max(1) as f64;
    let df = exp(-c.rate * c.years);
    let stat = |sum: f64, sq: f64| {
        let mean = sum / n;
        let var = (sq / n - mean * mean).max(0.0);
        (df * mean, df * sqrt(var / n))
    };
    let (euro, euro_se) = stat(s.euro, s.euro_sq);
    let (asian, asian_se) = stat(s.asian, s.asian_sq);
    Prices {
        euro,
        euro_se,
        asian,
        asian_se,
    }
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / core::f64::consts::SQRT_2)
}

/// The Black–Scholes price of the European call.
pub fn black_scholes_call(c: &Contract) -> f64 {
    let st = c.vol * sqrt(c.years);
    let d1 = (log(c.spot / c.strike) + (c.rate + 0.5 * c.vol * c.vol) * c.years) / st;
    let d2 = d1 - st;
    c.spot * normal_cdf(d1) - c.strike * exp(-c.rate * c.years) * normal_cdf(d2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn black_scholes_reference_value() {
        // S=K=100, r=5%, sigma=20%, T=1: 10.4506 (textbook value).
        let bs = black_scholes_call(&Contract::default());
        assert!((bs - 10.4506).abs() < 1e-4, "{bs}");
    }

    #[test]
    fn monte_carlo_agrees_with_black_scholes_and_shares_add_up() {
        let c = Contract {
            steps: 16,
            ..Contract::default()
        };
        let mut total = Sums::default();
        for i in 1..=4 {
            let part = simulate(&c, 50_000, crate::rng::share_seed(3, i));
            total.add(&Sums::decode(&part.encode()).unwrap());
        }
        let p = prices(&c, &total);
        let bs = black_scholes_call(&c);
        assert!((p.euro - bs).abs() < 4.0 * p.euro_se, "{p:?} vs {bs}");
        // An average is less volatile: the Asian call is cheaper.
        assert!(p.asian < p.euro && p.asian > 3.0, "{p:?}");
        assert!(Sums::decode(&[0; 39]).is_none() && Sums::decode(&[0; 41]).is_none());
    }
}
