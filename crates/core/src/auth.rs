//! Who is calling, and what they may touch: API keys, ownership, quotas, presigned links and
//! the per-account limit on concurrent uploads.
//!
//! A front end resolves a request to a [`Principal`] once (with [`Vault::authenticate`]) and
//! passes it to every call that reads, lists, deletes or commits; the checks live here and in
//! the vault's methods, not in handlers. Another account's file or upload is
//! [`CoreError::NotFound`], exactly like a missing one, so ids cannot be probed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chunkvault_meta::{Account, AccountId, ApiKeyRecord, MetaStore, Role};
use chunkvault_types::FileId;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::{CoreError, Result, Vault};

/// The prefix of every API key, so keys are easy to find in logs and by secret scanners.
pub const KEY_PREFIX: &str = "cvk_";

/// Who a request acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off: everything behaves as without accounts (new files have no owner).
    Open,
    /// An account with the user role: its own files and uploads only.
    User(AccountId),
    /// An account with the admin role: every file and upload.
    Admin(AccountId),
}

impl Principal {
    /// The owner recorded on what this principal creates.
    pub fn owner(&self) -> Option<AccountId> {
        match self {
            Self::Open => None,
            Self::User(a) | Self::Admin(a) => Some(*a),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin(_))
    }

    /// Whether this principal may see something owned by `owner`. Files without an owner
    /// (stored before authentication) are seen by admins and with auth off only.
    pub fn may_see(&self, owner: Option<AccountId>) -> bool {
        match self {
            Self::Open | Self::Admin(_) => true,
            Self::User(me) => owner == Some(*me),
        }
    }

    /// The only owner whose files a listing may show; `None`: all.
    pub fn scope(&self) -> Option<AccountId> {
        match self {
            Self::User(me) => Some(*me),
            Self::Open | Self::Admin(_) => None,
        }
    }
}

/// Why a key was refused. Only the server log sees this; the client gets one answer for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Malformed,
    UnknownKey,
    WrongSecret,
    Revoked,
    Expired,
    AccountDisabled,
}

impl AuthFailure {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed key",
            Self::UnknownKey => "unknown key id",
            Self::WrongSecret => "wrong secret",
            Self::Revoked => "revoked key",
            Self::Expired => "expired key",
            Self::AccountDisabled => "account disabled",
        }
    }
}

/// A key as handed to its owner, once: `cvk_<id>_<secret>`.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub record: ApiKeyRecord,
    /// The whole key; only its hash is stored.
    pub token: String,
}

/// Splits `cvk_<id>_<secret>` into id and secret; `None` when it does not look like a key.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

/// SHA-256 of a key's secret. A plain hash is enough: the secret is 256 random bits.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new random key for `account` (not stored yet).
pub fn generate_key(account: AccountId, name: &str, expires_at: Option<OffsetDateTime>) -> NewKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    NewKey {
        token: format!("{KEY_PREFIX}{id}_{secret}"),
        record: ApiKeyRecord {
            id,
            account,
            name: name.to_string(),
            secret_hash: hash_secret(&secret),
            created_at: OffsetDateTime::now_utc(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        },
    }
}

/// Creates an account (admin command).
pub async fn create_account(
    meta: &dyn MetaStore,
    name: &str,
    role: Role,
    quota_bytes: Option<u64>,
) -> Result<Account> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !valid {
        return Err(CoreError::Invalid {
            code: "invalid_name",
            message: format!(
                "account name {name:?} must be 1 to 64 letters, digits, '-', '_', '.' or '@'"
            ),
        });
    }
    let account = Account {
        id: AccountId::new(),
        name: name.to_string(),
        role,
        quota_bytes,
        bytes_used: 0,
        created_at: OffsetDateTime::now_utc(),
        disabled: false,
    };
    meta.create_account(&account).await?;
    Ok(account)
}

/// Creates and stores a key for an account (admin command); the token is shown once.
pub async fn create_key(
    meta: &dyn MetaStore,
    account: AccountId,
    name: &str,
    expires_at: Option<OffsetDateTime>,
) -> Result<NewKey> {
    let key = generate_key(account, name, expires_at);
    meta.create_api_key(&key.record).await?;
    Ok(key)
}

/// Replaces the link-signing secret (admin command): every link signed before stops working.
pub async fn rotate_link_secret(meta: &dyn MetaStore) -> Result<u64> {
    Ok(meta
        .rotate_link_secret(&random_secret(), OffsetDateTime::now_utc())
        .await?
        .generation)
}

fn random_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rng().fill_bytes(&mut s);
    s
}

/// A presigned download link: the query parameters that go with `/download/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub file: FileId,
    /// Unix seconds.
    pub expires: i64,
    /// A `Range` header value (`bytes=a-b`) the link is limited to, if any.
    pub range: Option<String>,
    /// HMAC-SHA256, hex.
    pub sig: String,
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFailure {
    /// The signature does not match (tampered, or signed with a secret since rotated).
    Invalid,
    /// Correctly signed, but past its expiry.
    Expired,
}

fn link_mac(secret: &[u8], generation: u64, file: FileId, expires: i64, range: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    // Length-free fields separated by newlines, none of which can contain one.
    mac.update(format!("chunkvault-link-v1\n{generation}\n{file}\n{expires}\n{range}").as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Node-local count of uploads in progress per account.
#[derive(Debug, Default)]
pub(crate) struct UploadSlots(Mutex<HashMap<AccountId, usize>>);

/// One upload in progress; the slot frees when it drops.
#[derive(Debug)]
pub struct UploadSlot {
    slots: Option<(Arc<UploadSlots>, AccountId)>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if let Some((slots, account)) = self.slots.take() {
            let mut map = slots.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&account) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&account);
                }
            }
        }
    }
}

impl Vault {
    /// Resolves an API key to a principal. `Err(Ok(failure))` is a refused key (for the log);
    /// `Err(Err(e))` a backend error.
    pub async fn authenticate(
        &self,
        token: &str,
    ) -> std::result::Result<Principal, std::result::Result<AuthFailure, CoreError>> {
        let Some((id, secret)) = parse_token(token) else {
            return Err(Ok(AuthFailure::Malformed));
        };
        let found = self
            .meta
            .api_key_with_account(id)
            .await
            .map_err(|e| Err(e.into()))?;
        let presented = hash_secret(secret);
        let Some((record, account)) = found else {
            // Compare anyway, so an unknown id takes as long as a wrong secret.
            let _ = presented.ct_eq(&[0u8; 32][..]);
            return Err(Ok(AuthFailure::UnknownKey));
        };
        if !bool::from(presented.ct_eq(&record.secret_hash)) {
            return Err(Ok(AuthFailure::WrongSecret));
        }
        let now = OffsetDateTime::now_utc();
        if record.revoked_at.is_some() {
            return Err(Ok(AuthFailure::Revoked));
        }
        if record.expires_at.is_some_and(|e| e <= now) {
            return Err(Ok(AuthFailure::Expired));
        }
        let Some(account) = account.filter(|a| !a.disabled) else {
            return Err(Ok(AuthFailure::AccountDisabled));
        };
        self.note_key_use(&record.id, record.last_used_at, now);
        Ok(match account.role {
            Role::Admin => Principal::Admin(account.id),
            Role::User => Principal::User(account.id),
        })
    }

    /// Records a key's last use at most once a minute per key and node, in the background, so
    /// authenticating costs no write per request.
    fn note_key_use(&self, id: &str, stored: Option<OffsetDateTime>, now: OffsetDateTime) {
        const EVERY: time::Duration = time::Duration::minutes(1);
        if stored.is_some_and(|s| now - s < EVERY) {
            return;
        }
        {
            let mut seen = self.key_uses.lock().unwrap_or_else(|e| e.into_inner());
            if seen.get(id).is_some_and(|s| now - *s < EVERY) {
                return;
            }
            seen.insert(id.to_string(), now);
        }
        let (meta, id) = (self.meta.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = meta.touch_api_key(&id, now).await {
                tracing::debug!(key = %id, error = %e, "could not record a key's last use");
            }
        });
    }

    /// Refuses an upload of `size` more bytes when the principal's quota cannot hold it.
    pub async fn check_quota(&self, who: &Principal, size: u64) -> Result<()> {
        let Some(owner) = who.owner() else {
            return Ok(());
        };
        let account = self.meta.account(owner).await?.ok_or(CoreError::NotFound)?;
        if let Some(quota) = account.quota_bytes
            && account.bytes_used.saturating_add(size) > quota
        {
            return Err(CoreError::QuotaExceeded {
                message: format!(
                    "the account's quota of {quota} bytes cannot hold {size} more ({} used)",
                    account.bytes_used
                ),
            });
        }
        Ok(())
    }

    /// Bytes the principal may still store; `None`: no limit.
    pub(crate) async fn quota_remaining(&self, who: &Principal) -> Result<Option<u64>> {
        let Some(owner) = who.owner() else {
            return Ok(None);
        };
        let account = self.meta.account(owner).await?.ok_or(CoreError::NotFound)?;
        Ok(account
            .quota_bytes
            .map(|q| q.saturating_sub(account.bytes_used)))
    }

    /// Takes one of the principal's concurrent upload slots on this node;
    /// [`CoreError::TooManyUploads`] when all `max_uploads_per_account` are taken.
    pub fn upload_slot(&self, who: &Principal) -> Result<UploadSlot> {
        let Some(account) = who.owner() else {
            return Ok(UploadSlot { slots: None });
        };
        let max = self.config.max_uploads_per_account;
        let mut map = self
            .upload_slots
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = map.entry(account).or_insert(0);
        if *n >= max {
            return Err(CoreError::TooManyUploads { max });
        }
        *n += 1;
        drop(map);
        Ok(UploadSlot {
            slots: Some((self.upload_slots.clone(), account)),
        })
    }

    /// Signs a link to one of the principal's files, valid until `expires` (Unix seconds),
    /// optionally limited to one byte range.
    pub async fn sign_link(
        &self,
        who: &Principal,
        file: FileId,
        expires: i64,
        range: Option<String>,
    ) -> Result<Link> {
        self.file(who, file).await?;
        let secret = self
            .meta
            .link_secret(&random_secret(), OffsetDateTime::now_utc())
            .await?;
        let mac = link_mac(
            &secret.secret,
            secret.generation,
            file,
            expires,
            range.as_deref().unwrap_or(""),
        );
        Ok(Link {
            file,
            expires,
            range,
            sig: hex::encode(mac),
        })
    }

    /// Checks a presigned link: its signature (constant time, against the current secret),
    /// then its expiry, then that the file still exists.
    pub async fn verify_link(
        &self,
        link: &Link,
    ) -> Result<std::result::Result<chunkvault_meta::FileRecord, LinkFailure>> {
        let secret = self
            .meta
            .link_secret(&random_secret(), OffsetDateTime::now_utc())
            .await?;
        let expected = link_mac(
            &secret.secret,
            secret.generation,
            link.file,
            link.expires,
            link.range.as_deref().unwrap_or(""),
        );
        let given = hex::decode(&link.sig).unwrap_or_default();
        if !bool::from(given.ct_eq(&expected)) {
            return Ok(Err(LinkFailure::Invalid));
        }
        if OffsetDateTime::now_utc().unix_timestamp() >= link.expires {
            return Ok(Err(LinkFailure::Expired));
        }
        Ok(Ok(self.file(&Principal::Open, link.file).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_hash() {
        let key = generate_key(AccountId::new(), "k", None);
        let (id, secret) = parse_token(&key.token).expect("a generated key parses");
        assert_eq!(id, key.record.id);
        assert_eq!(hash_secret(secret), key.record.secret_hash);
        assert!(!key.token.contains(&hex::encode(&key.record.secret_hash)));
        for bad in [
            "",
            "cvk_",
            "cvk_abc_def",
            "Bearer cvk_x",
            &key.token[1..],
            &format!("{}0", key.token),
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn link_macs_cover_every_field() {
        let f = FileId::new();
        let base = link_mac(b"secret", 1, f, 100, "bytes=0-9");
        assert_ne!(base, link_mac(b"secret", 2, f, 100, "bytes=0-9"));
        assert_ne!(
            base,
            link_mac(b"secret", 1, FileId::new(), 100, "bytes=0-9")
        );
        assert_ne!(base, link_mac(b"secret", 1, f, 101, "bytes=0-9"));
        assert_ne!(base, link_mac(b"secret", 1, f, 100, "bytes=0-99"));
        assert_ne!(base, link_mac(b"other", 1, f, 100, "bytes=0-9"));
        assert_eq!(base, link_mac(b"secret", 1, f, 100, "bytes=0-9"));
    }

    #[test]
    fn principals_see_what_they_own() {
        let (a, b) = (AccountId::new(), AccountId::new());
        assert!(Principal::User(a).may_see(Some(a)));
        assert!(!Principal::User(a).may_see(Some(b)));
        assert!(!Principal::User(a).may_see(None));
        assert!(Principal::Admin(a).may_see(Some(b)));
        assert!(Principal::Admin(a).may_see(None));
        assert!(Principal::Open.may_see(Some(b)));
        assert_eq!(Principal::User(a).scope(), Some(a));
        assert_eq!(Principal::Admin(a).scope(), None);
    }
}
