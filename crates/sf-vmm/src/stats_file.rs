//! A remote clone's memory counters file for its daemon, opened once at
//! set-up: after that the clone host runs without root and under a filter
//! that opens no files, so it rewrites the same open file in place.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub struct StatsFile(File);

impl StatsFile {
    /// Opens (creating, 0600, not through a symlink) the counters file.
    pub fn open(path: &Path) -> io::Result<StatsFile> {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map(StatsFile)
    }

    /// Replaces the file's contents with `stats` as JSON: written over the
    /// old bytes, then cut to length, so a reader never sees an empty file.
    pub fn publish(&self, stats: &sf_api::FetchStats) -> io::Result<()> {
        let bytes = serde_json::to_vec(stats).map_err(io::Error::other)?;
        self.0.write_all_at(&bytes, 0)?;
        self.0.set_len(bytes.len() as u64)
    }
}
