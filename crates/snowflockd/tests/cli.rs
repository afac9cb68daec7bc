//! The daemon's command line: help, and clear refusals of bad set-ups
//! before it listens anywhere.

use std::process::Command;

fn snowflockd(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_snowflockd"))
        .args(args)
        .output()
        .expect("run snowflockd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_every_option() {
    let (code, out, _) = snowflockd(&["--help"]);
    assert_eq!(code, Some(0));
    for opt in [
        "--socket",
        "--listen",
        "--advertise",
        "--peer",
        "--config",
        "--state-dir",
        "--snowflock",
        "--max-clones",
        "--image-dir",
        "--retention",
        "--console-cap",
        "--header-timeout",
        "--body-timeout",
        "--max-connections",
        "--max-vms",
        "/run/snowflock",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--insecure-no-tls",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}:\n{out}");
    }
}

#[test]
fn peers_without_a_tcp_api_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let (code, _, err) = snowflockd(&[
        "--socket",
        sock.to_str().unwrap(),
        "--peer",
        "127.0.0.1:7070",
        "--advertise",
        "127.0.0.1",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("with peers, this daemon needs a TCP API for them: --listen IP:PORT"),
        "{err}"
    );
}

#[test]
fn a_bad_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("host.toml");
    std::fs::write(&cfg, "peers = [\"not an address\"]\n").unwrap();
    let (code, _, err) = snowflockd(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not a valid snowflockd config"), "{err}");
    let (code, _, err) = snowflockd(&[
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read") && err.contains("missing.toml"),
        "{err}"
    );
}

#[test]
fn a_missing_vmm_binary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = snowflockd(&[
        "--socket",
        dir.path().join("d.sock").to_str().unwrap(),
        "--snowflock",
        "/nonexistent/snowflock",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the VMM binary /nonexistent/snowflock does not exist"),
        "{err}"
    );
}

#[test]
fn bad_limits_in_the_config_file_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("host.toml");
    std::fs::write(&cfg, "retention = \"soon\"\n").unwrap();
    let (code, _, err) = snowflockd(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("config key `retention`"), "{err}");
}

#[test]
fn listening_without_credentials_refuses_to_start_and_says_how_to_make_them() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let (code, _, err) = snowflockd(&[
        "--socket",
        sock.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--tls-ca")
            && err.contains("snowflock cluster init")
            && err.contains("--insecure-no-tls"),
        "{err}"
    );
    let (code, _, err) = snowflockd(&[
        "--socket",
        sock.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--tls-ca",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("go together"), "{err}");
}
