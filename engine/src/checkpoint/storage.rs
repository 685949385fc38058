//! Where a checkpoint's files live: a local directory or an object store, behind one
//! [`CheckpointStore`] trait. Local files are read and written on blocking threads
//! (`spawn_blocking`: an fsync never stalls the runtime); object stores are async.
//! Each store also keeps the checkpoint to one running query: a local lock file, or an
//! object-store lease ([`Lease`]).

use std::fmt::Debug;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{CheckpointLocation, LEASE};
use crate::error::{Error, Result};
use crate::store::Location;

/// The files of a checkpoint, by path relative to its root (`offsets/000…3`).
#[async_trait]
pub(super) trait CheckpointStore: Debug + Send + Sync {
    /// `rel` as the user would find it, for messages.
    fn display(&self, rel: &str) -> String;
    /// Writes `rel` whole or not at all.
    async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()>;
    /// The bytes of `rel`, `None` if it does not exist.
    async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>>;
    /// The names of the children of folder `rel` (none if it does not exist).
    async fn list(&self, rel: &str) -> Result<Vec<String>>;
    /// Whether `rel` exists, without reading it.
    async fn exists(&self, rel: &str) -> Result<bool>;
    /// Deletes file `rel`; one already gone is fine.
    async fn delete(&self, rel: &str) -> std::result::Result<(), String>;
    /// Deletes folder `rel` and everything in it; failures are warnings.
    async fn delete_folder(&self, rel: &str);
    /// Keeps this query's hold on the checkpoint (an object-store lease); local locks
    /// need nothing.
    async fn renew(&self) -> Result<()> {
        Ok(())
    }
    /// Whether the hold must be renewed while the query runs.
    fn leased(&self) -> bool {
        false
    }
    /// Gives the hold up at a graceful stop.
    async fn release(&self) {}
    /// Gives the hold up at once (the checkpoint is dropped): a local lock.
    fn unlock(&self) {}
}

/// A checkpoint's store with the helpers every caller needs.
#[derive(Debug, Clone)]
pub(super) struct Storage {
    store: Arc<dyn CheckpointStore>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Storage {
    /// Opens `location`, taking its one-query-per-checkpoint lock or lease.
    pub async fn open(location: CheckpointLocation) -> Result<Storage> {
        let store: Arc<dyn CheckpointStore> = match location {
            CheckpointLocation::Local(dir) => {
                Arc::new(blocking(move || LocalStore::open(dir)).await?)
            }
            CheckpointLocation::Store(location) => {
                Arc::new(ObjectCheckpoint::open(location).await?)
            }
        };
        Ok(Storage { store })
    }

    pub fn display(&self, rel: &str) -> String {
        self.store.display(rel)
    }

    pub async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        self.store.put(rel, bytes).await
    }

    pub async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        self.store.get(rel).await
    }

    pub async fn exists(&self, rel: &str) -> Result<bool> {
        self.store.exists(rel).await
    }

    /// The names of the children of folder `rel`, sorted (temporary files, which
    /// start with `.`, left out).
    pub async fn names(&self, rel: &str) -> Result<Vec<String>> {
        let mut out = self.store.list(rel).await?;
        out.retain(|n| !n.starts_with('.'));
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Batch ids named by the children of folder `rel`, ascending; a child that is
    /// not a batch id is an error naming it (a checkpoint holds nothing else there).
    pub async fn ids(&self, rel: &str) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for name in self.names(rel).await? {
            match name.parse::<u64>() {
                Ok(id) => out.push(id),
                Err(_) => {
                    return Err(Error::Checkpoint(format!(
                        "{} is not a checkpoint entry (entries are named by batch id); \
                         remove it, or delete the checkpoint to start over",
                        self.display(&format!("{rel}/{name}"))
                    )));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes file `rel` (old entries past `RETAINED`, the lease); a failure only
    /// leaves a file behind: a warning.
    pub async fn delete(&self, rel: &str) {
        if let Err(e) = self.store.delete(rel).await {
            log::warn!("checkpoint: cannot delete {}: {e}", self.display(rel));
        }
    }

    pub async fn delete_folder(&self, rel: &str) {
        self.store.delete_folder(rel).await
    }

    pub async fn renew(&self) -> Result<()> {
        self.store.renew().await
    }

    pub fn leased(&self) -> bool {
        self.store.leased()
    }

    pub async fn release(&self) {
        self.store.release().await
    }

    pub fn unlock(&self) {
        self.store.unlock()
    }
}

/// Runs blocking file work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("checkpoint file task: {e}")))?
}

fn io(path: &std::path::Path, what: &str, e: std::io::Error) -> Error {
    Error::Checkpoint(format!("{what} {}: {e}", path.display()))
}

/// A checkpoint in a local directory, held with an exclusive lock on `<dir>/lock`.
#[derive(Debug)]
struct LocalStore {
    dir: PathBuf,
    /// Locked while the query runs: released when the checkpoint goes, even while
    /// sources still hold this store.
    lock: parking_lot::Mutex<Option<fs::File>>,
}

impl LocalStore {
    fn open(dir: PathBuf) -> Result<LocalStore> {
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
        Ok(LocalStore {
            dir,
            lock: parking_lot::Mutex::new(Some(lock)),
        })
    }
}

#[async_trait]
impl CheckpointStore for LocalStore {
    fn display(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.dir.display().to_string()
        } else {
            self.dir.join(rel).display().to_string()
        }
    }

    async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.dir.join(rel);
        blocking(move || {
            crate::durable::write_atomic(&path, &bytes)
                .map_err(|e| Error::Checkpoint(e.to_string()))
        })
        .await
    }

    async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(rel);
        blocking(move || match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, "reading", e)),
        })
        .await
    }

    async fn list(&self, rel: &str) -> Result<Vec<String>> {
        let dir = self.dir.join(rel);
        blocking(move || {
            let read = match fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io(&dir, "listing", e)),
            };
            let mut out = Vec::new();
            for e in read {
                let e = e.map_err(|e| io(&dir, "listing", e))?;
                if let Some(name) = e.file_name().to_str() {
                    out.push(name.to_string());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn exists(&self, rel: &str) -> Result<bool> {
        let path = self.dir.join(rel);
        blocking(move || Ok(path.exists())).await
    }

    async fn delete(&self, rel: &str) -> std::result::Result<(), String> {
        let path = self.dir.join(rel);
        let removed = tokio::task::spawn_blocking(move || fs::remove_file(path))
            .await
            .map_err(|e| e.to_string())?;
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    async fn delete_folder(&self, rel: &str) {
        let path = self.dir.join(rel);
        let shown = self.display(rel);
        let removed = tokio::task::spawn_blocking(move || fs::remove_dir_all(path)).await;
        match removed {
            Ok(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                log::warn!("checkpoint: cannot delete {shown}: {e}");
            }
            Err(e) => log::warn!("checkpoint: cannot delete {shown}: {e}"),
            _ => {}
        }
    }

    fn unlock(&self) {
        self.lock.lock().take();
    }
}

/// An object-store checkpoint's lease: `<checkpoint>/lock`.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    /// Who holds it: a process and one opening of the checkpoint in it.
    owner: String,
    /// When it was last renewed, in milliseconds since the epoch.
    renewed_ms: i64,
}

/// A checkpoint on an object store, held with a [`Lease`].
#[derive(Debug)]
struct ObjectCheckpoint {
    location: Location,
    /// Who holds the lease: this process and this open.
    owner: String,
}

impl ObjectCheckpoint {
    async fn open(location: Location) -> Result<ObjectCheckpoint> {
        static OPENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let owner = format!(
            "pid {} open {} at {}",
            std::process::id(),
            OPENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            now_ms()
        );
        let store = ObjectCheckpoint { location, owner };
        if let Some(lease) = store.lease().await? {
            let age = now_ms() - lease.renewed_ms;
            if age < LEASE.as_millis() as i64 {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} is in use by another running query ({}, lease renewed {} ms ago); \
                     stop it first, or use another checkpoint location; a killed query's lease expires {} s after its last renewal \
                     (or delete {} once sure it is gone)",
                    store.display(""),
                    lease.owner,
                    age.max(0),
                    LEASE.as_secs(),
                    store.display("lock")
                )));
            }
        }
        store.renew().await?;
        Ok(store)
    }

    /// The lease there is, if any can be read (one that cannot is as good as expired).
    async fn lease(&self) -> Result<Option<Lease>> {
        Ok(self
            .get("lock")
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    fn error(&self, what: &str, rel: &str, e: object_store::Error) -> Error {
        Error::Checkpoint(format!("{what} {}: {e}", self.display(rel)))
    }
}

#[async_trait]
impl CheckpointStore for ObjectCheckpoint {
    fn display(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.location.url.clone()
        } else {
            self.location.url_of(rel)
        }
    }

    async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        self.location
            .store
            .put(&self.location.child(rel), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.error("writing", rel, e))
    }

    async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self.location.store.get(&self.location.child(rel)).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| self.error("reading", rel, e))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("reading", rel, e)),
        }
    }

    async fn list(&self, rel: &str) -> Result<Vec<String>> {
        let listed = self
            .location
            .store
            .list_with_delimiter(Some(&self.location.child(rel)))
            .await
            .map_err(|e| self.error("listing", rel, e))?;
        Ok(listed
            .objects
            .iter()
            .map(|o| &o.location)
            .chain(&listed.common_prefixes)
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    async fn exists(&self, rel: &str) -> Result<bool> {
        match self.location.store.head(&self.location.child(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("reading", rel, e)),
        }
    }

    async fn delete(&self, rel: &str) -> std::result::Result<(), String> {
        match self.location.store.delete(&self.location.child(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn delete_folder(&self, rel: &str) {
        use futures::TryStreamExt;
        let listed: Vec<_> = match self
            .location
            .store
            .list(Some(&self.location.child(rel)))
            .try_collect()
            .await
        {
            Ok(l) => l,
            Err(e) => {
                log::warn!("checkpoint: cannot list {}: {e}", self.display(rel));
                Vec::new()
            }
        };
        for o in listed {
            if let Err(e) = self.location.store.delete(&o.location).await {
                log::warn!("checkpoint: cannot delete {}: {e}", o.location);
            }
        }
    }

    async fn renew(&self) -> Result<()> {
        let lease = Lease {
            owner: self.owner.clone(),
            renewed_ms: now_ms(),
        };
        let bytes = serde_json::to_vec(&lease).expect("a lease serializes");
        self.put("lock", bytes).await
    }

    fn leased(&self) -> bool {
        true
    }

    async fn release(&self) {
        if let Ok(Some(lease)) = self.lease().await
            && lease.owner == self.owner
            && let Err(e) = self.delete("lock").await
        {
            log::warn!("checkpoint: cannot delete {}: {e}", self.display("lock"));
        }
    }
}
