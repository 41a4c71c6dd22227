//! `sessiongate check`: a store loaded as `serve` loads it, and what a
//! security team asks of it (which tokens carry checksums, what has
//! expired, what has gone unused), or the record that is wrong.

use anyhow::Result;
use sessiongate_core::Kind;
use sessiongate_store::Store;
use sessiongate_store::last_use::LastUses;
use sessiongate_store::manage;

/// How long a credential goes unadmitted before `check` counts it unused.
const UNUSED_DAYS: u64 = 90;

/// Loads the store as `serve` does and says what it holds: counts, checksums,
/// expiry, last use, and for etcd whether the digest index agrees.
pub fn run(path: &std::path::Path, repair: bool, out: &mut dyn std::io::Write) -> Result<()> {
    // `serve` takes a missing store for an empty one; asked to check a
    // file, say that there is none rather than "0 credentials".
    let store = Store::open(path)?;
    if store.is_missing_file() {
        anyhow::bail!("no token store at {}", path.display());
    }
    let started = std::time::Instant::now();
    let set = store.load_set()?;
    let elapsed = started.elapsed();
    let keys = set.iter().filter(|c| c.kind == Kind::Key).count();
    writeln!(
        out,
        "{}: {} credentials ({} tokens, {keys} keys), all valid; loaded in {} ms",
        path.display(),
        set.len(),
        set.len() - keys,
        elapsed.as_millis()
    )?;
    let unchecksummed = set
        .iter()
        .filter(|c| c.kind == Kind::Token && !c.checksum)
        .count();
    if unchecksummed == 0 {
        writeln!(
            out,
            "checksums: every token carries one (checksummed_tokens may be set)"
        )?;
    } else {
        writeln!(
            out,
            "checksums: {unchecksummed} tokens minted before checksums (leave checksummed_tokens off)"
        )?;
    }
    let now = manage::now_ms();
    let expired = set.iter().filter(|c| c.expired(now)).count();
    let expiring = set.iter().filter(|c| c.expires.is_some()).count() - expired;
    writeln!(
        out,
        "expiry: {expired} expired (refused; delete them to tidy), {expiring} set to expire"
    )?;
    let uses = LastUses::load(&store)?;
    let idle_since = now.saturating_sub(UNUSED_DAYS * 86_400_000);
    let unused = set
        .iter()
        .filter(|c| {
            let last = uses.of(c.name, c.created).map_or(c.created, |u| u.at);
            last < idle_since
        })
        .count();
    writeln!(
        out,
        "last use: {unused} credentials unused for {UNUSED_DAYS} days (not admitted since, or since created)"
    )?;
    if let Store::Etcd(etcd) = &store {
        if repair {
            let fixed = etcd.repair_index()?;
            writeln!(out, "digest index: {fixed} entries written or removed")?;
        }
        let disagreements = etcd.index_disagreements()?;
        if !disagreements.is_empty() {
            anyhow::bail!(
                "the digest index disagrees with the records ({} places):\n  {}\n\
                 Run `sessiongate check --store {} --repair` to write it from the records.",
                disagreements.len(),
                disagreements.join("\n  "),
                path.display()
            );
        }
        writeln!(out, "digest index: agrees with the {} records", set.len())?;
    } else if repair {
        anyhow::bail!("--repair is for a store in etcd; a file store has no index");
    }
    Ok(())
}
