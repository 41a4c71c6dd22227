//! The token store's file format: `{"version":1,"credentials":[…]}`, records
//! with hashes only. The CLI reads and writes it; the fuzzer attacks it here.

use serde::{Deserialize, Serialize};

use crate::credential::{CredentialRecord, CredentialSet};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    credentials: Vec<CredentialRecord>,
}

/// Parses a store; every record is checked as the gate will check it.
pub fn parse(bytes: &[u8]) -> Result<Vec<CredentialRecord>, String> {
    let file: StoreFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != FORMAT_VERSION {
        return Err(format!(
            "version {} is not supported (expected {FORMAT_VERSION})",
            file.version
        ));
    }
    CredentialSet::check(&file.credentials)?;
    Ok(file.credentials)
}

/// The file's bytes: pretty JSON and a final newline, for people who look.
pub fn serialize(records: &[CredentialRecord]) -> Vec<u8> {
    let file = StoreFile {
        version: FORMAT_VERSION,
        credentials: records.to_vec(),
    };
    let mut json = serde_json::to_vec_pretty(&file).unwrap_or_default();
    json.push(b'\n');
    json
}
