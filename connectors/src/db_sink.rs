//! What the `postgres` and `mysql` sinks share: their options and checks.

use datafusion::arrow::datatypes::Schema;
use flumen_engine::registry::ConnectorOptions;
use flumen_engine::{Result, plan_err};

use crate::offsets_store::redact;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Append,
    Upsert,
}

/// `url`, `table`, `mode`, `key`.
pub(crate) const OPTIONS: [&str; 4] = ["url", "table", "mode", "key"];

#[derive(Debug)]
pub(crate) struct DbOptions {
    pub url: String,
    pub table: String,
    pub mode: Mode,
    pub key: Vec<String>,
}

/// Checks a database sink's options; `schemes` are the URL schemes it takes, the first
/// shown in messages with `example`.
pub(crate) fn parse(
    connector: &str,
    name: &str,
    options: &ConnectorOptions,
    schemes: &[&str],
    example: &str,
) -> Result<DbOptions> {
    let (Some(url), Some(table)) = (options.get("url"), options.get("table")) else {
        return plan_err!(
            "sink {name}: connector '{connector}' needs url = '{example}' and table = '...'"
        );
    };
    if !schemes.iter().any(|s| url.starts_with(&format!("{s}://"))) {
        return plan_err!(
            "sink {name}: url '{}' is not a {}:// URL",
            redact(url),
            schemes[0]
        );
    }
    let mode = match options
        .get("mode")
        .map(|m| m.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("append") => Mode::Append,
        Some("upsert") => Mode::Upsert,
        Some(other) => return plan_err!("sink {name}: mode '{other}' is not append or upsert"),
    };
    let key: Vec<String> = options
        .get("key")
        .map(|k| {
            k.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if mode == Mode::Upsert && key.is_empty() {
        return plan_err!("sink {name}: mode 'upsert' needs key = 'col[, col...]'");
    }
    Ok(DbOptions {
        url: url.clone(),
        table: table.clone(),
        mode,
        key,
    })
}

/// Every `key` column is in the query's output.
pub(crate) fn check_keys(sink: &str, key: &[String], schema: &Schema) -> Result<()> {
    for k in key {
        if schema.index_of(k).is_err() {
            return plan_err!(
                "sink {sink}: key column '{k}' is not in the output ({})",
                crate::column_list(schema)
            );
        }
    }
    Ok(())
}

/// `, PRIMARY KEY (k1, k2)` for upserts, nothing for appends.
pub(crate) fn primary_key_clause(mode: Mode, key: &[String], ident: fn(&str) -> String) -> String {
    if mode != Mode::Upsert {
        return String::new();
    }
    let cols: Vec<String> = key.iter().map(|k| ident(k)).collect();
    format!(", PRIMARY KEY ({})", cols.join(", "))
}

/// Row ranges `[start, end)` of `rows` rows, each small enough that one multi-row
/// INSERT of `columns` columns stays under `max_params` bound parameters.
pub(crate) fn statement_ranges(
    rows: usize,
    columns: usize,
    max_params: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let per_statement = (max_params / columns.max(1)).max(1);
    (0..rows)
        .step_by(per_statement)
        .map(move |start| (start, (start + per_statement).min(rows)))
}
