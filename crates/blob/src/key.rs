//! Where a chunk lives inside a store.

use chunkvault_types::ChunkId;

/// Every chunk blob lives under this prefix, so GC and scrub can walk chunks alone.
pub const CHUNK_PREFIX: &str = "chunks";

/// `chunks/ab/cd/abcd...`: two levels of fan-out keep directories small on a local disk and
/// let listings be split by prefix.
pub fn chunk_key(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("{CHUNK_PREFIX}/{}/{}/{hex}", &hex[0..2], &hex[2..4])
}

/// The chunk id a key names, if it is a well-formed chunk key.
pub fn parse_chunk_key(key: &str) -> Option<ChunkId> {
    let rest = key.strip_prefix(CHUNK_PREFIX)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (a, b, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let id: ChunkId = hex.parse().ok()?;
    (hex[0..2] == *a && hex[2..4] == *b).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fan_out_and_parse_back() {
        let id = ChunkId::of(b"x");
        let key = chunk_key(&id);
        let hex = id.to_hex();
        assert_eq!(key, format!("chunks/{}/{}/{}", &hex[..2], &hex[2..4], hex));
        assert_eq!(parse_chunk_key(&key), Some(id));
        assert_eq!(parse_chunk_key(&format!("chunks/00/00/{hex}")), None);
        assert_eq!(parse_chunk_key("chunks/ab/cd/nothex"), None);
        assert_eq!(parse_chunk_key(&format!("{key}#1")), None);
        assert_eq!(parse_chunk_key(&format!("other/{key}")), None);
    }
}
