//! `sessiongate worker-sync`: makes the Worker's credential store (the
//! Durable Object's table, `edge-worker/src/credential_store.rs`) hold
//! exactly the token store's records, through the Worker's admin API. It
//! lists what is stored (digests and fingerprints), writes only what is new
//! or changed and deletes what is gone, in batches: idempotent (a second
//! run does nothing), and what it sends and prints are records, which hold
//! hashes and hints, never a secret. The admin secret comes from the
//! environment, never the command line.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, bail};
use sessiongate_edge_worker::credential_store::{Applied, Batch, SYNC_BATCH, diff};

use sessiongate_core::{LastUse, Uses};
use sessiongate_edge_worker::credential_store::LAST_USE_INSTANCE;
use sessiongate_store::Store;

/// The environment variable holding the Worker's admin secret.
pub const ADMIN_SECRET_ENV: &str = "SESSIONGATE_ADMIN_SECRET";

pub fn run(store: &Store, url: &str, dry_run: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let secret = std::env::var(ADMIN_SECRET_ENV)
        .map_err(|_| anyhow!("set {ADMIN_SECRET_ENV} to the Worker's admin secret"))?;
    let base = url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--url must be the Worker's http:// or https:// origin, not {url:?}");
    }
    let wanted = store.load()?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {secret}");
    let stored = listing(&agent, base, &auth)?;
    let plan = diff(&wanted, &stored);
    writeln!(
        out,
        "worker-sync: {} in the store, {} in the Worker; {} to write, {} to delete",
        wanted.len(),
        stored.len(),
        plan.put.len(),
        plan.delete.len()
    )?;
    if dry_run {
        for record in &plan.put {
            let known = stored.contains_key(&record.hash);
            let verb = if known { "update" } else { "create" };
            writeln!(
                out,
                "  {verb} {} ({}, {})",
                record.name,
                if record.kind == sessiongate_core::Kind::Token {
                    "token"
                } else {
                    "key"
                },
                record.hint
            )?;
        }
        for hash in &plan.delete {
            writeln!(
                out,
                "  delete the credential with digest {}…",
                hash.get(..12).unwrap_or(hash)
            )?;
        }
        return Ok(());
    }
    let mut done = Applied::default();
    let deletes = plan.delete.chunks(SYNC_BATCH).map(|d| Batch {
        put: Vec::new(),
        delete: d.to_vec(),
    });
    let puts = plan.put.chunks(SYNC_BATCH).map(|p| Batch {
        put: p.to_vec(),
        delete: Vec::new(),
    });
    // Deletes first: a name freed by one record can then be taken by another.
    for batch in deletes.chain(puts) {
        let body = serde_json::to_string(&batch)?;
        let mut response = agent
            .post(format!("{base}/__sessiongate/credentials"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(body)
            .with_context(|| format!("cannot reach {base}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        if status != 200 {
            bail!("the Worker refused a batch ({status}): {text}");
        }
        let applied: Applied = serde_json::from_str(&text)
            .with_context(|| format!("the Worker answered what is not a sync result: {text}"))?;
        done.put += applied.put;
        done.deleted += applied.deleted;
    }
    writeln!(
        out,
        "worker-sync: wrote {}, deleted {}",
        done.put, done.deleted
    )?;
    let moved = bring_last_uses(&agent, base, &auth, store)?;
    writeln!(
        out,
        "worker-sync: last use of {moved} credentials brought into the store"
    )?;
    Ok(())
}

/// Every stored digest and its fingerprint, a page at a time.
fn listing(agent: &ureq::Agent, base: &str, auth: &str) -> Result<BTreeMap<String, String>> {
    let pairs: Vec<(String, String)> = paged(
        agent,
        base,
        "/__sessiongate/credentials",
        auth,
        |(hash, _)| hash,
    )?;
    Ok(pairs.into_iter().collect())
}

/// Everything an admin listing `path` holds, a page at a time, each page
/// after the key (`after`) of the last item of the one before.
fn paged<T: serde::de::DeserializeOwned>(
    agent: &ureq::Agent,
    base: &str,
    path: &str,
    auth: &str,
    key: impl Fn(&T) -> &String,
) -> Result<Vec<T>> {
    let mut items = Vec::new();
    let mut after = String::new();
    loop {
        let mut response = agent
            .get(format!("{base}{path}"))
            .query("after", &after)
            .header("authorization", auth)
            .call()
            .with_context(|| format!("cannot reach {base}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()?;
        match status {
            200 => {}
            404 => bail!(
                "{base} has no {path}: is it the sessiongate Worker (of this release), and is the admin secret right?"
            ),
            _ => bail!("the Worker answered {status}: {text}"),
        }
        let page: Vec<T> = serde_json::from_str(&text)
            .with_context(|| format!("the Worker's {path} is not a list: {text}"))?;
        let Some(last) = page.last() else {
            return Ok(items);
        };
        after = key(last).clone();
        items.extend(page);
    }
}

/// Brings the Worker's last uses into the store, merged as a gate's flush
/// is (the later minute wins): what `token list` and `check` then show.
fn bring_last_uses(agent: &ureq::Agent, base: &str, auth: &str, store: &Store) -> Result<usize> {
    let uses: Vec<LastUse> = paged(
        agent,
        base,
        "/__sessiongate/last-used",
        auth,
        |u: &LastUse| &u.name,
    )?;
    let mut noted = Uses::default();
    for u in &uses {
        noted.admitted(&u.name, u.at);
    }
    sessiongate_store::last_use::flush(store, &noted, LAST_USE_INSTANCE)
}
