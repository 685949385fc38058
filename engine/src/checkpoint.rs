//! A query's checkpoint directory: what lets a restarted query go on exactly where the
//! killed one stopped.
//!
//! ```text
//!  <dir>/metadata              the query's fingerprint and its description, the batch grid
//!  <dir>/offsets/<batch id>    step 1: each source's range, written before anything runs
//!  <dir>/commits/<batch id>    step 5: every sink committed the batch
//!  <dir>/state/<batch id>/     after the commit: each stateful operator's state as Arrow
//!                              IPC (`op-<i>.arrow`), then `manifest` naming them
//! ```
//!
//! Every file is written to a temporary name, fsynced and renamed, so a reader sees it
//! whole or not at all. Every file carries a CRC-32 of its body (a header line for the
//! JSON files, the manifest for state files): a corrupt or truncated file is reported,
//! never used. The newest [`RETAINED`] entries are kept, older ones deleted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::source::SourceRange;
use crate::time::Time;

/// How many batches of offsets and commits are kept (Spark keeps 100).
pub const RETAINED: u64 = 100;

/// What one batch covered, as the offset log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetEntry {
    pub batch_id: u64,
    pub batch_time_ms: i64,
    /// Per source, in the query's source order: its name and range.
    pub ranges: Vec<(String, SourceRange)>,
}

/// The query a checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metadata {
    version: u32,
    /// One line per source, operator and output, with schemas; the fingerprint is its
    /// CRC, the lines say what differs.
    description: Vec<String>,
    interval_ms: u64,
    /// The batch grid: batch times are `zero + k * interval`.
    zero_time_ms: i64,
}

/// A state snapshot of every stateful operator after one batch.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub batch_id: u64,
    /// Per operator index: its batches and its small JSON metadata.
    pub operators: Vec<(usize, OperatorState)>,
}

/// An operator's state: Arrow batches and small metadata (a watermark).
#[derive(Debug, Clone, Default)]
pub struct OperatorState {
    pub batches: Vec<RecordBatch>,
    pub meta: Value,
}

/// What a restarted query finds.
#[derive(Debug, Default)]
pub struct Recovered {
    pub zero_time: Option<Time>,
    /// Newest planned batch.
    pub last_planned: Option<OffsetEntry>,
    /// Newest committed batch id.
    pub last_committed: Option<u64>,
    pub snapshot: Option<Snapshot>,
}

#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    /// `<dir>/lock`, locked while the query runs: one writer per checkpoint.
    _lock: fs::File,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Checkpoint(format!("{what} {}: {e}", path.display()))
}

fn entry_name(batch_id: u64) -> String {
    format!("{batch_id:020}")
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("checkpoint files live in a directory");
    fs::create_dir_all(dir).map_err(|e| io(dir, "creating", e))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = fs::File::create(&tmp).map_err(|e| io(&tmp, "writing", e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, "writing", e))?;
        f.sync_all().map_err(|e| io(&tmp, "syncing", e))?;
    }
    fs::rename(&tmp, path).map_err(|e| io(path, "renaming into place", e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `flumen-checkpoint 1 <crc32> <length>\n<body>`.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "flumen-checkpoint 1 {:08x} {}\n",
        crc32fast::hash(body),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn unseal(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |why: &str| {
        Error::Checkpoint(format!(
            "{} is corrupt ({why}); restore it or delete the checkpoint to start over",
            path.display()
        ))
    };
    let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
        return Err(corrupt("no header"));
    };
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("bad header"))?;
    let parts: Vec<&str> = header.split(' ').collect();
    let [magic, "1", crc, len] = parts.as_slice() else {
        return Err(corrupt("bad header"));
    };
    if *magic != "flumen-checkpoint" {
        return Err(corrupt("bad header"));
    }
    let body = &bytes[nl + 1..];
    let len: usize = len.parse().map_err(|_| corrupt("bad header"))?;
    if body.len() != len {
        return Err(corrupt(&format!(
            "truncated: {} of {len} bytes",
            body.len()
        )));
    }
    if format!("{:08x}", crc32fast::hash(body)) != *crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(body.to_vec())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| io(path, "reading", e))?;
    let body = unseal(path, &bytes)?;
    serde_json::from_slice(&body).map_err(|e| {
        Error::Checkpoint(format!("{} is not a checkpoint entry: {e}", path.display()))
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let body = serde_json::to_vec(value).expect("checkpoint entries serialize");
    write_atomic(path, &seal(&body))
}

/// Batch ids of the entries in `dir`, ascending (temporary files ignored).
fn entries(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir, "listing", e)),
    };
    for e in read {
        let e = e.map_err(|e| io(dir, "listing", e))?;
        if let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            out.push(id);
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl Checkpoint {
    /// Opens (creating if needed) the checkpoint of the query `description` describes.
    /// An existing checkpoint of another query is refused, naming what differs.
    pub fn open(
        dir: impl Into<PathBuf>,
        description: Vec<String>,
        interval: std::time::Duration,
    ) -> Result<(Self, Recovered)> {
        let dir: PathBuf = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io(&dir, "creating", e))?;
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, "opening", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} is in use by another running query; stop it first, or use another checkpoint location",
                    dir.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path, "locking", e)),
        }
        let cp = Self { dir, _lock: lock };
        let meta_path = cp.dir.join("metadata");
        let mut recovered = Recovered::default();
        if meta_path.exists() {
            let meta: Metadata = read_json(&meta_path)?;
            let interval_ms = interval.as_millis() as u64;
            if meta.interval_ms != interval_ms {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} was written with a batch interval of {} ms, this query has {interval_ms} ms; \
                     use another checkpoint location or the old interval",
                    cp.dir.display(),
                    meta.interval_ms
                )));
            }
            if meta.description != description {
                let removed: Vec<&String> = meta
                    .description
                    .iter()
                    .filter(|l| !description.contains(l))
                    .collect();
                let added: Vec<&String> = description
                    .iter()
                    .filter(|l| !meta.description.contains(l))
                    .collect();
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} belongs to a different query; it has {}; this query has {}; \
                     use another checkpoint location, or delete this one to start over",
                    cp.dir.display(),
                    if removed.is_empty() {
                        "the same parts in another order".to_string()
                    } else {
                        removed
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                    if added.is_empty() {
                        "fewer parts".to_string()
                    } else {
                        added
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                )));
            }
            recovered.zero_time = Some(Time::from_millis(meta.zero_time_ms));
            recovered.last_planned = match entries(&cp.dir.join("offsets"))?.last() {
                Some(id) => Some(read_json(&cp.dir.join("offsets").join(entry_name(*id)))?),
                None => None,
            };
            recovered.last_committed = entries(&cp.dir.join("commits"))?.last().copied();
            recovered.snapshot = cp.newest_snapshot(recovered.last_committed)?;
        }
        Ok((cp, recovered))
    }

    /// Records the query and its batch grid, once.
    pub fn write_metadata(
        &self,
        description: Vec<String>,
        interval: std::time::Duration,
        zero_time: Time,
    ) -> Result<()> {
        let path = self.dir.join("metadata");
        if path.exists() {
            return Ok(());
        }
        write_json(
            &path,
            &Metadata {
                version: 1,
                description,
                interval_ms: interval.as_millis() as u64,
                zero_time_ms: zero_time.as_millis(),
            },
        )
    }

    /// Step 1: the batch's ranges, durable before the batch reads anything.
    pub fn write_offsets(&self, entry: &OffsetEntry) -> Result<()> {
        write_json(
            &self.dir.join("offsets").join(entry_name(entry.batch_id)),
            entry,
        )
    }

    /// The recorded ranges of batch `batch_id`.
    pub fn read_offsets(&self, batch_id: u64) -> Result<OffsetEntry> {
        read_json(&self.dir.join("offsets").join(entry_name(batch_id)))
    }

    /// Step 5: every sink committed batch `batch_id`.
    pub fn write_commit(&self, batch_id: u64, batch_time: Time) -> Result<()> {
        write_json(
            &self.dir.join("commits").join(entry_name(batch_id)),
            &serde_json::json!({"batch_id": batch_id, "batch_time_ms": batch_time.as_millis()}),
        )?;
        self.purge(batch_id)
    }

    /// Writes the state of every stateful operator after batch `snapshot.batch_id`.
    pub fn write_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let dir = self.dir.join("state").join(entry_name(snapshot.batch_id));
        let mut manifest = Vec::new();
        for (index, state) in &snapshot.operators {
            // One Arrow IPC file per run of batches sharing a schema (a join keeps
            // two sides, map_with_state keys and state); read back in order.
            let mut parts = Vec::new();
            let mut runs: Vec<&[RecordBatch]> = Vec::new();
            let mut start = 0;
            for i in 1..=state.batches.len() {
                if i == state.batches.len()
                    || state.batches[i].schema() != state.batches[start].schema()
                {
                    runs.push(&state.batches[start..i]);
                    start = i;
                }
            }
            for (k, run) in runs.into_iter().enumerate() {
                let file = format!("op-{index}-{k}.arrow");
                let mut bytes = Vec::new();
                let mut w = FileWriter::try_new(&mut bytes, &run[0].schema())?;
                for b in run {
                    w.write(b)?;
                }
                w.finish()?;
                write_atomic(&dir.join(&file), &bytes)?;
                parts.push(serde_json::json!({
                    "file": file,
                    "crc32": format!("{:08x}", crc32fast::hash(&bytes)),
                    "len": bytes.len(),
                }));
            }
            manifest.push(serde_json::json!({
                "operator": index,
                "parts": parts,
                "meta": state.meta,
            }));
        }
        write_json(&dir.join("manifest"), &manifest)
    }

    /// The newest complete snapshot at or before `upto`.
    fn newest_snapshot(&self, upto: Option<u64>) -> Result<Option<Snapshot>> {
        let Some(upto) = upto else {
            return Ok(None);
        };
        let base = self.dir.join("state");
        for id in entries(&base)?.into_iter().rev() {
            if id > upto {
                continue;
            }
            let dir = base.join(entry_name(id));
            if !dir.join("manifest").exists() {
                // Killed while writing it: an older one will do.
                continue;
            }
            let manifest: Vec<Value> = read_json(&dir.join("manifest"))?;
            let mut operators = Vec::new();
            for m in manifest {
                let not_manifest = || {
                    Error::Checkpoint(format!(
                        "{} is not a snapshot manifest",
                        dir.join("manifest").display()
                    ))
                };
                let (Some(index), Some(parts)) = (m["operator"].as_u64(), m["parts"].as_array())
                else {
                    return Err(not_manifest());
                };
                let mut batches = Vec::new();
                for part in parts {
                    let (Some(file), Some(crc), Some(len)) = (
                        part["file"].as_str(),
                        part["crc32"].as_str(),
                        part["len"].as_u64(),
                    ) else {
                        return Err(not_manifest());
                    };
                    let path = dir.join(file);
                    let bytes = fs::read(&path).map_err(|e| io(&path, "reading", e))?;
                    if bytes.len() as u64 != len
                        || format!("{:08x}", crc32fast::hash(&bytes)) != crc
                    {
                        return Err(Error::Checkpoint(format!(
                            "{} is corrupt (checksum or length mismatch); restore it or delete the checkpoint to start over",
                            path.display()
                        )));
                    }
                    for b in FileReader::try_new(std::io::Cursor::new(bytes), None)? {
                        batches.push(b?);
                    }
                }
                operators.push((
                    index as usize,
                    OperatorState {
                        batches,
                        meta: m["meta"].clone(),
                    },
                ));
            }
            return Ok(Some(Snapshot {
                batch_id: id,
                operators,
            }));
        }
        Ok(None)
    }

    /// Deletes entries older than the newest [`RETAINED`] and snapshots older than the
    /// newest complete one.
    fn purge(&self, committed: u64) -> Result<()> {
        let keep_from = committed.saturating_sub(RETAINED - 1);
        for sub in ["offsets", "commits"] {
            for id in entries(&self.dir.join(sub))? {
                if id < keep_from {
                    let _ = fs::remove_file(self.dir.join(sub).join(entry_name(id)));
                }
            }
        }
        let base = self.dir.join("state");
        let ids = entries(&base)?;
        if let Some(newest) = ids
            .iter()
            .rev()
            .find(|id| base.join(entry_name(**id)).join("manifest").exists())
        {
            for id in ids.iter().filter(|id| *id < newest) {
                let _ = fs::remove_dir_all(base.join(entry_name(*id)));
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_altered_entry_is_reported() {
        let dir = std::env::temp_dir().join(format!("flumen-cp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (cp, rec) =
            Checkpoint::open(&dir, vec!["a".into()], std::time::Duration::from_secs(1)).unwrap();
        assert!(rec.last_planned.is_none());
        cp.write_metadata(
            vec!["a".into()],
            std::time::Duration::from_secs(1),
            Time::from_millis(0),
        )
        .unwrap();
        let entry = OffsetEntry {
            batch_id: 3,
            batch_time_ms: 4000,
            ranges: vec![(
                "s".into(),
                SourceRange {
                    start: 1.into(),
                    end: 2.into(),
                },
            )],
        };
        cp.write_offsets(&entry).unwrap();
        assert_eq!(cp.read_offsets(3).unwrap(), entry);
        let path = dir.join("offsets").join(entry_name(3));
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = cp.read_offsets(3).unwrap_err().to_string();
        assert!(err.contains("is corrupt (truncated"), "{err}");
        let mut altered = bytes.clone();
        *altered.last_mut().unwrap() = b' ';
        fs::write(&path, &altered).unwrap();
        let err = cp.read_offsets(3).unwrap_err().to_string();
        assert!(err.contains("is corrupt (checksum mismatch)"), "{err}");
        // While it is open, no one else may use it.
        let err = Checkpoint::open(&dir, vec!["a".into()], std::time::Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is in use by another running query"), "{err}");
        drop(cp);
        // Another query's checkpoint is refused, naming what differs.
        let err = Checkpoint::open(&dir, vec!["b".into()], std::time::Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("belongs to a different query; it has a; this query has b"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
