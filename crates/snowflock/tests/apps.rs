//! End-to-end tests of the application guests: each one's answer on local
//! clones equals its answer on one VM computing the same shares, and both
//! equal the answer the host computes with the same compute cores
//! (`sf-apps`); `bench apps` writes the documented keys.

mod common;
use common::*;
use sf_apps::fasta;
use std::process::Command;
use std::time::Duration;

/// The `APP: ... answer=HEX` value of a run.
fn answer(r: &Run, app: &str) -> String {
    let head = format!("{app}: ");
    r.stdout
        .lines()
        .filter(|l| l.starts_with(&head))
        .find_map(|l| l.split("answer=").nth(1))
        .map(|a| a.trim().to_string())
        .unwrap_or_else(|| panic!("{app} printed no answer\n{}", r.describe()))
}

/// Runs `app` on 256 MiB with `args`, expecting exit 0.
fn run_app(app: &str, args: &[&str]) -> Run {
    let mut a = vec!["run", "--mem", "256M", app, "--"];
    a.extend_from_slice(args);
    let r = snowflock(&a);
    r.assert_no_host_panic().assert_code(0);
    r
}

/// Every share's clone result equals the parent's own (warm pass).
fn assert_shares_match(r: &Run, app: &str, shares: usize) {
    let matched = r
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{app}: share ")) && l.ends_with("match=yes"))
        .count();
    assert_eq!(matched, shares, "{}", r.describe());
}

/// The host's own answer of `align` over `db` (the same compute core).
fn host_align_answer(db: &[u8], seed: u64, queries: usize) -> String {
    let queries = fasta::queries(seed, queries, 100);
    let index = sf_apps::align::Index::new(&queries);
    let p = sf_apps::align::Params {
        top: 3,
        min_score: 60,
    };
    let hits = sf_apps::align::search(db, 0..db.len(), &queries, &index, &p);
    format!("{:016x}", sf_apps::digest(&sf_apps::align::encode(&hits)))
}

#[test]
fn align_on_clones_equals_one_vm_and_the_host() {
    let dir = tempdir();
    let db = dir.path().join("db.fa");
    let g = snowflock([
        "gen-fasta",
        "--out",
        db.to_str().unwrap(),
        "--mib",
        "3",
        "--seed",
        "4",
        "--queries",
        "8",
        "--plant-every",
        "5",
    ]);
    g.assert_code(0);
    let input = format!("db={}", db.display());
    let run = |extra: &[&str]| {
        let mut a = vec!["run", "--mem", "256M", "--input", &input, "align", "--"];
        a.extend_from_slice(&["seed=4", "queries=8"]);
        a.extend_from_slice(extra);
        let r = snowflock(&a);
        r.assert_no_host_panic().assert_code(0);
        r
    };
    let one = run(&["split=3"]);
    let clones = run(&["clones=3", "warm=1"]);
    assert_shares_match(&clones, "align", 3);
    assert_eq!(answer(&one, "align"), answer(&clones, "align"));
    // Every query was planted more than 3 times: 3 hits each.
    one.assert_stdout_has("align: hits=24 ");
    let bytes = std::fs::read(&db).unwrap();
    assert_eq!(answer(&one, "align"), host_align_answer(&bytes, 4, 8));

    // Without the input the guest makes the same database itself.
    let own = run_app(
        "align",
        &[
            "seed=4",
            "queries=8",
            "db_mib=3",
            "plant_every=5",
            "clones=2",
        ],
    );
    assert_eq!(answer(&own, "align"), answer(&one, "align"));
}

#[test]
fn render_on_clones_writes_the_image_one_vm_and_the_host_make() {
    // 400 x 200: 240,000 bytes, one tile of 120,000 per clone (over the
    // 64 KiB every clone may return; the ticket's cap holds it): one round.
    let args = ["w=400", "h=200", "ss=1"];
    let one = run_app("render", &args);
    let dir = tempdir();
    let out = dir.path().join("out");
    let mut a = vec![
        "run",
        "--mem",
        "256M",
        "--output",
        out.to_str().unwrap(),
        "render",
        "--",
    ];
    a.extend_from_slice(&args);
    a.extend_from_slice(&["clones=2", "warm=1"]);
    let clones = snowflock(&a);
    clones.assert_no_host_panic().assert_code(0);
    clones.assert_stdout_has("render: granted=2 of 2 clones, 2 shares of at most ");
    assert_shares_match(&clones, "render", 2);
    assert_eq!(answer(&one, "render"), answer(&clones, "render"));

    let view = sf_apps::render::View {
        width: 400,
        height: 200,
        ss: 1,
    };
    let rgb = sf_apps::render::render_rows(&view, 0..200);
    let want = format!("{:016x}", sf_apps::digest(&rgb));
    assert_eq!(answer(&one, "render"), want, "{}", one.describe());
    // The parent's PNG decodes to the host's pixels.
    let file = std::fs::File::open(out.join("0/render.png")).expect("render.png in DIR/0");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (400, 200));
    assert_eq!(&buf[..info.buffer_size()], &rgb[..]);
}

/// Remote clones (namespace hosts, through the daemon) give the answer of
/// one VM; their shares match the warm parent's. `align` reads its input
/// after announcing its share (`will_read`); `render`'s clones hand back
/// tiles larger than one report frame, in pieces.
#[test]
fn apps_on_remote_clones_equal_one_vm() {
    let dir = tempdir();
    let db = dir.path().join("db.fa");
    let images = dir.path().to_str().unwrap();
    snowflock([
        "gen-fasta",
        "--out",
        db.to_str().unwrap(),
        "--mib",
        "3",
        "--seed",
        "5",
        "--queries",
        "8",
        "--plant-every",
        "5",
    ])
    .assert_code(0);
    let input = format!("db={}", db.display());
    let args = ["seed=5", "queries=8"];
    let mut one = vec!["run", "--mem", "256M", "--input", &input, "align", "--"];
    one.extend_from_slice(&args);
    one.push("split=2");
    let one = snowflock(&one);
    one.assert_no_host_panic().assert_code(0);
    let h = common::hosts::Hosts::start_with(3, &["--image-dir", images]);
    let mut a = vec![
        "--mem",
        "256M",
        "--input",
        "db=db.fa",
        "--placement",
        "remote",
        "align",
        "--",
    ];
    a.extend_from_slice(&args);
    a.extend_from_slice(&["clones=2", "warm=1"]);
    let r = h.run(1, &a);
    assert_eq!(r.code, Some(0), "{}\n{}", r.describe(), h.describe());
    assert_shares_match(&r, "align", 2);
    assert_eq!(answer(&r, "align"), answer(&one, "align"));
    assert!(!r.stdout.contains("will_read"), "{}", r.describe());

    let args = ["w=400", "h=200", "ss=1"];
    let one = run_app("render", &args);
    let mut a = vec!["--mem", "256M", "--placement", "remote", "render", "--"];
    a.extend_from_slice(&args);
    a.extend_from_slice(&["clones=2", "warm=1"]);
    let r = h.run(1, &a);
    assert_eq!(r.code, Some(0), "{}\n{}", r.describe(), h.describe());
    r.assert_stdout_has("render: granted=2 of 2 clones, 2 shares of at most ");
    assert_shares_match(&r, "render", 2);
    assert_eq!(answer(&r, "render"), answer(&one, "render"));
}

#[test]
fn price_on_clones_equals_one_vm_and_black_scholes() {
    let args = ["paths=40000", "steps=16", "seed=9"];
    let one = run_app("price", &[&args[..], &["split=3"]].concat());
    let clones = run_app("price", &[&args[..], &["clones=3", "warm=1"]].concat());
    assert_shares_match(&clones, "price", 3);
    assert_eq!(answer(&one, "price"), answer(&clones, "price"));
    clones.assert_stdout_has("price: black-scholes check ok");

    let c = sf_apps::price::Contract {
        steps: 16,
        ..Default::default()
    };
    let mut total = sf_apps::price::Sums::default();
    for i in 1..=3 {
        let n = 40000 / 3 + if i == 1 { 40000 % 3 } else { 0 };
        total.add(&sf_apps::price::simulate(
            &c,
            n,
            sf_apps::rng::share_seed(9, i),
        ));
    }
    let want = format!("{:016x}", sf_apps::digest(&total.encode()));
    assert_eq!(answer(&one, "price"), want, "{}", one.describe());
}

#[test]
fn bad_arguments_are_refused() {
    for (app, arg) in [
        ("align", "queries=x"),
        ("render", "w=0"),
        ("price", "paths=0"),
    ] {
        let r = snowflock(["run", "--mem", "64M", app, "--", arg]);
        r.assert_no_host_panic().assert_code(2);
    }
}

#[test]
fn bench_apps_writes_the_documented_keys() {
    let dir = tempdir();
    let json = dir.path().join("apps.json");
    let mut cmd = Command::new(snowflock_bin());
    cmd.args([
        "bench",
        "apps",
        "--runs",
        "1",
        "--mem-mib",
        "128",
        "--db-mib",
        "2",
        "--queries",
        "4",
        "--image",
        "96x64x1",
        "--paths",
        "4000",
        "--clones",
        "2",
        "--hosts",
        "2",
        "--json",
    ])
    .arg(&json);
    let r = run_cmd(cmd, Duration::from_secs(300));
    r.assert_no_host_panic()
        .assert_code(0)
        .assert_stdout_has("applications on clones");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON file")).unwrap();
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 9, "3 apps x 3 modes: {v}");
    for row in rows {
        for key in [
            "app",
            "mode",
            "clones",
            "wall_ms",
            "speedup",
            "ideal_speedup",
            "warmup_penalty_median",
            "warmup_penalty_max",
            "result_matches",
        ] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
        assert_eq!(row["result_matches"], true, "{row}");
        let remote = row["mode"] == "remote";
        assert_eq!(row["bytes_fetched_per_clone"].is_number(), remote, "{row}");
        if row["mode"] != "single" {
            assert!(
                row["warmup_penalty_median"].as_f64().unwrap() > 0.0,
                "{row}"
            );
            // The machine's busy share of its cores over the join (a
            // window of milliseconds here, so ticks of 10 ms make it
            // coarse), and nothing for one VM, which has no join.
            let pct = row["join_cores_busy_pct"].as_f64();
            assert!(pct.is_some_and(|p| (0.0..=200.0).contains(&p)), "{row}");
        } else {
            assert!(row["join_cores_busy_pct"].is_null(), "{row}");
        }
    }
    let png = std::fs::read(dir.path().join("apps.json.png")).expect("the plot");
    assert!(png.starts_with(b"\x89PNG"));
}
