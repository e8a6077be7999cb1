//! Erasure coding of one chunk into `data + parity` shards (Reed-Solomon, `reed-solomon-simd`):
//! any `data` of them rebuild the chunk. Each shard carries a small header with its own
//! BLAKE3 checksum, so a damaged shard is recognised and skipped on its own.
//!
//! Shard layout: `CVEC` | version 1 | index | data | parity | chunk length (u64 LE) |
//! BLAKE3 of the payload (32 bytes) | payload.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 4] = b"CVEC";
const HEADER: usize = 4 + 1 + 3 + 8 + 32;

/// A verified shard.
#[derive(Debug, Clone)]
pub(crate) struct Shard {
    pub index: usize,
    pub data: usize,
    pub parity: usize,
    pub chunk_len: u64,
    pub payload: Bytes,
}

/// Payload bytes per shard for a chunk of `len` bytes: non-zero and even, as the codec needs.
fn shard_bytes(len: usize, data: usize) -> usize {
    let per = len.div_ceil(data).max(2);
    per + per % 2
}

/// Cuts `chunk` into `data` shards and computes `parity` more; returns them with headers,
/// index order.
pub(crate) fn encode(chunk: &[u8], data: usize, parity: usize) -> Result<Vec<Bytes>, String> {
    let size = shard_bytes(chunk.len(), data);
    let mut originals: Vec<Vec<u8>> = (0..data)
        .map(|i| {
            let start = (i * size).min(chunk.len());
            let end = ((i + 1) * size).min(chunk.len());
            let mut v = chunk[start..end].to_vec();
            v.resize(size, 0);
            v
        })
        .collect();
    let recovery =
        reed_solomon_simd::encode(data, parity, &originals).map_err(|e| e.to_string())?;
    originals.extend(recovery);
    Ok(originals
        .into_iter()
        .enumerate()
        .map(|(i, payload)| frame(i, data, parity, chunk.len() as u64, &payload))
        .collect())
}

fn frame(index: usize, data: usize, parity: usize, chunk_len: u64, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + payload.len());
    b.put_slice(MAGIC);
    b.put_u8(1);
    b.put_u8(index as u8);
    b.put_u8(data as u8);
    b.put_u8(parity as u8);
    b.put_u64_le(chunk_len);
    b.put_slice(blake3::hash(payload).as_bytes());
    b.put_slice(payload);
    b.freeze()
}

/// Parses and checks one stored shard; `None` when it is not an intact shard.
pub(crate) fn parse(stored: &Bytes) -> Option<Shard> {
    if stored.len() < HEADER || &stored[0..4] != MAGIC || stored[4] != 1 {
        return None;
    }
    let (index, data, parity) = (stored[5] as usize, stored[6] as usize, stored[7] as usize);
    let chunk_len = u64::from_le_bytes(stored[8..16].try_into().ok()?);
    let payload = stored.slice(HEADER..);
    if index >= data + parity
        || data == 0
        || blake3::hash(&payload).as_bytes() != &stored[16..48]
        || payload.len() != shard_bytes(usize::try_from(chunk_len).ok()?, data)
    {
        return None;
    }
    Some(Shard {
        index,
        data,
        parity,
        chunk_len,
        payload,
    })
}

/// Rebuilds the chunk from at least `data` verified shards of the same layout.
pub(crate) fn decode(shards: &[Shard]) -> Result<Bytes, String> {
    let first = shards.first().ok_or("no shards")?;
    let (data, parity, len) = (first.data, first.parity, first.chunk_len as usize);
    let mut originals: BTreeMap<usize, Bytes> = BTreeMap::new();
    let mut recovery: BTreeMap<usize, Bytes> = BTreeMap::new();
    for s in shards
        .iter()
        .filter(|s| s.data == data && s.parity == parity && s.chunk_len == first.chunk_len)
    {
        if s.index < data {
            originals.insert(s.index, s.payload.clone());
        } else {
            recovery.insert(s.index - data, s.payload.clone());
        }
    }
    if originals.len() + recovery.len() < data {
        return Err(format!(
            "{} of {data} shards needed",
            originals.len() + recovery.len()
        ));
    }
    if originals.len() < data {
        let restored = reed_solomon_simd::decode(
            data,
            parity,
            originals.iter().map(|(i, p)| (*i, p.as_ref())),
            recovery.iter().map(|(i, p)| (*i, p.as_ref())),
        )
        .map_err(|e| e.to_string())?;
        for (i, p) in restored {
            originals.insert(i, Bytes::from(p));
        }
    }
    let mut out = BytesMut::with_capacity(len);
    for i in 0..data {
        out.put_slice(originals.get(&i).ok_or("a data shard was not restored")?);
    }
    out.truncate(len);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_data_shards_rebuild_the_chunk() {
        for len in [0usize, 1, 2, 3, 1000, 4097, 65_536] {
            let chunk: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let shards: Vec<Shard> = encode(&chunk, 4, 2)
                .unwrap()
                .iter()
                .map(|b| parse(b).expect("intact shard parses"))
                .collect();
            assert_eq!(shards.len(), 6);
            // Every pair of lost shards.
            for a in 0..6 {
                for b in a + 1..6 {
                    let kept: Vec<Shard> = shards
                        .iter()
                        .filter(|s| s.index != a && s.index != b)
                        .cloned()
                        .collect();
                    assert_eq!(decode(&kept).unwrap().as_ref(), &chunk[..], "len {len}");
                }
            }
            assert!(decode(&shards[..3]).is_err(), "3 of 4 are not enough");
        }
    }

    #[test]
    fn damaged_shards_do_not_parse() {
        let stored = encode(b"hello shards", 2, 1).unwrap();
        let mut bad = stored[0].to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(parse(&Bytes::from(bad)).is_none());
        assert!(parse(&Bytes::from_static(b"CVEC")).is_none());
        assert!(parse(&stored[2]).is_some());
    }
}
