//! The guests that ship with SnowFlock, built from `guest/` by this crate's
//! build script and embedded, so `snowflock run hello` needs nothing built
//! by hand.

/// What a guest is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A program to try.
    Example,
    /// A guest that misbehaves on purpose, for tests.
    Test,
}

#[derive(Clone, Copy, Debug)]
pub struct Image {
    pub name: &'static str,
    pub kind: Kind,
    pub summary: &'static str,
    /// Example arguments.
    pub usage: &'static str,
    pub elf: &'static [u8],
}

macro_rules! image {
    ($name:literal, $kind:expr, $summary:literal, $usage:literal) => {
        Image {
            name: $name,
            kind: $kind,
            summary: $summary,
            usage: $usage,
            elf: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".elf")),
        }
    };
}

pub static IMAGES: &[Image] = &[
    image!(
        "hello",
        Kind::Example,
        "prints a greeting and its arguments, exits 0",
        "hello -- any words"
    ),
    image!(
        "pi",
        Kind::Example,
        "Monte-Carlo estimate of pi; prints the result and how long it computed",
        "pi -- samples=200000000 seed=1"
    ),
    image!(
        "netpi",
        Kind::Example,
        "networked clones: pi whose clones report over TCP, or `allpairs` (every clone sends every other a checksummed message over TCP; the parent checks all)",
        "netpi -- allpairs clones=8"
    ),
    image!(
        "crash",
        Kind::Test,
        "crashes on request: divzero ud null outside kernel gp int3 panic spin exit=N",
        "crash -- divzero"
    ),
    image!(
        "forktest",
        Kind::Test,
        "VM fork scenarios: basic crash kill nested entropy errors touch slow scan",
        "forktest -- basic n=4"
    ),
    image!(
        "capi",
        Kind::Test,
        "the clone API from C (guest/include/snowflock.h): fork, exit, join, each clone's status and result",
        "capi -- n=4"
    ),
    image!(
        "hostile",
        Kind::Test,
        "attacks its own ring 0 and the hypercalls (kernel pages as buffers, forged crash reports, ticket misuse, floods); exits 0 if all were refused; modes stub-write idt-write overflow panic-escapes console-escapes",
        "hostile"
    ),
];

/// The shipped guest called `name`.
pub fn find(name: &str) -> Option<&'static Image> {
    IMAGES.iter().find(|i| i.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_is_an_elf_with_both_entry_notes() {
        for i in IMAGES {
            assert_eq!(&i.elf[..4], b"\x7fELF", "{}", i.name);
            let has = |needle: &[u8]| i.elf.windows(needle.len()).any(|w| w == needle);
            assert!(
                has(b"Xen\0") && has(b"SnowFlock\0"),
                "{} lacks a note",
                i.name
            );
        }
        assert!(find("hello").is_some() && find("nope").is_none());
    }
}
