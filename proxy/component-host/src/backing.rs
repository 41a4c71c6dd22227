//! Where `serve --component` keeps the component's key-value bucket: this
//! process's shared data (what the filter host uses), or etcd, so that the
//! component in a fleet shares one exact limit as the filter does. Either
//! way the bucket's compare-and-swap is strict: versions compared, and a key
//! absent when read is created by one writer only (etcd: `create_revision`
//! 0 in the txn).

use std::sync::Arc;

use sessiongate_core::{Answer, Need};
use sessiongate_etcd as etcd;

use sessiongate_etcd::Cluster;
use sessiongate_shared_data::{SharedData, SharedDataDown};

/// A key's value and version (etcd: its `mod_revision`).
pub type Versioned = (Vec<u8>, u64);

#[derive(Clone)]
pub enum Backing {
    Shared(SharedData),
    Etcd(EtcdBucket),
}

/// The bucket's keys in etcd, under `prefix`.
#[derive(Clone)]
pub struct EtcdBucket {
    pub cluster: Arc<Cluster>,
    pub prefix: String,
    pub timeout_ms: u32,
}

/// The bucket could not be reached (or answered what it should not).
#[derive(Debug)]
pub struct BucketUnavailable(pub String);

impl BucketUnavailable {
    /// This process's shared data failed (injected, or a poisoned lock).
    pub fn shared(_: SharedDataDown) -> BucketUnavailable {
        BucketUnavailable("the shared store is unavailable".into())
    }
}

impl Backing {
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, BucketUnavailable> {
        match self {
            Backing::Shared(shared) => shared
                .get(key)
                .map(|v| v.map(|(value, version)| (value, u64::from(version))))
                .map_err(BucketUnavailable::shared),
            Backing::Etcd(bucket) => match bucket.step(&Need::Read { key }).await {
                Answer::Value(entry) => Ok(entry.map(|e| (e.value.into_owned(), e.version))),
                other => Err(BucketUnavailable(format!("{other:?}"))),
            },
        }
    }

    /// Writes `value` if the key is still at `seen` (0: absent).
    pub async fn swap(
        &self,
        key: &str,
        value: Vec<u8>,
        seen: u64,
    ) -> Result<bool, BucketUnavailable> {
        match self {
            Backing::Shared(shared) => {
                let Ok(seen) = u32::try_from(seen) else {
                    return Ok(false);
                };
                shared
                    .swap_if(key, value, seen)
                    .map_err(BucketUnavailable::shared)
            }
            Backing::Etcd(bucket) => {
                let need = match seen {
                    0 => Need::Create { key, value: &value },
                    version => Need::Swap {
                        key,
                        version,
                        value: &value,
                    },
                };
                match bucket.step(&need).await {
                    Answer::Written => Ok(true),
                    Answer::Value(_) | Answer::Conflict => Ok(false),
                    other => Err(BucketUnavailable(format!("{other:?}"))),
                }
            }
        }
    }

    /// Writes `value` whatever is there.
    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), BucketUnavailable> {
        match self {
            Backing::Shared(shared) => shared
                .set(key, value, 0)
                .map(drop)
                .map_err(BucketUnavailable::shared),
            Backing::Etcd(bucket) => bucket.plain(etcd::put(&bucket.key(key), &value)).await,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), BucketUnavailable> {
        match self {
            Backing::Shared(shared) => shared.delete(key).map_err(BucketUnavailable::shared),
            Backing::Etcd(bucket) => bucket.plain(etcd::delete(&bucket.key(key))).await,
        }
    }

    /// Every key of the bucket (shared data only: in etcd the bucket is the
    /// component's alone, and listing it is not something it does).
    pub fn keys(&self) -> Result<Vec<String>, BucketUnavailable> {
        match self {
            Backing::Shared(shared) => shared.keys().map_err(BucketUnavailable::shared),
            Backing::Etcd(_) => Err(BucketUnavailable(
                "listing keys in etcd is not supported".into(),
            )),
        }
    }
}

impl EtcdBucket {
    fn key(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    /// One step of core's etcd protocol on the bucket's key.
    async fn step(&self, need: &Need<'_>) -> Answer<'static> {
        let Some(key) = need.key() else {
            return Answer::Failed(sessiongate_core::KvError("not a key-value step".into()));
        };
        let Some(call) = etcd::call(need, &self.key(key)) else {
            return Answer::Failed(sessiongate_core::KvError("not a key-value step".into()));
        };
        let response = self
            .cluster
            .post_json(call.path, call.body, self.timeout_ms)
            .await;
        match response {
            Some((status, body)) => etcd::answer(call.sent, Some(status), &body),
            None => etcd::answer(call.sent, None, b""),
        }
    }

    /// A call whose answer matters only by its status.
    async fn plain(&self, call: etcd::Call) -> Result<(), BucketUnavailable> {
        match self
            .cluster
            .post_json(call.path, call.body, self.timeout_ms)
            .await
        {
            Some((200, _)) => Ok(()),
            Some((status, body)) => Err(BucketUnavailable(format!(
                "etcd answered {status}: {}",
                String::from_utf8_lossy(&body)
            ))),
            None => Err(BucketUnavailable("etcd did not answer".into())),
        }
    }
}
