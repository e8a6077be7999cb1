//! `chunkvault admin ...`: accounts, API keys, quotas and the link secret, straight on the
//! metadata store named by the same configuration as `serve` (no server needed).

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use chunkvault_meta::{Account, AccountId, ApiKeyRecord, MetaStore, Role};
use clap::Subcommand;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{Config, parse_size};
use crate::wiring::{Schema, open_meta};

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create an account.
    CreateUser {
        name: String,
        /// An admin account: sees every file, may read /metrics and /scrub.
        #[arg(long)]
        admin: bool,
        /// Most bytes the account's files may take, e.g. 10GiB (default: no limit).
        #[arg(long)]
        quota: Option<String>,
    },
    /// Create an API key for an account; the key is printed once, alone on the last line.
    CreateKey {
        user: String,
        /// The key stops working after this long, e.g. 30d (default: never).
        #[arg(long)]
        expires: Option<String>,
        /// A name to recognise the key by in listings.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List accounts with their quota and use.
    ListUsers,
    /// List API keys (of one account, or all); secrets are never shown.
    ListKeys { user: Option<String> },
    /// Revoke a key at once (by its id, the part after `cvk_`).
    RevokeKey { id: String },
    /// Make a key expire now, or after a duration (`--in 1h`).
    ExpireKey {
        id: String,
        #[arg(long = "in")]
        after: Option<String>,
    },
    /// Disable an account: every key of it is refused until it is enabled again.
    DisableUser { user: String },
    /// Enable a disabled account.
    EnableUser { user: String },
    /// Set an account's quota (e.g. 10GiB), or `none` to remove it.
    SetQuota { user: String, size: String },
    /// Replace the secret presigned links are signed with: every link given out stops working.
    RotateLinkSecret,
}

pub async fn run(config: &Config, cmd: AdminCommand) -> Result<ExitCode> {
    let meta = open_meta(config, Schema::Serve).await?;
    let meta = &*meta;
    match cmd {
        AdminCommand::CreateUser { name, admin, quota } => {
            let quota = quota.map(|q| parse_quota(&q)).transpose()?.flatten();
            let role = if admin { Role::Admin } else { Role::User };
            if meta.account_by_name(&name).await?.is_some() {
                bail!("account {name:?} already exists");
            }
            let a = chunkvault_core::create_account(meta, &name, role, quota)
                .await
                .map_err(|e| anyhow!("cannot create account {name:?}: {e}"))?;
            println!(
                "created {} account {} ({}), quota {}",
                a.role.as_str(),
                a.name,
                a.id,
                quota_text(a.quota_bytes)
            );
        }
        AdminCommand::CreateKey {
            user,
            expires,
            name,
        } => {
            let account = account(meta, &user).await?;
            let expires_at = expires
                .map(|e| duration(&e).map(|d| OffsetDateTime::now_utc() + d))
                .transpose()?;
            let key = chunkvault_core::create_key(meta, account.id, &name, expires_at).await?;
            println!(
                "created key {} for {} ({}); expires {}. It is shown only now:",
                key.record.id,
                account.name,
                account.role.as_str(),
                when(key.record.expires_at)
            );
            println!("{}", key.token);
        }
        AdminCommand::ListUsers => {
            println!(
                "{:<24} {:<6} {:>16} {:>16}  id",
                "name", "role", "used", "quota"
            );
            for a in meta.list_accounts().await? {
                println!(
                    "{:<24} {:<6} {:>16} {:>16}  {}{}",
                    a.name,
                    a.role.as_str(),
                    a.bytes_used,
                    quota_text(a.quota_bytes),
                    a.id,
                    if a.disabled { " (disabled)" } else { "" }
                );
            }
        }
        AdminCommand::ListKeys { user } => {
            let accounts = meta.list_accounts().await?;
            let filter = match user {
                Some(u) => Some(account(meta, &u).await?.id),
                None => None,
            };
            println!(
                "{:<14} {:<20} {:<16} {:<9} {:<26} last used",
                "id", "user", "name", "state", "expires"
            );
            for k in meta.list_api_keys(filter).await? {
                let owner = accounts
                    .iter()
                    .find(|a| a.id == k.account)
                    .map(|a| a.name.as_str())
                    .unwrap_or("?");
                println!(
                    "{:<14} {:<20} {:<16} {:<9} {:<26} {}",
                    k.id,
                    owner,
                    k.name,
                    key_state(&k),
                    when(k.expires_at),
                    when(k.last_used_at)
                );
            }
        }
        AdminCommand::RevokeKey { id } => {
            let id = key_id(&id);
            if !meta.revoke_api_key(id, OffsetDateTime::now_utc()).await? {
                bail!("no key {id:?}");
            }
            println!("revoked key {id}");
        }
        AdminCommand::ExpireKey { id, after } => {
            let id = key_id(&id);
            let at = OffsetDateTime::now_utc()
                + after.map(|a| duration(&a)).transpose()?.unwrap_or_default();
            if !meta.set_api_key_expiry(id, Some(at)).await? {
                bail!("no key {id:?}");
            }
            println!("key {id} expires {}", when(Some(at)));
        }
        AdminCommand::SetQuota { user, size } => {
            let a = account(meta, &user).await?;
            let quota = parse_quota(&size)?;
            meta.set_quota(a.id, quota).await?;
            println!(
                "quota of {} is {} ({} used)",
                a.name,
                quota_text(quota),
                a.bytes_used
            );
        }
        AdminCommand::DisableUser { user } => {
            let a = account(meta, &user).await?;
            meta.set_account_disabled(a.id, true).await?;
            println!("disabled {}: its keys are refused", a.name);
        }
        AdminCommand::EnableUser { user } => {
            let a = account(meta, &user).await?;
            meta.set_account_disabled(a.id, false).await?;
            println!("enabled {}", a.name);
        }
        AdminCommand::RotateLinkSecret => {
            let generation = chunkvault_core::rotate_link_secret(meta).await?;
            println!(
                "link secret replaced (generation {generation}): every presigned link given out before no longer works"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn account(meta: &dyn MetaStore, name: &str) -> Result<Account> {
    if let Some(a) = meta.account_by_name(name).await? {
        return Ok(a);
    }
    // An account id works too.
    if let Ok(id) = name.parse::<uuid::Uuid>()
        && let Some(a) = meta.account(AccountId(id)).await?
    {
        return Ok(a);
    }
    bail!("no account {name:?} (see `chunkvault admin list-users`)")
}

/// A key id as listed, or a whole key pasted by mistake: only the id part is used.
fn key_id(s: &str) -> &str {
    match chunkvault_core::parse_token(s) {
        Some((id, _)) => id,
        None => s.strip_prefix(chunkvault_core::KEY_PREFIX).unwrap_or(s),
    }
}

fn parse_quota(s: &str) -> Result<Option<u64>> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    parse_size(s)
        .map(Some)
        .with_context(|| format!("invalid quota {s:?}: a size such as 10GiB, or none"))
}

fn duration(s: &str) -> Result<time::Duration> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("invalid duration {s:?}: {e} (e.g. 30d, 12h)"))?;
    time::Duration::try_from(d).map_err(|_| anyhow!("duration {s:?} is too long"))
}

fn quota_text(q: Option<u64>) -> String {
    q.map(|q| q.to_string()).unwrap_or_else(|| "none".into())
}

fn when(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "never".into())
}

fn key_state(k: &ApiKeyRecord) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| e <= OffsetDateTime::now_utc()) {
        "expired"
    } else {
        "active"
    }
}
