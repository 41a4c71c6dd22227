//! The Worker's last use (issue 46): the object notes each credential its
//! decisions admit (core's `Uses`, in memory) and writes them to its SQLite
//! table on an alarm, at most once a flush period: the request path sets
//! one alarm a period, and writes no last use. An object that is evicted
//! before its alarm loses that period's uses, as any instance that dies.

use sessiongate_core::{LastUse, Uses};

use crate::credential_store::LAST_USE_INSTANCE as INSTANCE;
use crate::sql_table::sql_error;

/// How long the object keeps uses before it writes them, ms (a binding
/// may shorten it, for tests; default a minute).
pub const FLUSH_BINDING: &str = "SESSIONGATE_LAST_USE_FLUSH_MS";
pub const DEFAULT_FLUSH_MS: i64 = 60_000;

const CREATE: &str =
    "CREATE TABLE IF NOT EXISTS last_used (name TEXT PRIMARY KEY, at INTEGER NOT NULL)";

/// Writes `uses` into the table, each keeping the later minute of what
/// is stored and what was noted (core's merge rule, in SQL): how many
/// rows changed.
pub(crate) fn write(sql: &worker::SqlStorage, uses: &Uses) -> Result<usize, String> {
    sql.exec(CREATE, None).map_err(sql_error)?;
    let mut changed = 0;
    for (name, at) in uses.iter() {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let cursor = sql
            .exec(
                "INSERT INTO last_used (name, at) VALUES (?, ?) \
                 ON CONFLICT(name) DO UPDATE SET at = excluded.at WHERE excluded.at > last_used.at",
                vec![name.into(), at.into()],
            )
            .map_err(sql_error)?;
        changed += cursor.rows_written();
    }
    Ok(changed)
}

#[derive(serde::Deserialize)]
struct Row {
    name: String,
    at: i64,
}

/// A page of the stored last uses, by name after `after`.
pub(crate) fn page(
    sql: &worker::SqlStorage,
    after: &str,
    limit: usize,
) -> Result<Vec<LastUse>, String> {
    sql.exec(CREATE, None).map_err(sql_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<Row> = sql
        .exec(
            "SELECT name, at FROM last_used WHERE name > ? ORDER BY name LIMIT ?",
            vec![after.into(), limit.into()],
        )
        .and_then(|c| c.to_array())
        .map_err(sql_error)?;
    Ok(rows
        .into_iter()
        .map(|r| LastUse {
            name: r.name,
            at: u64::try_from(r.at).unwrap_or(0),
            instance: INSTANCE.to_owned(),
        })
        .collect())
}
