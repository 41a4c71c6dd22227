//! The component's last use (issue 46). A component instance lives for one
//! request, so there is no memory to gather uses in: an admission reads
//! the credential's last-use key and writes it only when the stored minute
//! is older (core's merge rule), so a credential costs its bucket one
//! write a minute whatever the traffic, and one read an admission.

use sessiongate_core::{LastUse, Uses};

/// The instance the component's uses are stored under.
pub const INSTANCE: &str = "component";

/// The bucket key of the credential `name`'s last use.
pub fn key(name: &str) -> String {
    format!("sessiongate.last_used.{name}")
}

/// What to write under [`key`] for an admission of `name` at `now_ms`,
/// given what is stored there: `None` when the stored minute is as late
/// (nothing to write). A value that does not parse is written over.
pub fn update(name: &str, now_ms: u64, stored: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut docs: Vec<LastUse> = stored
        .and_then(|bytes| serde_json::from_slice::<LastUse>(bytes).ok())
        .filter(|u| u.name == name)
        .into_iter()
        .collect();
    let mut uses = Uses::default();
    uses.admitted(name, now_ms);
    if uses.merge_into(&mut docs, INSTANCE) == 0 {
        return None;
    }
    docs.first().and_then(|u| serde_json::to_vec(u).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket of one key, counting its writes.
    #[derive(Default)]
    struct Model {
        value: Option<Vec<u8>>,
        writes: usize,
    }

    impl Model {
        fn admitted(&mut self, name: &str, now_ms: u64) {
            if let Some(v) = update(name, now_ms, self.value.as_deref()) {
                self.value = Some(v);
                self.writes += 1;
            }
        }

        fn stored(&self) -> LastUse {
            serde_json::from_slice(self.value.as_deref().unwrap()).unwrap()
        }
    }

    #[test]
    fn a_minute_of_admissions_is_one_write() {
        let mut bucket = Model::default();
        let start = 1_796_185_680_000; // a minute's first millisecond
        for i in 0..1_000 {
            bucket.admitted("ci", start + i * 59);
        }
        assert_eq!(bucket.writes, 1, "1,000 admissions in one minute");
        assert_eq!(bucket.stored().at, start);
        assert_eq!(bucket.stored().instance, INSTANCE);
        bucket.admitted("ci", start + 60_000);
        assert_eq!(bucket.writes, 2, "the next minute");
        assert_eq!(bucket.stored().at, start + 60_000);
        bucket.admitted("ci", start + 1);
        assert_eq!(bucket.writes, 2, "an older clock moves nothing back");
    }

    #[test]
    fn a_value_that_is_not_a_last_use_is_written_over() {
        assert!(update("ci", 60_000, Some(b"garbage")).is_some());
        let other = serde_json::to_vec(&LastUse {
            name: "cd".into(),
            at: 120_000,
            instance: "x".into(),
        })
        .unwrap();
        let written = update("ci", 60_000, Some(&other)).unwrap();
        let u: LastUse = serde_json::from_slice(&written).unwrap();
        assert_eq!((u.name.as_str(), u.at), ("ci", 60_000));
    }
}
