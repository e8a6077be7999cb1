//! [`ReplicatedBlobStore`]: one [`BlobStore`] over several named locations, each chunk kept on
//! `replicas` of them chosen by rendezvous hashing, a put acknowledged once `write_quorum`
//! copies are durable, reads failing over past missing, unreachable and corrupt copies.
//!
//! The second policy, erasure coding ([`ReplicatedBlobStore::erasure`]), places `data + parity`
//! shards the same way, shard `i` on the `i`-th placed location (see `erasure.rs`).
//!
//! It is a wrapper like [`crate::FaultyBlobStore`], so core and every front end use it through
//! the same trait. Repair, health checks and drains need to see locations; those are methods of
//! this type (not of the trait), used by core's repair and scrub and by the CLI.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chunkvault_types::ChunkId;
use futures::stream::{self, BoxStream, FuturesUnordered, StreamExt};
use serde::Serialize;

use crate::{BlobError, BlobMeta, BlobStore, Result};

/// How long a read waits for one location before asking the next one as well.
pub const HEDGE_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// One named location: a container, bucket or directory.
#[derive(Debug, Clone)]
pub struct Location {
    pub name: String,
    pub store: Arc<dyn BlobStore>,
    /// Excluded from placement (being drained): still read from, never written to by new puts.
    pub draining: bool,
}

/// How many copies each chunk gets and how many must be durable before a put succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub replicas: usize,
    pub write_quorum: usize,
}

/// Counters of the read path and the repair queue.
#[derive(Debug, Default, Serialize)]
pub struct ReplicaStats {
    /// Reads that had to skip at least one copy.
    pub read_failovers: AtomicU64,
    /// Reads that asked another location because one was slow to answer.
    pub read_hedges: AtomicU64,
    /// Copies found with the wrong content on read.
    pub corrupt_copies_seen: AtomicU64,
    /// Copies missing from a location placement names, found on read.
    pub missing_copies_seen: AtomicU64,
    /// Copies a put could not write (after the quorum, or in a failed put).
    pub copies_not_written: AtomicU64,
    /// Chunks put on the repair queue (each time one was added that was not queued yet).
    pub repairs_queued: AtomicU64,
    /// Copies or shards re-created by repair or drain.
    pub copies_restored: AtomicU64,
    /// Reads or writes of the location index that failed (the read then probed).
    pub index_errors: AtomicU64,
}

/// The state of one copy of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    Healthy,
    Missing,
    Corrupt,
    Unreachable,
}

/// What [`ReplicatedBlobStore::inspect`] found about one chunk on its placed locations.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkHealth {
    pub chunk: ChunkId,
    /// (location, state) for each location placement names, in placement order.
    pub copies: Vec<(String, CopyState)>,
    /// Healthy copies on locations placement does not name (left by a drain or a policy change).
    pub extra_healthy: Vec<String>,
}

impl ChunkHealth {
    pub fn healthy(&self) -> usize {
        self.copies
            .iter()
            .filter(|(_, s)| *s == CopyState::Healthy)
            .count()
    }
}

/// What [`ReplicatedBlobStore::repair_chunk`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairOutcome {
    pub chunk: ChunkId,
    /// Locations a copy was written to.
    pub restored: Vec<String>,
    /// Locations that still lack a good copy (unreachable, or no healthy source).
    pub failed: Vec<String>,
    /// No healthy copy exists anywhere: nothing could be restored.
    pub lost: bool,
}

impl RepairOutcome {
    pub fn complete(&self) -> bool {
        !self.lost && self.failed.is_empty()
    }
}

/// One copy (or shard) of a chunk as a [`LocationIndex`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedCopy {
    pub chunk: ChunkId,
    pub location: String,
    /// `None` for a whole copy; the shard index under erasure coding.
    pub shard: Option<usize>,
    /// `Healthy`, `Missing` or `Corrupt`; `Unreachable` says nothing about the copy and is never
    /// recorded.
    pub state: CopyState,
}

/// Where the copies of each chunk live, kept outside the blob stores (chunkvault's metadata
/// database implements it, through core). The blobs stay the truth: the index lets reads and
/// repair go straight to a copy, and a chunk it knows nothing about (written before it
/// existed) is found by placement and probing, so a lost or stale record never loses data.
#[async_trait]
pub trait LocationIndex: Send + Sync + std::fmt::Debug + 'static {
    /// The recorded copies of `id`, in any state; empty when none are recorded.
    async fn copies(&self, id: &ChunkId) -> Result<Vec<IndexedCopy>>;

    /// Records what was just seen of some copies (one call per chunk operation, written as one
    /// batch). Idempotent.
    async fn record(&self, copies: &[IndexedCopy]) -> Result<()>;

    /// Forgets the copies of `ids` on `location` (moved off it by a drain). Idempotent.
    async fn forget(&self, location: &str, ids: &[ChunkId]) -> Result<()>;
}

/// See the module documentation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReplicatedBlobStore {
    locations: Arc<Vec<Location>>,
    policy: Policy,
    stats: Arc<ReplicaStats>,
    /// Chunks seen below policy on the read or write path, for the repair task.
    queue: Arc<Mutex<HashSet<ChunkId>>>,
    /// Writes still running after their put returned (beyond the quorum), per chunk. A delete
    /// waits for them, or a late copy would bring a deleted chunk back.
    background: Arc<Mutex<HashMap<ChunkId, Vec<tokio::sync::watch::Receiver<()>>>>>,
    /// Erasure coding instead of copies: (data, parity) shards, shard `i` on the `i`-th placed
    /// location; `policy.replicas` is then `data + parity`.
    erasure: Option<(usize, usize)>,
    /// Where copies live, when the deployment records it (see [`LocationIndex`]).
    index: Option<Arc<dyn LocationIndex>>,
}

/// The rendezvous (highest random weight) score of `id` on location `name`: BLAKE3 of both,
/// first 8 bytes. Stable across versions and machines, unlike std's hasher.
fn score(name: &str, id: &ChunkId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(id.as_bytes());
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Location indices ordered by score, highest first, skipping `excluded`.
fn rank(names: &[&str], id: &ChunkId, excluded: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| !excluded(*i))
        .map(|(i, n)| (score(n, id), i))
        .collect();
    scored.sort_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The `replicas` locations (by name) chunk `id` is placed on, in preference order. Pure: the
/// same names and id give the same answer everywhere.
pub fn placement<'a>(names: &[&'a str], id: &ChunkId, replicas: usize) -> Vec<&'a str> {
    rank(names, id, |_| false)
        .into_iter()
        .take(replicas)
        .map(|i| names[i])
        .collect()
}

impl ReplicatedBlobStore {
    /// Checks the policy against the locations: names unique and non-empty, at least
    /// `replicas` locations that are not draining, `1 <= write_quorum <= replicas`.
    pub fn new(locations: Vec<Location>, policy: Policy) -> Result<Self> {
        let config = |message: String| BlobError::Config { message };
        let mut seen = HashSet::new();
        for l in &locations {
            if l.name.is_empty() {
                return Err(config("a location has an empty name".into()));
            }
            if !seen.insert(l.name.as_str()) {
                return Err(config(format!("location name {:?} is used twice", l.name)));
            }
        }
        let writable = locations.iter().filter(|l| !l.draining).count();
        if policy.replicas == 0 || policy.replicas > writable {
            return Err(config(format!(
                "replicas = {} needs that many locations that are not draining; there are {writable}",
                policy.replicas
            )));
        }
        if policy.write_quorum == 0 || policy.write_quorum > policy.replicas {
            return Err(config(format!(
                "write_quorum = {} must be from 1 to replicas ({})",
                policy.write_quorum, policy.replicas
            )));
        }
        Ok(Self {
            locations: Arc::new(locations),
            policy,
            stats: Arc::default(),
            queue: Arc::default(),
            background: Arc::default(),
            erasure: None,
            index: None,
        })
    }

    /// Erasure coding as the policy: each chunk cut in `data` shards plus `parity` parity
    /// shards on `data + parity` distinct locations; any `data` shards rebuild it. A put needs
    /// `write_quorum` shards written (from `data` to `data + parity`).
    pub fn erasure(
        locations: Vec<Location>,
        data: usize,
        parity: usize,
        write_quorum: usize,
    ) -> Result<Self> {
        if data == 0 || parity == 0 || data + parity > 255 {
            return Err(BlobError::Config {
                message: format!(
                    "erasure coding needs at least 1 data and 1 parity shard (255 in all), got {data} + {parity}"
                ),
            });
        }
        if write_quorum < data || write_quorum > data + parity {
            return Err(BlobError::Config {
                message: format!(
                    "write_quorum = {write_quorum} must be from data shards ({data}) to data + parity ({})",
                    data + parity
                ),
            });
        }
        let mut store = Self::new(
            locations,
            Policy {
                replicas: data + parity,
                write_quorum,
            },
        )?;
        store.erasure = Some((data, parity));
        Ok(store)
    }

    /// Records where copies live in `index` from now on, and asks it first on reads and repairs.
    pub fn with_index(mut self, index: Arc<dyn LocationIndex>) -> Self {
        self.index = Some(index);
        self
    }

    /// The recorded copies of `id`; empty without an index or when it cannot answer (reads
    /// then find copies by placement and probing, as without an index).
    async fn recorded(&self, id: &ChunkId) -> Vec<IndexedCopy> {
        let Some(index) = &self.index else {
            return Vec::new();
        };
        match index.copies(id).await {
            Ok(copies) => copies,
            Err(e) => {
                self.stats.index_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(chunk = %id, error = %e, "cannot read where the copies of a chunk live; probing");
                Vec::new()
            }
        }
    }

    /// Records what was seen of copies of `id`: `(location index, shard, state)`. Failures are
    /// logged and counted, not returned: the copies themselves are what they are, and the next
    /// read or repair records them again.
    async fn note(
        &self,
        id: &ChunkId,
        seen: impl IntoIterator<Item = (usize, Option<usize>, CopyState)>,
    ) {
        let Some(index) = &self.index else { return };
        let copies: Vec<IndexedCopy> = seen
            .into_iter()
            .filter(|(_, _, state)| *state != CopyState::Unreachable)
            .map(|(i, shard, state)| IndexedCopy {
                chunk: *id,
                location: self.locations[i].name.clone(),
                shard,
                state,
            })
            .collect();
        if copies.is_empty() {
            return;
        }
        if let Err(e) = index.record(&copies).await {
            self.stats.index_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(chunk = %id, error = %e, "cannot record where the copies of a chunk live");
        }
    }

    /// What a read saw that the index does not say yet: a recorded copy found missing or
    /// corrupt, or a healthy copy found where none was recorded.
    async fn note_read(
        &self,
        id: &ChunkId,
        recorded: &[IndexedCopy],
        seen: &[(usize, Option<usize>, CopyState)],
    ) {
        if self.index.is_none() {
            return;
        }
        let changed: Vec<(usize, Option<usize>, CopyState)> = seen
            .iter()
            .filter_map(|&(i, shard, state)| {
                let name = &self.locations[i].name;
                let before = recorded.iter().find(|c| &c.location == name);
                let differs = match state {
                    CopyState::Healthy => before.is_none_or(|c| c.state != CopyState::Healthy),
                    CopyState::Missing => before.is_some_and(|c| c.state != CopyState::Missing),
                    CopyState::Corrupt => before.is_none_or(|c| c.state != CopyState::Corrupt),
                    CopyState::Unreachable => false,
                };
                // A shard that could not be parsed keeps the index it was recorded with.
                differs.then(|| (i, shard.or(before.and_then(|c| c.shard)), state))
            })
            .collect();
        if !changed.is_empty() {
            self.note(id, changed).await;
        }
    }

    /// `(data, parity)` when the policy is erasure coding.
    pub fn erasure_coding(&self) -> Option<(usize, usize)> {
        self.erasure
    }

    /// Reads one stored shard and says what it is: healthy when it parses, its checksum holds,
    /// and (when `expect` is given) it is that shard index of this layout.
    async fn read_shard(
        store: &dyn BlobStore,
        id: &ChunkId,
        expect: Option<(usize, usize, usize)>,
    ) -> (CopyState, Option<crate::erasure::Shard>) {
        match store.get(id).await {
            Ok(stored) => {
                let shard = tokio::task::spawn_blocking(move || crate::erasure::parse(&stored))
                    .await
                    .ok()
                    .flatten();
                match shard {
                    Some(s)
                        if expect.is_none_or(|(i, d, p)| {
                            s.index == i && s.data == d && s.parity == p
                        }) =>
                    {
                        (CopyState::Healthy, Some(s))
                    }
                    Some(s) => (CopyState::Corrupt, Some(s)),
                    None => (CopyState::Corrupt, None),
                }
            }
            Err(BlobError::NotFound { .. }) => (CopyState::Missing, None),
            Err(_) => (CopyState::Unreachable, None),
        }
    }

    /// Tries the locations the index records a copy on, then the placed locations in
    /// preference order, then the others; skips copies that are
    /// missing, unreachable or fail `ChunkId::matches`, and records what it found wrong. A location that has not answered after
    /// [`HEDGE_AFTER`] gets company: the next one is asked too, and the first healthy copy wins,
    /// so one slow or hanging location costs a read at most that delay. When every copy found is
    /// corrupt, one is returned (with `false`) so the caller reports damage rather than a missing
    /// chunk.
    async fn read_checked(&self, id: &ChunkId) -> Result<(Bytes, bool)> {
        if let Some((data, _)) = self.erasure {
            return self.get_erasure(id, data).await;
        }
        let placed = self.placed(id, None);
        let recorded = self.recorded(id).await;
        let order = self.read_order(&placed, &recorded);
        let mut seen = Vec::new();
        let mut corrupt = None;
        let mut unreachable = Vec::new();
        let mut skipped = false;
        let mut next = 0;
        let mut pending = FuturesUnordered::new();
        let read = |i: usize| {
            let store = self.locations[i].store.clone();
            let id = *id;
            async move { (i, Self::read_copy(store.as_ref(), &id).await) }
        };
        loop {
            if pending.is_empty() {
                if next == order.len() {
                    break;
                }
                pending.push(read(order[next]));
                next += 1;
            }
            let hedge = tokio::time::sleep(HEDGE_AFTER);
            let answered = tokio::select! {
                Some(answer) = pending.next() => Some(answer),
                () = hedge, if next < order.len() => None,
            };
            let Some((i, (state, data))) = answered else {
                self.stats.read_hedges.fetch_add(1, Ordering::Relaxed);
                pending.push(read(order[next]));
                next += 1;
                continue;
            };
            let l = &self.locations[i];
            seen.push((i, None, state));
            match (state, data) {
                (CopyState::Healthy, Some(data)) => {
                    if skipped {
                        self.stats.read_failovers.fetch_add(1, Ordering::Relaxed);
                        self.enqueue(*id);
                    }
                    self.note_read(id, &recorded, &seen).await;
                    return Ok((data, true));
                }
                (CopyState::Corrupt, data) => {
                    tracing::warn!(chunk = %id, location = %l.name, "corrupt copy skipped; queued for repair");
                    self.stats
                        .corrupt_copies_seen
                        .fetch_add(1, Ordering::Relaxed);
                    corrupt = corrupt.or(data);
                    skipped = true;
                }
                (CopyState::Missing, _) => {
                    let was_recorded = recorded.iter().any(|c| c.location == l.name);
                    if placed.contains(&i) || was_recorded {
                        self.stats
                            .missing_copies_seen
                            .fetch_add(1, Ordering::Relaxed);
                        skipped = true;
                    }
                }
                (_, _) => {
                    unreachable.push(l.name.clone());
                    skipped = true;
                }
            }
        }
        self.note_read(id, &recorded, &seen).await;
        if let Some(data) = corrupt {
            self.enqueue(*id);
            return Ok((data, false));
        }
        if !unreachable.is_empty() {
            return Err(unavailable(format!(
                "chunk {id} not found on any reachable location; unreachable: {}",
                unreachable.join(", ")
            )));
        }
        Err(BlobError::NotFound {
            key: crate::chunk_key(id),
        })
    }

    /// Reads the `data` data shards first (where the index records them, else where placement
    /// puts them), so an intact chunk is joined without decoding; only when one of them fails
    /// are the parity shards read, then every other location. Rebuilds the chunk from the
    /// first `data` intact shards.
    async fn get_erasure(&self, id: &ChunkId, data: usize) -> Result<(Bytes, bool)> {
        let placed = self.placed(id, None);
        let recorded = self.recorded(id).await;
        let mut seen = Vec::new();
        let mut shards: HashMap<usize, crate::erasure::Shard> = HashMap::new();
        let mut unreachable = Vec::new();
        let mut damaged = false;
        let holder = |shard: usize| {
            recorded
                .iter()
                .find(|c| c.state == CopyState::Healthy && c.shard == Some(shard))
                .and_then(|c| self.index_of(&c.location))
                .or_else(|| placed.get(shard).copied())
        };
        let mut first: Vec<usize> = Vec::with_capacity(data);
        for i in (0..data).filter_map(holder) {
            if !first.contains(&i) {
                first.push(i);
            }
        }
        let mut second: Vec<usize> = Vec::new();
        for i in recorded
            .iter()
            .filter(|c| c.state == CopyState::Healthy)
            .filter_map(|c| self.index_of(&c.location))
            .chain(placed.iter().copied())
        {
            if !first.contains(&i) && !second.contains(&i) {
                second.push(i);
            }
        }
        let rest: Vec<usize> = (0..self.locations.len())
            .filter(|i| !first.contains(i) && !second.contains(i))
            .collect();
        let expected = |i: usize| {
            placed.contains(&i)
                || recorded
                    .iter()
                    .any(|c| c.location == self.locations[i].name)
        };
        for group in [first, second, rest] {
            let mut reads: FuturesUnordered<_> = group
                .iter()
                .map(|&i| {
                    let store = self.locations[i].store.clone();
                    let id = *id;
                    async move { (i, Self::read_shard(store.as_ref(), &id, None).await) }
                })
                .collect();
            while let Some((i, (state, shard))) = reads.next().await {
                seen.push((i, shard.as_ref().map(|s| s.index), state));
                match (state, shard) {
                    (CopyState::Healthy, Some(s)) => {
                        shards.entry(s.index).or_insert(s);
                    }
                    (CopyState::Missing, _) if !expected(i) => {}
                    (CopyState::Unreachable, _) => {
                        unreachable.push(self.locations[i].name.clone());
                        damaged = true;
                    }
                    (CopyState::Corrupt, _) => {
                        self.stats
                            .corrupt_copies_seen
                            .fetch_add(1, Ordering::Relaxed);
                        damaged = true;
                    }
                    _ => {
                        self.stats
                            .missing_copies_seen
                            .fetch_add(1, Ordering::Relaxed);
                        damaged = true;
                    }
                }
                if shards.len() >= data {
                    break;
                }
            }
            if shards.len() >= data {
                let list: Vec<_> = shards.into_values().collect();
                let hash = *id;
                let rebuilt = tokio::task::spawn_blocking(move || {
                    crate::erasure::decode(&list).map(|c| (hash.matches(&c), c))
                })
                .await
                .map_err(|e| BlobError::Other {
                    source: Box::new(e),
                })?;
                if damaged {
                    self.stats.read_failovers.fetch_add(1, Ordering::Relaxed);
                    self.enqueue(*id);
                }
                self.note_read(id, &recorded, &seen).await;
                return match rebuilt {
                    Ok((ok, chunk)) => Ok((chunk, ok)),
                    Err(e) => Err(BlobError::Other {
                        source: format!("chunk {id} could not be rebuilt from its shards: {e}")
                            .into(),
                    }),
                };
            }
        }
        self.enqueue(*id);
        self.note_read(id, &recorded, &seen).await;
        if !unreachable.is_empty() {
            return Err(unavailable(format!(
                "chunk {id}: {} of {data} shards readable; unreachable: {}",
                shards.len(),
                unreachable.join(", ")
            )));
        }
        Err(BlobError::NotFound {
            key: crate::chunk_key(id),
        })
    }

    /// [`Self::repair_chunk`] for erasure coding: rebuild the chunk from any `data` intact
    /// shards, re-encode, and write every placed shard that is missing or damaged.
    async fn repair_erasure(
        &self,
        id: &ChunkId,
        excluded: Option<usize>,
        (data, parity): (usize, usize),
    ) -> Result<RepairOutcome> {
        let placed = self.placed(id, excluded);
        let mut states = HashMap::new();
        let mut shards: HashMap<usize, crate::erasure::Shard> = HashMap::new();
        for (pos, &i) in placed.iter().enumerate() {
            let (state, shard) = Self::read_shard(
                self.locations[i].store.as_ref(),
                id,
                Some((pos, data, parity)),
            )
            .await;
            // An intact shard at the wrong position (placement changed) still helps rebuild.
            if let Some(s) = shard
                && s.data == data
                && s.parity == parity
            {
                shards.entry(s.index).or_insert(s);
            }
            states.insert(pos, state);
        }
        for (i, l) in self.locations.iter().enumerate() {
            if shards.len() >= data || placed.contains(&i) {
                continue;
            }
            if let (CopyState::Healthy, Some(s)) =
                Self::read_shard(l.store.as_ref(), id, None).await
                && s.data == data
                && s.parity == parity
            {
                shards.entry(s.index).or_insert(s);
            }
        }
        let mut outcome = RepairOutcome {
            chunk: *id,
            restored: Vec::new(),
            failed: Vec::new(),
            lost: false,
        };
        let hash = *id;
        let list: Vec<_> = shards.into_values().collect();
        let encoded = tokio::task::spawn_blocking(move || {
            let chunk = crate::erasure::decode(&list)?;
            if !hash.matches(&chunk) {
                return Err("rebuilt chunk does not match its hash".to_string());
            }
            crate::erasure::encode(&chunk, data, parity)
        })
        .await
        .map_err(|e| BlobError::Other {
            source: Box::new(e),
        })?;
        let Ok(encoded) = encoded else {
            outcome.lost = true;
            outcome.failed = placed
                .iter()
                .map(|&i| self.locations[i].name.clone())
                .collect();
            return Ok(outcome);
        };
        for (pos, &i) in placed.iter().enumerate() {
            if states.get(&pos) == Some(&CopyState::Healthy) {
                continue;
            }
            let l = &self.locations[i];
            match l.store.put(id, encoded[pos].clone()).await {
                Ok(()) => outcome.restored.push(l.name.clone()),
                Err(e) => {
                    tracing::warn!(chunk = %id, location = %l.name, error = %e, "repair could not write a shard");
                    outcome.failed.push(l.name.clone());
                }
            }
        }
        let finals: Vec<(usize, Option<usize>, CopyState)> = placed
            .iter()
            .enumerate()
            .map(|(pos, &i)| {
                let state = states.get(&pos).copied().unwrap_or(CopyState::Missing);
                (i, Some(pos), state)
            })
            .collect();
        self.finish_repair(id, excluded, finals, outcome).await
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn locations(&self) -> &[Location] {
        &self.locations
    }

    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    fn names(&self) -> Vec<&str> {
        self.locations.iter().map(|l| l.name.as_str()).collect()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.locations.iter().position(|l| l.name == name)
    }

    /// Indices of the locations `id` is placed on, excluding draining ones and `also_exclude`.
    fn placed(&self, id: &ChunkId, also_exclude: Option<usize>) -> Vec<usize> {
        rank(&self.names(), id, |i| {
            self.locations[i].draining || Some(i) == also_exclude
        })
        .into_iter()
        .take(self.policy.replicas)
        .collect()
    }

    /// The order a read asks locations in: those the index records a healthy copy on (in
    /// placement preference), then the placed ones, then every other (copies a drain or a
    /// placement change left, chunks the index does not know).
    fn read_order(&self, placed: &[usize], recorded: &[IndexedCopy]) -> Vec<usize> {
        let preference = |i: &usize| placed.iter().position(|p| p == i).unwrap_or(usize::MAX);
        let mut order: Vec<usize> = recorded
            .iter()
            .filter(|c| c.state == CopyState::Healthy)
            .filter_map(|c| self.index_of(&c.location))
            .collect();
        order.sort_by_key(|i| (preference(i), *i));
        order.dedup();
        for i in placed.iter().copied().chain(0..self.locations.len()) {
            if !order.contains(&i) {
                order.push(i);
            }
        }
        order
    }

    /// Location names `id` is placed on, in preference order.
    pub fn placement_of(&self, id: &ChunkId) -> Vec<String> {
        self.placed(id, None)
            .into_iter()
            .map(|i| self.locations[i].name.clone())
            .collect()
    }

    fn enqueue(&self, id: ChunkId) {
        let new = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        if new {
            self.stats.repairs_queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Chunks waiting on the repair queue.
    pub fn repair_queue_len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Puts a chunk (back) on the repair queue.
    pub fn requeue(&self, id: ChunkId) {
        self.enqueue(id);
    }

    /// Takes the chunks seen below policy since the last call (failed background writes,
    /// reads that skipped a missing or corrupt copy).
    pub fn take_repair_queue(&self) -> Vec<ChunkId> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.drain().collect()
    }

    /// Reads one copy and says what it is, returning the bytes when healthy.
    async fn read_copy(store: &dyn BlobStore, id: &ChunkId) -> (CopyState, Option<Bytes>) {
        match store.get_checked(id).await {
            Ok((data, true)) => (CopyState::Healthy, Some(data)),
            Ok((data, false)) => (CopyState::Corrupt, Some(data)),
            Err(BlobError::NotFound { .. }) => (CopyState::Missing, None),
            Err(_) => (CopyState::Unreachable, None),
        }
    }

    /// Reads every placed copy of `id` (and looks for copies elsewhere), reports their state and
    /// records it in the index.
    pub async fn inspect(&self, id: &ChunkId) -> ChunkHealth {
        let placed = self.placed(id, None);
        let mut copies = Vec::with_capacity(placed.len());
        let mut seen = Vec::with_capacity(placed.len());
        for (pos, &i) in placed.iter().enumerate() {
            let store = self.locations[i].store.as_ref();
            let state = match self.erasure {
                Some((d, p)) => Self::read_shard(store, id, Some((pos, d, p))).await.0,
                None => Self::read_copy(store, id).await.0,
            };
            copies.push((self.locations[i].name.clone(), state));
            seen.push((i, self.erasure.map(|_| pos), state));
        }
        // Every placed copy was just read in full: its record is now verified.
        self.note(id, seen).await;
        let mut extra_healthy = Vec::new();
        for (i, l) in self.locations.iter().enumerate() {
            if placed.contains(&i) {
                continue;
            }
            if let Ok(Some(_)) = l.store.head(id).await {
                extra_healthy.push(l.name.clone());
            }
        }
        ChunkHealth {
            chunk: *id,
            copies,
            extra_healthy,
        }
    }

    /// Brings `id` to full policy: finds a healthy copy anywhere, writes it to every placed
    /// location whose copy is missing or corrupt. When `exclude` names a location, placement
    /// leaves it out (a drain), and its copy is deleted once the others are complete.
    pub async fn repair_chunk(&self, id: &ChunkId, exclude: Option<&str>) -> Result<RepairOutcome> {
        let excluded = match exclude {
            Some(name) => Some(self.index_of(name).ok_or_else(|| BlobError::Config {
                message: format!("there is no location named {name:?}"),
            })?),
            None => None,
        };
        let writable = self
            .locations
            .iter()
            .enumerate()
            .filter(|(i, l)| !l.draining && Some(*i) != excluded)
            .count();
        if writable < self.policy.replicas {
            return Err(BlobError::Config {
                message: format!(
                    "the policy needs {} locations; without {} only {writable} take writes: add a location first",
                    self.policy.replicas,
                    exclude.unwrap_or("the draining ones")
                ),
            });
        }
        if let Some(layout) = self.erasure {
            return self.repair_erasure(id, excluded, layout).await;
        }
        let placed = self.placed(id, excluded);
        let mut states = HashMap::new();
        let mut good: Option<Bytes> = None;
        for &i in &placed {
            let (state, data) = Self::read_copy(self.locations[i].store.as_ref(), id).await;
            if state == CopyState::Healthy && good.is_none() {
                good = data;
            }
            states.insert(i, state);
        }
        if good.is_none() {
            // Look elsewhere: the drained location, a location no longer placed, ...
            for (i, l) in self.locations.iter().enumerate() {
                if placed.contains(&i) {
                    continue;
                }
                if let (CopyState::Healthy, Some(d)) = Self::read_copy(l.store.as_ref(), id).await {
                    good = Some(d);
                    break;
                }
            }
        }
        let mut outcome = RepairOutcome {
            chunk: *id,
            restored: Vec::new(),
            failed: Vec::new(),
            lost: false,
        };
        let Some(data) = good else {
            outcome.lost = true;
            outcome.failed = placed
                .iter()
                .map(|&i| self.locations[i].name.clone())
                .collect();
            return Ok(outcome);
        };
        for &i in &placed {
            let l = &self.locations[i];
            match states.get(&i) {
                Some(CopyState::Healthy) => {}
                _ => match l.store.put(id, data.clone()).await {
                    Ok(()) => outcome.restored.push(l.name.clone()),
                    Err(e) => {
                        tracing::warn!(chunk = %id, location = %l.name, error = %e, "repair could not write a copy");
                        outcome.failed.push(l.name.clone());
                    }
                },
            }
        }
        let finals: Vec<(usize, Option<usize>, CopyState)> = placed
            .iter()
            .map(|&i| {
                (
                    i,
                    None,
                    states.get(&i).copied().unwrap_or(CopyState::Missing),
                )
            })
            .collect();
        self.finish_repair(id, excluded, finals, outcome).await
    }

    /// Records the outcome of a repair of `id` (`finals`: each placed location, its shard and
    /// what was found there before the repair), and when draining `excluded`, deletes the copy
    /// there once every placed copy is in place and forgets it.
    async fn finish_repair(
        &self,
        id: &ChunkId,
        excluded: Option<usize>,
        finals: Vec<(usize, Option<usize>, CopyState)>,
        outcome: RepairOutcome,
    ) -> Result<RepairOutcome> {
        self.stats
            .copies_restored
            .fetch_add(outcome.restored.len() as u64, Ordering::Relaxed);
        let now: Vec<(usize, Option<usize>, CopyState)> = finals
            .into_iter()
            .map(|(i, shard, before)| {
                if outcome.restored.contains(&self.locations[i].name) {
                    (i, shard, CopyState::Healthy)
                } else {
                    (i, shard, before)
                }
            })
            .collect();
        let placed: Vec<usize> = now.iter().map(|c| c.0).collect();
        self.note(id, now).await;
        // Once the policy is met, bad records of copies it does not need (a location no longer
        // placed or no longer configured) are dropped, or they would keep the chunk queued.
        if outcome.complete()
            && let Some(index) = &self.index
        {
            for c in self.recorded(id).await {
                let needed = self
                    .index_of(&c.location)
                    .is_some_and(|i| placed.contains(&i));
                if c.state != CopyState::Healthy
                    && !needed
                    && let Err(e) = index.forget(&c.location, &[*id]).await
                {
                    self.stats.index_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(chunk = %id, error = %e, "cannot forget a stale copy record");
                }
            }
        }
        if let Some(x) = excluded
            && outcome.failed.is_empty()
            && !outcome.lost
        {
            self.locations[x].store.delete(id).await?;
            if let Some(index) = &self.index
                && let Err(e) = index.forget(&self.locations[x].name, &[*id]).await
            {
                self.stats.index_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(chunk = %id, error = %e, "cannot forget a drained copy");
            }
        }
        Ok(outcome)
    }

    /// Every chunk stored on location `name`, for a drain.
    pub fn list_location(&self, name: &str) -> Result<BoxStream<'_, Result<BlobMeta>>> {
        let i = self.index_of(name).ok_or_else(|| BlobError::Config {
            message: format!("there is no location named {name:?}"),
        })?;
        Ok(self.locations[i].store.list())
    }
}

fn unavailable(message: String) -> BlobError {
    BlobError::Unavailable {
        source: message.into(),
    }
}

#[async_trait]
impl BlobStore for ReplicatedBlobStore {
    /// Writes to every placed location at once; returns when `write_quorum` copies are
    /// durable. The remaining writes continue in the background; copies that fail are queued
    /// for repair. Fewer than `write_quorum` successes: `Unavailable`.
    async fn put(&self, id: &ChunkId, data: Bytes) -> Result<()> {
        let placed = self.placed(id, None);
        // What each placed location stores: the chunk, or its shard.
        let payloads: Vec<Bytes> = match self.erasure {
            None => vec![data; placed.len()],
            Some((d, p)) => {
                tokio::task::spawn_blocking(move || crate::erasure::encode(&data, d, p))
                    .await
                    .map_err(|e| BlobError::Other {
                        source: Box::new(e),
                    })?
                    .map_err(|e| BlobError::Other { source: e.into() })?
            }
        };
        let mut writes: FuturesUnordered<_> = placed
            .iter()
            .zip(payloads)
            .enumerate()
            .map(|(pos, (&i, data))| {
                let store = self.locations[i].store.clone();
                let id = *id;
                // Spawned, so writes beyond the quorum finish after this call returns.
                let task = tokio::spawn(async move { store.put(&id, data).await });
                async move {
                    let r = match task.await {
                        Ok(r) => r,
                        Err(e) => Err(BlobError::Other {
                            source: Box::new(e),
                        }),
                    };
                    (pos, i, r)
                }
            })
            .collect();
        let shard = |pos: usize| self.erasure.map(|_| pos);
        let mut written = Vec::new();
        let mut errors = Vec::new();
        while let Some((pos, i, r)) = writes.next().await {
            match r {
                Ok(()) => written.push((i, shard(pos), CopyState::Healthy)),
                Err(e) => {
                    // Recorded as missing: the record is the repair queue that survives a
                    // restart (a failed put may have stored it after all; repair checks).
                    written.push((i, shard(pos), CopyState::Missing));
                    tracing::warn!(chunk = %id, location = %self.locations[i].name, error = %e, "chunk copy not written");
                    self.stats
                        .copies_not_written
                        .fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{}: {e}", self.locations[i].name));
                }
            }
            let ok = written.iter().filter(|w| w.2 == CopyState::Healthy).count();
            if ok >= self.policy.write_quorum || ok + writes.len() < self.policy.write_quorum {
                break;
            }
        }
        let ok = written.iter().filter(|w| w.2 == CopyState::Healthy).count();
        if ok < self.policy.write_quorum {
            if ok > 0 {
                self.enqueue(*id);
                self.note(id, written).await;
            }
            return Err(unavailable(format!(
                "only {ok} of {} copies of chunk {id} written, {} required: {}",
                placed.len(),
                self.policy.write_quorum,
                errors.join("; ")
            )));
        }
        // The durable copies, in one record; the rest are recorded when they land.
        self.note(id, written).await;
        if !errors.is_empty() {
            self.enqueue(*id);
        }
        if !writes.is_empty() {
            let this = self.clone();
            let id = *id;
            // Dropped when the background writes are done, which wakes waiting deletes.
            let (done, watch) = tokio::sync::watch::channel(());
            self.background
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id)
                .or_default()
                .push(watch);
            tokio::spawn(async move {
                let _done = done;
                let mut written = Vec::new();
                while let Some((pos, i, r)) = writes.next().await {
                    match r {
                        Ok(()) => written.push((i, this.erasure.map(|_| pos), CopyState::Healthy)),
                        Err(e) => {
                            written.push((i, this.erasure.map(|_| pos), CopyState::Missing));
                            tracing::warn!(chunk = %id, location = %this.locations[i].name, error = %e, "background chunk copy not written; queued for repair");
                            this.stats
                                .copies_not_written
                                .fetch_add(1, Ordering::Relaxed);
                            this.enqueue(id);
                        }
                    }
                }
                this.note(&id, written).await;
                let mut bg = this.background.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(list) = bg.get_mut(&id) {
                    list.retain(|w| w.has_changed().is_ok());
                    if list.is_empty() {
                        bg.remove(&id);
                    }
                }
            });
        }
        Ok(())
    }

    async fn get(&self, id: &ChunkId) -> Result<Bytes> {
        self.read_checked(id).await.map(|(data, _)| data)
    }

    async fn get_checked(&self, id: &ChunkId) -> Result<(Bytes, bool)> {
        self.read_checked(id).await
    }

    async fn head(&self, id: &ChunkId) -> Result<Option<BlobMeta>> {
        let placed = self.placed(id, None);
        let order = placed
            .iter()
            .copied()
            .chain((0..self.locations.len()).filter(|i| !placed.contains(i)));
        let mut last_err = None;
        for i in order {
            let store = self.locations[i].store.as_ref();
            match store.head(id).await {
                // A shard's size is not the chunk's: its header says what the chunk's is.
                Ok(Some(mut m)) if self.erasure.is_some() => {
                    if let (_, Some(s)) = Self::read_shard(store, id, None).await {
                        m.size = s.chunk_len;
                        return Ok(Some(m));
                    }
                }
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Deletes every copy on every location (not only placed ones, so copies a drain or a
    /// policy change left behind go too). Fails if any location failed.
    async fn delete(&self, id: &ChunkId) -> Result<()> {
        let pending = self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default();
        for mut w in pending {
            // Err once the sender is dropped: the background writes finished.
            while w.changed().await.is_ok() {}
        }
        let results =
            futures::future::join_all(self.locations.iter().map(|l| l.store.delete(id))).await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(())
    }

    /// The union of every location's listing, each chunk once.
    fn list(&self) -> BoxStream<'_, Result<BlobMeta>> {
        let mut seen = HashSet::new();
        stream::iter(self.locations.iter())
            .flat_map(|l| l.store.list())
            .filter_map(move |item| {
                let keep = match &item {
                    Ok(m) => seen.insert(m.id),
                    Err(_) => true,
                };
                async move { keep.then_some(item) }
            })
            .boxed()
    }

    /// Healthy when at least `write_quorum` locations that take writes answer: then puts can
    /// succeed (reads may still fail for chunks placed only on the unreachable ones).
    async fn check(&self) -> Result<()> {
        let results =
            futures::future::join_all(self.locations.iter().map(|l| l.store.check())).await;
        let mut ok = 0;
        let mut errors = Vec::new();
        for (l, r) in self.locations.iter().zip(results) {
            match r {
                Ok(()) if !l.draining => ok += 1,
                Ok(()) => {}
                Err(e) => errors.push(format!("{}: {e}", l.name)),
            }
        }
        if ok >= self.policy.write_quorum {
            if !errors.is_empty() {
                // Debug, not warn: readiness probes call this every few seconds.
                tracing::debug!(failing = %errors.join("; "), "some blob locations do not answer");
            }
            Ok(())
        } else {
            Err(unavailable(format!(
                "{ok} locations answer, write_quorum is {}: {}",
                self.policy.write_quorum,
                errors.join("; ")
            )))
        }
    }

    async fn sweep_incomplete(&self, older_than: time::OffsetDateTime) -> Result<u64> {
        let mut total = 0;
        for l in self.locations.iter() {
            total += l.store.sweep_incomplete(older_than).await?;
        }
        Ok(total)
    }

    fn describe(&self) -> String {
        let locs: Vec<String> = self
            .locations
            .iter()
            .map(|l| {
                format!(
                    "{}{} = {}",
                    l.name,
                    if l.draining { " (draining)" } else { "" },
                    l.store.describe()
                )
            })
            .collect();
        if let Some((d, p)) = self.erasure {
            return format!(
                "erasure coded ({d} data + {p} parity shards, write quorum {}) over [{}]",
                self.policy.write_quorum,
                locs.join(", ")
            );
        }
        format!(
            "replicated (replicas {}, write quorum {}) over [{}]",
            self.policy.replicas,
            self.policy.write_quorum,
            locs.join(", ")
        )
    }

    fn records_copies(&self) -> bool {
        self.index.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_even() {
        let names = ["east", "west", "north", "south", "local"];
        for replicas in [1usize, 2, 3] {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for n in 0u32..10_000 {
                let id = ChunkId::of(&n.to_le_bytes());
                let p = placement(&names, &id, replicas);
                assert_eq!(p, placement(&names, &id, replicas), "deterministic");
                assert_eq!(p.len(), replicas);
                let distinct: HashSet<_> = p.iter().collect();
                assert_eq!(distinct.len(), replicas, "distinct locations");
                for name in p {
                    *counts.entry(name).or_default() += 1;
                }
            }
            let expected = 10_000.0 * replicas as f64 / names.len() as f64;
            for name in names {
                let got = counts[name] as f64;
                assert!(
                    (got - expected).abs() / expected < 0.05,
                    "{name} holds {got} of {replicas}x10000 copies, expected about {expected}"
                );
            }
        }
    }

    #[test]
    fn adding_a_location_moves_only_its_share() {
        let before = ["a", "b", "c"];
        let after = ["a", "b", "c", "d"];
        let mut moved = 0;
        for n in 0u32..10_000 {
            let id = ChunkId::of(&n.to_le_bytes());
            let p = placement(&before, &id, 1);
            let q = placement(&after, &id, 1);
            if p != q {
                assert_eq!(q, vec!["d"], "a chunk only moves to the new location");
                moved += 1;
            }
        }
        assert!(
            (2_000..3_000).contains(&moved),
            "about a quarter moved: {moved}"
        );
    }
}
