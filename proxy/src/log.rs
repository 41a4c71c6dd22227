//! `serve`'s log lines on stderr: plain (`sessiongate warn: …`, the default,
//! for people) or one JSON object a line (`--log-format json`, for log
//! pipelines). Every line of the process goes through here, the filter's
//! `proxy_log` and the access line included, so a pipeline never meets a
//! line it cannot parse.

use std::fmt::Display;
use std::sync::OnceLock;
use std::time::SystemTime;

use serde_json::{Map, Value};

/// How lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `sessiongate warn: message`.
    #[default]
    Plain,
    /// `{"ts":"…","level":"warn","msg":"message"}`.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Chooses the format once, before the first line; later calls are ignored.
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

fn format() -> Format {
    FORMAT.get().copied().unwrap_or_default()
}

/// One line, formatted, without its newline.
pub fn line(level: Level, message: &str) -> String {
    match format() {
        Format::Plain => match level {
            Level::Info => format!("sessiongate: {message}"),
            Level::Warn => format!("sessiongate warn: {message}"),
            Level::Error => format!("sessiongate ERROR: {message}"),
        },
        Format::Json => json(level, message, Map::new()),
    }
}

fn json(level: Level, message: &str, fields: Map<String, Value>) -> String {
    let mut object = Map::new();
    object.insert("ts".into(), timestamp().into());
    object.insert("level".into(), level.as_str().into());
    object.insert("msg".into(), message.into());
    object.extend(fields);
    Value::Object(object).to_string()
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub fn info(message: impl Display) {
    eprintln!("{}", line(Level::Info, &message.to_string()));
}

pub fn warn(message: impl Display) {
    eprintln!("{}", line(Level::Warn, &message.to_string()));
}

pub fn error(message: impl Display) {
    eprintln!("{}", line(Level::Error, &message.to_string()));
}

/// The access line of one request.
pub struct Access<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The credential's name, once authenticated (never its secret).
    pub credential: Option<&'a str>,
    pub latency_us: u128,
}

impl Access<'_> {
    /// Plain: `access method=GET path=/me status=200 credential=demo latency_us=41`,
    /// each field one printable word. JSON: the same fields, as they are.
    pub fn line(&self) -> String {
        match format() {
            Format::Plain => format!(
                "access method={} path={} status={} credential={} latency_us={}",
                word(self.method),
                word(self.path),
                self.status,
                self.credential.map_or("-".to_owned(), word),
                self.latency_us
            ),
            Format::Json => {
                let mut fields = Map::new();
                fields.insert("method".into(), self.method.into());
                fields.insert("path".into(), truncated(self.path).into());
                fields.insert("status".into(), self.status.into());
                fields.insert(
                    "credential".into(),
                    self.credential.map_or(Value::Null, |c| truncated(c).into()),
                );
                fields.insert("latency_us".into(), (self.latency_us as u64).into());
                json(Level::Info, "access", fields)
            }
        }
    }
}

/// At most 256 characters of a field a client chose.
fn truncated(s: &str) -> String {
    s.chars().take(256).collect()
}

/// A plain-format field stays one printable word.
fn word(s: &str) -> String {
    s.chars()
        .take(256)
        .map(|c| if c.is_control() || c == ' ' { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fields_are_one_printable_word() {
        assert_eq!(word("/a b\n\u{7}c"), "/a_b__c");
        assert_eq!(word(&"x".repeat(300)).len(), 256);
    }

    #[test]
    fn json_lines_are_one_object_with_every_field() {
        let line = json(Level::Warn, "a \"quoted\"\nmessage", Map::new());
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "a \"quoted\"\nmessage");
        let ts = v["ts"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
    }
}
