//! Last use's merge rule as a model: however admissions are split into
//! flushes across instances, and in whatever order the flushes land, the
//! store ends with each credential's latest minute, and a flush reports
//! exactly the documents it changed.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sessiongate_core::{LastUse, MINUTE_MS, Uses};

/// One admission: by which of three instances, of which of five
/// credentials, when (within a few hours).
fn admission() -> impl Strategy<Value = (usize, usize, u64)> {
    (0..3usize, 0..5usize, 0..(4 * 60 * MINUTE_MS))
}

proptest! {
    #[test]
    fn flushes_in_any_order_keep_each_credentials_latest_minute(
        admissions in prop::collection::vec(admission(), 1..200),
        cuts in prop::collection::vec(any::<bool>(), 200),
        order in prop::collection::vec(any::<u32>(), 200),
    ) {
        // Each instance's admissions, cut into flushes where `cuts` says.
        let mut flushes: Vec<(String, Uses)> = Vec::new();
        let mut open: BTreeMap<usize, Uses> = BTreeMap::new();
        for (i, &(instance, credential, at)) in admissions.iter().enumerate() {
            open.entry(instance)
                .or_default()
                .admitted(&format!("c{credential}"), at);
            if cuts[i] {
                let uses = open.remove(&instance).unwrap_or_default();
                flushes.push((format!("i{instance}"), uses));
            }
        }
        flushes.extend(open.into_iter().map(|(i, uses)| (format!("i{i}"), uses)));
        // Landing in an order of their own.
        let mut keyed: Vec<(u32, (String, Uses))> =
            flushes.into_iter().enumerate().map(|(i, f)| (order[i % order.len()], f)).collect();
        keyed.sort_by_key(|(k, _)| *k);

        let mut stored: Vec<LastUse> = Vec::new();
        for (_, (instance, uses)) in keyed {
            let before = stored.clone();
            let changed = uses.merge_into(&mut stored, &instance);
            let differ = stored.len() - before.len()
                + before.iter().zip(&stored).filter(|(a, b)| a != b).count();
            prop_assert_eq!(changed, differ, "a flush reports what it changed");
            for (old, new) in before.iter().zip(&stored) {
                prop_assert!(new.at >= old.at, "a use moved back: {:?} -> {:?}", old, new);
            }
        }
        let mut latest: BTreeMap<String, u64> = BTreeMap::new();
        for &(_, credential, at) in &admissions {
            let minute = at - at % MINUTE_MS;
            let slot = latest.entry(format!("c{credential}")).or_insert(minute);
            *slot = (*slot).max(minute);
        }
        let got: BTreeMap<String, u64> = stored.iter().map(|u| (u.name.clone(), u.at)).collect();
        prop_assert_eq!(got, latest);
    }
}
