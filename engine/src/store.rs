//! Object stores by URL, shared by the `files` source and sink and by checkpoints: a local directory
//! (`/data/in`, `file:///data/in`), S3 or an S3-compatible server (`s3://bucket/prefix`,
//! credentials and endpoint from `AWS_*` variables or options), and named in-process
//! stores (`memory://name/prefix`, one store per name for the whole process, so a sink
//! and a source can meet in tests and demos).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use crate::registry::ConnectorOptions;
use crate::{Result, plan_err};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use parking_lot::Mutex;

/// The options an object-store URL may need beside `path`.
pub const STORE_OPTIONS: [&str; 4] = ["endpoint", "region", "access_key_id", "secret_access_key"];

/// A store and the folder inside it.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URL as the user wrote it, for messages.
    pub url: String,
}

impl Location {
    /// `prefix/name`.
    pub fn child(&self, name: &str) -> Path {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// The URL of `name` inside this folder, as the user would write it (messages).
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url.trim_end_matches('/'))
    }

    /// The folder `name` inside this one, on the same store.
    pub fn sub(&self, name: &str) -> Location {
        Location {
            store: Arc::clone(&self.store),
            prefix: self.child(name),
            url: self.url_of(name),
        }
    }
}

static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(Mutex::default);

/// The in-process store `memory://name`, created on first use.
pub fn memory_store(name: &str) -> Arc<InMemory> {
    Arc::clone(
        MEMORY_STORES
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(InMemory::new())),
    )
}

/// Opens the store `url` names. `what` names the stream or sink in errors.
pub fn open(what: &str, url: &str, options: &ConnectorOptions) -> Result<Location> {
    let fail =
        |e: &dyn std::fmt::Display| crate::Error::Plan(format!("{what}: cannot open '{url}': {e}"));
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return plan_err!("{what}: '{url}' names no bucket (s3://bucket/prefix)");
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = options
            .get("endpoint")
            .cloned()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        if let Some(e) = endpoint {
            b = b
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false)
                .with_endpoint(e);
        }
        if let Some(r) = options.get("region") {
            b = b.with_region(r);
        }
        if let Some(k) = options.get("access_key_id") {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = options.get("secret_access_key") {
            b = b.with_secret_access_key(k);
        }
        let store = b.build().map_err(|e| fail(&e))?;
        return Ok(Location {
            store: Arc::new(store),
            prefix: Path::parse(prefix).map_err(|e| fail(&e))?,
            url: url.to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("memory://") {
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        return Ok(Location {
            store: memory_store(name),
            prefix: Path::parse(prefix).map_err(|e| fail(&e))?,
            url: url.to_string(),
        });
    }
    if let Some((scheme, _)) = url.split_once("://")
        && scheme != "file"
    {
        return plan_err!(
            "{what}: unknown URL scheme '{scheme}://' in '{url}'; accepted: a local path, file://, s3://, memory://"
        );
    }
    let dir = url.strip_prefix("file://").unwrap_or(url);
    let meta = std::fs::metadata(dir)
        .map_err(|e| crate::Error::Plan(format!("{what}: directory '{dir}': {e}")))?;
    if !meta.is_dir() {
        return plan_err!("{what}: '{dir}' is not a directory");
    }
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| fail(&e))?;
    Ok(Location {
        store: Arc::new(store),
        prefix: Path::default(),
        url: url.to_string(),
    })
}
