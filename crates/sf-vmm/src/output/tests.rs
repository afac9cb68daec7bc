use super::*;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sf-out-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn files_land_under_the_vm_id() {
    let d = tmp("land");
    let mut o = Outputs::new(Some(OutputDir::open(&d, 100, None).unwrap()));
    assert_eq!(o.write("", false, b"a.txt", b"hello"), Ok(5));
    assert_eq!(o.write("", true, b"a.txt", b" world"), Ok(6));
    assert_eq!(std::fs::read(d.join("0/a.txt")).unwrap(), b"hello world");
    // Written again in the same run: replaced.
    assert_eq!(o.write("", false, b"a.txt", b"x"), Ok(1));
    assert_eq!(std::fs::read(d.join("0/a.txt")).unwrap(), b"x");
    o.reset_for_clone(None);
    assert_eq!(o.write("2.3", false, b"a.txt", b"c"), Ok(1));
    assert_eq!(std::fs::read(d.join("2.3/a.txt")).unwrap(), b"c");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_names_caps_and_order_get_error_codes() {
    let d = tmp("bad");
    let mut o = Outputs::new(Some(OutputDir::open(&d, 10, None).unwrap()));
    for bad in [&b"a/b"[..], b"..", b".", b"", b"a\0b", &[b'x'; 65]] {
        assert_eq!(o.write("", false, bad, b"x"), Err(HcError::Invalid));
    }
    assert_eq!(o.write("", true, b"new", b"x"), Err(HcError::NoEntry));
    assert_eq!(o.write("", false, b"big", &[0; 11]), Err(HcError::TooBig));
    assert_eq!(o.write("", false, b"ok", &[0; 10]), Ok(10));
    assert_eq!(o.write("", true, b"ok", b"y"), Err(HcError::TooBig));
    let mut none = Outputs::new(None);
    assert_eq!(none.write("", false, b"a", b"x"), Err(HcError::Denied));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn planted_symlinks_are_never_followed() {
    let d = tmp("sym");
    let outside = tmp("sym-outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    let dir = OutputDir::open(&d, 100, None).unwrap();
    // The VM's own directory is a symlink out of DIR.
    std::os::unix::fs::symlink(&outside, d.join("0")).unwrap();
    let mut o = Outputs::new(Some(dir.clone()));
    assert_eq!(o.write("", false, b"victim", b"pwned"), Err(HcError::Io));
    // A file name that is a symlink (and a plain file from before).
    std::fs::create_dir_all(d.join("1")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), d.join("1/victim")).unwrap();
    std::fs::write(d.join("1/old"), b"old").unwrap();
    let mut o = Outputs::new(Some(dir));
    assert_eq!(o.write("1", false, b"victim", b"pwned"), Err(HcError::Busy));
    assert_eq!(o.write("1", false, b"old", b"new"), Err(HcError::Busy));
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    assert_eq!(std::fs::read(d.join("1/old")).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn a_vm_has_a_bounded_number_of_files() {
    let d = tmp("many");
    let mut o = Outputs::new(Some(OutputDir::open(&d, 1 << 20, None).unwrap()));
    for i in 0..OUTPUTS_MAX {
        assert_eq!(o.write("", false, format!("f{i}").as_bytes(), b""), Ok(0));
    }
    assert_eq!(o.write("", false, b"one-more", b""), Err(HcError::TooBig));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn relayed_clone_paths_are_clone_ids_only() {
    for ok in [&b"3"[..], b"3.1", b"12.4294967295", b"1.2.3.4.5.6.7.8"] {
        assert!(valid_sub_path(ok), "{:?}", String::from_utf8_lossy(ok));
    }
    for bad in [
        &b""[..],
        b"0",
        b"01",
        b"1..2",
        b".1",
        b"1.",
        b"..",
        b"../1",
        b"1/2",
        b"1.a",
        b"4294967296",
        b"1.2.3.4.5.6.7.8.9",
        b"1\0",
        &[b'1'; 65],
    ] {
        assert!(!valid_sub_path(bad), "{:?}", String::from_utf8_lossy(bad));
    }
}
