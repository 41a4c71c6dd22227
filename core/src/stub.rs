//! The stub sessions backend (contract section 5): deterministic synthetic
//! sessions per (customer, site), paged exactly as the real service pages.
//!
//! Session `i` of a site starts at `base + i * SPACING + jitter(i)` with
//! `jitter < SPACING`, so start times are unique and ascending in `i`: a
//! `startAfter` timestamp cursor never skips or repeats a session.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::query::SessionQuery;

/// Sessions a page holds at most.
pub(crate) const PAGE_SIZE: usize = 1_000;
/// Sessions per site unless configured otherwise: 3 pages (1,000 + 1,000 + 600).
pub const DEFAULT_SESSIONS_PER_SITE: u32 = 2_600;
/// 2024-06-01T00:00:00Z, in ms.
const EPOCH_MS: u64 = 1_717_200_000_000;
/// Ten minutes between consecutive session starts, before jitter.
const SPACING_MS: u64 = 600_000;

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One synthetic session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id.
    pub id: u64,
    /// The visitor's id.
    pub user: u32,
    /// Pages viewed.
    pub pages: u32,
    /// Length in milliseconds.
    pub duration: u64,
    /// Start, Unix milliseconds.
    pub timestamp: u64,
}

impl Session {
    /// End, Unix milliseconds.
    pub fn end_timestamp(&self) -> u64 {
        self.timestamp + self.duration
    }
}

/// The sessions of one site.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StubSite {
    seed: u64,
    count: u32,
}

impl StubSite {
    /// The sessions of `site` of `customer`: `count` of them, the same on every call.
    pub(crate) fn new(customer: &str, site: &str, count: u32) -> Self {
        StubSite {
            seed: fnv1a(&[customer, site]),
            count,
        }
    }

    fn base(&self) -> u64 {
        EPOCH_MS + self.seed % 86_400_000
    }

    /// The `i`th session, oldest first.
    pub(crate) fn session(&self, i: u32) -> Session {
        let r = splitmix(self.seed ^ u64::from(i).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let timestamp = self.base() + u64::from(i) * SPACING_MS + r % (SPACING_MS - 1);
        Session {
            id: splitmix(r),
            user: ((r >> 20) % 500) as u32,
            pages: 1 + ((r >> 40) % 30) as u32,
            // Up to an hour: longer than the spacing, so end times are not in start order.
            duration: 5_000 + (r >> 8) % 3_600_000,
            timestamp,
        }
    }

    /// The first session index whose start is strictly after `t`.
    fn first_after(&self, t: u64) -> u32 {
        // Start times ascend in i: binary search over the index.
        let (mut lo, mut hi) = (0u32, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.session(mid).timestamp <= t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The page the query asks for, and the cursor when more sessions follow.
    pub(crate) fn page(&self, q: &SessionQuery) -> (Vec<Session>, Option<u64>) {
        let from = match (q.start_time, q.start_after) {
            (Some(s), Some(a)) => self
                .first_after(a)
                .max(self.first_after(s.saturating_sub(1))),
            (Some(s), None) if s > 0 => self.first_after(s - 1),
            (_, Some(a)) => self.first_after(a),
            _ => 0,
        };
        let mut matching = (from..self.count)
            .map(|i| self.session(i))
            .filter(|s| q.end_time.is_none_or(|end| s.end_timestamp() <= end));
        let page: Vec<Session> = matching.by_ref().take(PAGE_SIZE).collect();
        let more = page.len() == PAGE_SIZE && matching.next().is_some();
        let cursor = if more {
            page.last().map(|s| s.timestamp)
        } else {
            None
        };
        (page, cursor)
    }

    /// The `200` body: `{"data":{"startAfter":…,"sessions":[…]}}`.
    pub(crate) fn page_json(&self, q: &SessionQuery) -> String {
        let (sessions, cursor) = self.page(q);
        let mut out = String::with_capacity(64 + sessions.len() * 170);
        out.push_str("{\"data\":{");
        if let Some(c) = cursor {
            let _ = write!(out, "\"startAfter\":{c},");
        }
        out.push_str("\"sessions\":[");
        for (n, s) in sessions.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"id\":\"{:016x}\",\"user\":{{\"id\":\"u{:03}\",\"email\":\"user{:03}@example.com\"}},\"pages\":{},\"duration\":{},\"timestamp\":{},\"endTimestamp\":{}}}",
                s.id,
                s.user,
                s.user,
                s.pages,
                s.duration,
                s.timestamp,
                s.end_timestamp()
            );
        }
        out.push_str("]}}");
        out
    }
}

/// Pages kept per [`PageCache`]: a full page is ~160 KB of JSON.
pub(crate) const CACHED_PAGES: usize = 8;

/// The last pages rendered. A page is a pure function of (customer, site,
/// sessions per site, query), so a repeated request can be answered with the
/// bytes already made: rendering 1,000 sessions was nearly all of an
/// admitted request's cost under load. Least recently used goes first.
#[derive(Debug, Default)]
pub(crate) struct PageCache {
    /// Most recent last.
    pages: Vec<(String, String, u32, SessionQuery, Arc<String>)>,
}

impl PageCache {
    pub(crate) fn page_json(
        &mut self,
        customer: &str,
        site: &str,
        count: u32,
        q: &SessionQuery,
    ) -> Arc<String> {
        let hit = self.pages.iter().position(|(c, s, n, query, _)| {
            c == customer && s == site && *n == count && query == q
        });
        if let Some(i) = hit {
            let entry = self.pages.remove(i);
            let body = entry.4.clone();
            self.pages.push(entry);
            return body;
        }
        let body = Arc::new(StubSite::new(customer, site, count).page_json(q));
        if self.pages.len() >= CACHED_PAGES {
            self.pages.remove(0);
        }
        self.pages.push((
            customer.to_owned(),
            site.to_owned(),
            count,
            *q,
            body.clone(),
        ));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn site() -> StubSite {
        StubSite::new("acme", "site-1", DEFAULT_SESSIONS_PER_SITE)
    }

    /// Pages a whole site from a query, following cursors.
    fn page_all(site: &StubSite, mut q: SessionQuery) -> Vec<Session> {
        let mut all = Vec::new();
        loop {
            let (page, cursor) = site.page(&q);
            assert!(page.len() <= PAGE_SIZE);
            all.extend(page);
            match cursor {
                Some(c) => q.start_after = Some(c),
                None => return all,
            }
        }
    }

    #[test]
    fn deterministic_and_distinct_per_site() {
        assert_eq!(site().session(7), site().session(7));
        assert_ne!(
            StubSite::new("acme", "site-2", 10).session(0),
            site().session(0)
        );
        assert_ne!(
            StubSite::new("acm", "esite-1", 10).session(0).timestamp,
            site().session(0).timestamp
        );
    }

    #[test]
    fn three_pages_by_default() {
        let s = site();
        let (p1, c1) = s.page(&SessionQuery::default());
        assert_eq!(p1.len(), 1000);
        assert_eq!(c1, Some(p1[999].timestamp));
        let (p2, c2) = s.page(&SessionQuery {
            start_after: c1,
            ..Default::default()
        });
        assert_eq!(p2.len(), 1000);
        assert!(p2[0].timestamp > p1[999].timestamp);
        let (p3, c3) = s.page(&SessionQuery {
            start_after: c2,
            ..Default::default()
        });
        assert_eq!(p3.len(), 600);
        assert_eq!(c3, None);
    }

    #[test]
    fn exactly_one_full_page_has_no_cursor() {
        let s = StubSite::new("a", "b", 1000);
        let (page, cursor) = s.page(&SessionQuery::default());
        assert_eq!((page.len(), cursor), (1000, None));
    }

    #[test]
    fn start_time_is_inclusive_end_time_bounds_the_end() {
        let s = site();
        let x = s.session(10);
        let (page, _) = s.page(&SessionQuery {
            start_time: Some(x.timestamp),
            end_time: Some(x.end_timestamp()),
            ..Default::default()
        });
        assert_eq!(page.first(), Some(&x));
        assert!(page.iter().all(|p| p.end_timestamp() <= x.end_timestamp()));
    }

    #[test]
    fn json_shape() {
        let body = site().page_json(&SessionQuery::default());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sessions = v["data"]["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1000);
        let first = &sessions[0];
        for field in ["id", "pages", "duration", "timestamp", "endTimestamp"] {
            assert!(!first[field].is_null(), "{field}");
        }
        assert!(first["user"]["id"].is_string() && first["user"]["email"].is_string());
        assert_eq!(
            first["endTimestamp"].as_u64(),
            Some(first["timestamp"].as_u64().unwrap() + first["duration"].as_u64().unwrap())
        );
        assert_eq!(v["data"]["startAfter"], sessions[999]["timestamp"]);
        let last = site().page_json(&SessionQuery {
            start_after: Some(u64::MAX >> 12),
            ..Default::default()
        });
        assert_eq!(last, "{\"data\":{\"sessions\":[]}}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Paging a whole site returns every matching session once, in order,
        /// for any time window.
        #[test]
        fn paging_returns_every_session_once_in_order(
            count in 0u32..3_200,
            a in 0u64..(2_600 * SPACING_MS + 86_400_000),
            b in 0u64..(2_600 * SPACING_MS + 86_400_000),
            use_start in any::<bool>(),
            use_end in any::<bool>(),
        ) {
            let s = StubSite::new("c", "s", count);
            let (lo, hi) = (EPOCH_MS + a.min(b), EPOCH_MS + a.max(b));
            let q = SessionQuery {
                start_time: use_start.then_some(lo),
                end_time: use_end.then_some(hi),
                start_after: None,
            };
            let paged = page_all(&s, q);
            let expected: Vec<Session> = (0..count)
                .map(|i| s.session(i))
                .filter(|x| q.start_time.is_none_or(|t| x.timestamp >= t))
                .filter(|x| q.end_time.is_none_or(|t| x.end_timestamp() <= t))
                .collect();
            prop_assert_eq!(paged.len(), expected.len());
            prop_assert!(paged == expected);
            prop_assert!(paged.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
        }
    }

    #[test]
    fn the_page_cache_answers_what_rendering_would() {
        let mut cache = PageCache::default();
        let queries = [
            SessionQuery::default(),
            SessionQuery {
                start_after: Some(EPOCH_MS + 5 * SPACING_MS),
                ..SessionQuery::default()
            },
        ];
        for _ in 0..2 {
            for site in ["a", "b"] {
                for q in &queries {
                    let fresh = StubSite::new("acme", site, 2_600).page_json(q);
                    assert_eq!(*cache.page_json("acme", site, 2_600, q), fresh);
                }
            }
        }
        // A different size of site is a different page.
        let small = cache.page_json("acme", "a", 10, &queries[0]);
        assert_eq!(
            *small,
            StubSite::new("acme", "a", 10).page_json(&queries[0])
        );
        assert_ne!(small, cache.page_json("acme", "a", 2_600, &queries[0]));
        // A hit hands out the cached bytes themselves, not a copy.
        let again = cache.page_json("acme", "a", 10, &queries[0]);
        assert!(Arc::ptr_eq(&small, &again));
    }

    #[test]
    fn the_page_cache_stays_bounded() {
        let mut cache = PageCache::default();
        for i in 0..(CACHED_PAGES as u64 * 3) {
            let q = SessionQuery {
                start_time: Some(EPOCH_MS + i),
                ..SessionQuery::default()
            };
            cache.page_json("acme", "a", 5, &q);
        }
        assert_eq!(cache.pages.len(), CACHED_PAGES);
    }
}
