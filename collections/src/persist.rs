//! The bucket's manifest on disk: `collections.manifest` in the data
//! directory.
//!
//! Layout: the 8-byte magic `VBMANIF1`, the JSON length (u32 LE), the
//! CRC32C of the JSON (u32 LE), then the JSON. It is written to a temporary
//! file, synced, renamed over the old one, and the directory is synced, so a
//! crash leaves either the old manifest or the new one, never a mixture.

use crate::manifest::{MAX_JSON_LEN, Manifest, ManifestError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file name.
pub const FILE_NAME: &str = "collections.manifest";
const TMP_NAME: &str = "collections.manifest.tmp";
const MAGIC: &[u8; 8] = b"VBMANIF1";

/// Why the manifest file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// An I/O call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is damaged.
    #[error("corrupt manifest file {}: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The file's JSON is not a valid manifest.
    #[error("invalid manifest in {}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is invalid.
        #[source]
        source: ManifestError,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `m` durably into `dir`. The directory must exist: a missing data
/// directory is an error, not something to create behind the operator's
/// back.
pub fn store(dir: &Path, m: &Manifest) -> Result<(), PersistError> {
    let json = m.to_json();
    let tmp = dir.join(TMP_NAME);
    let path = dir.join(FILE_NAME);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    let mut buf = Vec::with_capacity(16 + json.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(json.as_bytes()).to_le_bytes());
    buf.extend_from_slice(json.as_bytes());
    f.write_all(&buf).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))?;
    Ok(())
}

/// Reads the manifest from `dir`: `None` when there is none (a new bucket
/// starts at the epoch manifest), an error naming the file when it is
/// damaged.
pub fn load(dir: &Path) -> Result<Option<Manifest>, PersistError> {
    let path = dir.join(FILE_NAME);
    let raw = match fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let corrupt = |what: String| PersistError::Corrupt {
        path: path.clone(),
        what,
    };
    if raw.len() < 16 || &raw[..8] != MAGIC {
        return Err(corrupt("bad magic (not a manifest file)".into()));
    }
    let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize;
    if len > MAX_JSON_LEN || raw.len() != 16 + len {
        return Err(corrupt(format!(
            "length {len} does not match the file's {} bytes",
            raw.len()
        )));
    }
    let stored = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
    let json = &raw[16..];
    let computed = crc32c::crc32c(json);
    if stored != computed {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    Manifest::from_json(json)
        .map(Some)
        .map_err(|source| PersistError::Invalid {
            path: path.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let m = Manifest::from_json(
            br#"{"uid":"5","scopes":[{"name":"_default","uid":"0","collections":[{"name":"c","uid":"8"}]}]}"#,
        )
        .unwrap();
        store(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(m));
        assert!(!dir.path().join(TMP_NAME).exists());
        let path = dir.path().join(FILE_NAME);
        let good = fs::read(&path).unwrap();
        for (i, _) in good.iter().enumerate() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            fs::write(&path, &bad).unwrap();
            assert!(load(dir.path()).is_err(), "flip at {i} went unnoticed");
        }
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(PersistError::Corrupt { .. })
        ));
        fs::write(&path, b"junk").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("collections.manifest") && e.contains("magic"),
            "{e}"
        );
        // A missing directory is an error.
        let gone = dir.path().join("gone");
        assert!(matches!(
            store(&gone, &Manifest::epoch()),
            Err(PersistError::Io { .. })
        ));
    }
}
