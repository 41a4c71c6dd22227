//! The credential table in the Durable Object's SQLite storage: core's
//! credential store [`Table`] over `worker::SqlStorage`.

use sessiongate_core::CredentialRecord;

use crate::credential_store::Table;

/// The credential table in the object's SQLite storage.
pub(crate) struct SqlTable(pub(crate) worker::SqlStorage);

#[derive(serde::Deserialize)]
struct RecordRow {
    record: String,
}

#[derive(serde::Deserialize)]
struct HashRow {
    hash: String,
}

#[derive(serde::Deserialize)]
struct ListedRow {
    hash: String,
    fingerprint: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct CountRow {
    pub(crate) n: u64,
}

pub(crate) fn sql_error(e: worker::Error) -> String {
    e.to_string()
}

impl Table for SqlTable {
    fn get(&mut self, hashes: &[String]) -> std::result::Result<Vec<CredentialRecord>, String> {
        let mut records = Vec::new();
        for hash in hashes {
            let rows: Vec<RecordRow> = self
                .0
                .exec(
                    "SELECT record FROM credentials WHERE hash = ?",
                    vec![hash.as_str().into()],
                )
                .and_then(|c| c.to_array())
                .map_err(sql_error)?;
            for row in rows {
                records.push(serde_json::from_str(&row.record).map_err(|e| e.to_string())?);
            }
        }
        Ok(records)
    }

    fn put(
        &mut self,
        record: &CredentialRecord,
        fingerprint: &str,
    ) -> std::result::Result<(), String> {
        let json = serde_json::to_string(record).map_err(|e| e.to_string())?;
        self.0
            .exec(
                "INSERT OR REPLACE INTO credentials (hash, name, record, fingerprint) VALUES (?, ?, ?, ?)",
                vec![
                    record.hash.as_str().into(),
                    record.name.as_str().into(),
                    json.into(),
                    fingerprint.into(),
                ],
            )
            .map(|_| ())
            .map_err(sql_error)
    }

    fn delete(&mut self, hash: &str) -> std::result::Result<bool, String> {
        self.0
            .exec("DELETE FROM credentials WHERE hash = ?", vec![hash.into()])
            .map(|c| c.rows_written() > 0)
            .map_err(sql_error)
    }

    fn named(&mut self, name: &str) -> std::result::Result<Option<String>, String> {
        let rows: Vec<HashRow> = self
            .0
            .exec(
                "SELECT hash FROM credentials WHERE name = ?",
                vec![name.into()],
            )
            .and_then(|c| c.to_array())
            .map_err(sql_error)?;
        Ok(rows.into_iter().next().map(|r| r.hash))
    }

    fn list(
        &mut self,
        after: &str,
        limit: usize,
    ) -> std::result::Result<Vec<(String, String)>, String> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<ListedRow> = self
            .0
            .exec(
                "SELECT hash, fingerprint FROM credentials WHERE hash > ? ORDER BY hash LIMIT ?",
                vec![after.into(), limit.into()],
            )
            .and_then(|c| c.to_array())
            .map_err(sql_error)?;
        Ok(rows.into_iter().map(|r| (r.hash, r.fingerprint)).collect())
    }

    fn digests(&mut self) -> std::result::Result<Vec<String>, String> {
        let rows: Vec<HashRow> = self
            .0
            .exec("SELECT hash FROM credentials", None)
            .and_then(|c| c.to_array())
            .map_err(sql_error)?;
        Ok(rows.into_iter().map(|r| r.hash).collect())
    }
}
