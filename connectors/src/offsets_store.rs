//! Source offsets kept in a database table, as the seed's `offsets_storage`: a stream
//! with `offsets_store = 'postgres://...' | 'mysql://...'` writes the end offsets of
//! every committed batch to
//!
//! ```sql
//! flumen_offsets(query, topic, partition, offset)   -- primary key (query, topic, partition)
//! ```
//!
//! in one transaction, and a restarted query resumes from the offsets stored under its
//! name. Values are bound parameters; the table is created when missing.

use std::collections::BTreeMap;
use std::time::Duration;

use flumen_engine::{Error, Result};
use mysql_async::prelude::Queryable;

/// `(topic, partition) -> next offset`.
pub type Offsets = BTreeMap<(String, i32), i64>;

enum Conn {
    Postgres(tokio_postgres::Client),
    MySql(mysql_async::Conn),
}

/// A connection to the table of offsets, opened on first use and again after an error.
pub struct OffsetsStore {
    url: String,
    /// The stream, for errors.
    stream: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl std::fmt::Debug for OffsetsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetsStore")
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

/// The URL with every credential replaced by `***`, for messages: the password of
/// `user:password@`, and the value of any query parameter whose name holds `pass`,
/// `pwd`, `secret`, `token` or `key` (`?password=...`, `?sslpassword=...`).
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_string(),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    let Some(query) = query else {
        return base;
    };
    let secret = |name: &str| {
        let n = name.to_ascii_lowercase();
        ["pass", "pwd", "secret", "token", "key"]
            .iter()
            .any(|s| n.contains(s))
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

const PG_CREATE: &str = "CREATE TABLE IF NOT EXISTS flumen_offsets (\
    query TEXT NOT NULL, topic TEXT NOT NULL, \"partition\" INTEGER NOT NULL, \
    \"offset\" BIGINT NOT NULL, PRIMARY KEY (query, topic, \"partition\"))";
const PG_LOAD: &str =
    "SELECT topic, \"partition\", \"offset\" FROM flumen_offsets WHERE query = $1";
const PG_SAVE: &str = "INSERT INTO flumen_offsets (query, topic, \"partition\", \"offset\") \
    VALUES ($1, $2, $3, $4) ON CONFLICT (query, topic, \"partition\") \
    DO UPDATE SET \"offset\" = EXCLUDED.\"offset\"";

const MY_CREATE: &str = "CREATE TABLE IF NOT EXISTS flumen_offsets (\
    query VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL, `partition` INT NOT NULL, \
    `offset` BIGINT NOT NULL, PRIMARY KEY (query, topic, `partition`))";
const MY_LOAD: &str = "SELECT topic, `partition`, `offset` FROM flumen_offsets WHERE query = ?";
const MY_SAVE: &str = "INSERT INTO flumen_offsets (query, topic, `partition`, `offset`) \
    VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE `offset` = VALUES(`offset`)";

/// Whether `url` names a database this store can use.
pub fn check_url(stream: &str, url: &str) -> Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "postgres" | "postgresql" | "mysql" | "mariadb" => Ok(()),
        _ => Err(Error::Plan(format!(
            "stream {stream}: offsets_store '{}' is not a postgres://user@host:port/db or mysql://user:password@host:port/db URL",
            redact(url)
        ))),
    }
}

impl OffsetsStore {
    pub fn new(stream: &str, url: &str, timeout: Duration) -> Result<Self> {
        check_url(stream, url)?;
        Ok(Self {
            url: url.to_string(),
            stream: stream.to_string(),
            timeout,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Source {
            source_name: self.stream.clone(),
            message: format!("offsets_store {}: {what}: {e}", redact(&self.url)),
            retryable: true,
        }
    }

    fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    async fn connect(&self) -> Result<Conn> {
        let connect = async {
            if self.is_postgres() {
                let client = crate::tls::pg_connect(
                    &self.url,
                    format!("stream {}: offsets_store", self.stream),
                )
                .await
                .map_err(|e| self.error("cannot connect", e))?;
                client
                    .batch_execute(PG_CREATE)
                    .await
                    .map_err(|e| self.error("creating table flumen_offsets", e))?;
                Ok(Conn::Postgres(client))
            } else {
                let opts = crate::tls::mysql_opts(&self.url)
                    .map_err(|e| self.error("cannot connect", e))?;
                let mut conn = mysql_async::Conn::new(opts)
                    .await
                    .map_err(|e| self.error("cannot connect", e))?;
                conn.query_drop(MY_CREATE)
                    .await
                    .map_err(|e| self.error("creating table flumen_offsets", e))?;
                Ok(Conn::MySql(conn))
            }
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(self.error(
                "cannot connect",
                format!("no answer within {} ms", self.timeout.as_millis()),
            )),
        }
    }

    /// The open connection, opened now if there is none.
    async fn conn(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Conn>>> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        Ok(guard)
    }

    /// The offsets stored under `query` for `topics`.
    pub async fn load(&self, query: &str, topics: &[String]) -> Result<Offsets> {
        let mut guard = self.conn().await?;
        let rows: Result<Vec<(String, i32, i64)>> = match guard.as_mut().expect("connected") {
            Conn::Postgres(c) => c
                .query(PG_LOAD, &[&query])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect()
                })
                .map_err(|e| self.error("reading flumen_offsets", e)),
            Conn::MySql(c) => c
                .exec(MY_LOAD, (query,))
                .await
                .map_err(|e| self.error("reading flumen_offsets", e)),
        };
        if rows.is_err() {
            *guard = None;
        }
        Ok(rows?
            .into_iter()
            .filter(|(t, _, _)| topics.contains(t))
            .map(|(t, p, o)| ((t, p), o))
            .collect())
    }

    /// Stores `offsets` under `query`, all in one transaction.
    pub async fn save(&self, query: &str, offsets: &Offsets) -> Result<()> {
        let mut guard = self.conn().await?;
        let saved = match guard.as_mut().expect("connected") {
            Conn::Postgres(c) => save_postgres(c, query, offsets)
                .await
                .map_err(|e| e.to_string()),
            Conn::MySql(c) => save_mysql(c, query, offsets)
                .await
                .map_err(|e| e.to_string()),
        };
        saved.map_err(|e| {
            // The connection may be broken: open a new one next time.
            *guard = None;
            self.error("writing flumen_offsets", e)
        })
    }
}

async fn save_postgres(
    c: &mut tokio_postgres::Client,
    query: &str,
    offsets: &Offsets,
) -> std::result::Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let stmt = tx.prepare(PG_SAVE).await?;
    for ((t, p), o) in offsets {
        tx.execute(&stmt, &[&query, t, p, o]).await?;
    }
    tx.commit().await
}

async fn save_mysql(
    c: &mut mysql_async::Conn,
    query: &str,
    offsets: &Offsets,
) -> std::result::Result<(), mysql_async::Error> {
    let mut tx = c.start_transaction(mysql_async::TxOpts::default()).await?;
    tx.exec_batch(
        MY_SAVE,
        offsets
            .iter()
            .map(|((t, p), o)| (query, t.as_str(), *p, *o)),
    )
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("mysql://flumen:secret@127.0.0.1:3306/flumen"),
            "mysql://flumen:***@127.0.0.1:3306/flumen"
        );
        assert_eq!(
            redact("postgres://flumen@127.0.0.1/flumen"),
            "postgres://flumen@127.0.0.1/flumen"
        );
        assert_eq!(
            redact("postgres://u@h/db?sslmode=disable&password=hunter2&PWD=x&sslkey=/k&user=u"),
            "postgres://u@h/db?sslmode=disable&password=***&PWD=***&sslkey=***&user=u"
        );
        assert_eq!(
            redact("mysql://u:p@h/db?password=q"),
            "mysql://u:***@h/db?password=***"
        );
        assert!(check_url("s", "redis://x").is_err());
        assert!(check_url("s", "postgresql://x@y/z").is_ok());
    }
}
