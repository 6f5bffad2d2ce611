//! Durable node state in the data directory. Today: the highest epoch a
//! voter promised (DESIGN.md E1, E8), one small file replaced atomically
//! (write, fsync, rename, fsync the directory), so a crash leaves either
//! the old or the new value, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const PROMISE_FILE: &str = "promise";

/// Where a voter's promise lives.
#[derive(Debug)]
pub struct PromiseStore {
    dir: PathBuf,
}

impl PromiseStore {
    /// Opens (creating) the data directory and reads the promise: 0 if
    /// none was ever written.
    pub fn open(dir: &Path) -> io::Result<(PromiseStore, u64)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(PROMISE_FILE);
        let promised = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold an epoch", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok((
            PromiseStore {
                dir: dir.to_path_buf(),
            },
            promised,
        ))
    }

    /// Makes `epoch` the durable promise before returning.
    pub fn save(&self, epoch: u64) -> io::Result<()> {
        let tmp = self.dir.join(format!("{PROMISE_FILE}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(format!("{epoch}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(PROMISE_FILE))?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promise_survives_reopen_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, promised) = PromiseStore::open(dir.path()).unwrap();
        assert_eq!(promised, 0);
        store.save(41).unwrap();
        store.save(42).unwrap();
        let (_, promised) = PromiseStore::open(dir.path()).unwrap();
        assert_eq!(promised, 42);
        fs::write(dir.path().join(PROMISE_FILE), "x").unwrap();
        assert!(PromiseStore::open(dir.path()).is_err());
    }
}
