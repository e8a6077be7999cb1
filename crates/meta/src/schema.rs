//! Comparing the database's applied migrations with the ones this binary embeds.

use sqlx::migrate::Migrator;

/// Where the database's schema stands relative to this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// No migration applied: an empty database.
    Empty,
    /// Some but not all of this binary's migrations applied.
    Behind { applied: i64, latest: i64 },
    /// Exactly this binary's migrations.
    Current { version: i64 },
    /// Migrations this binary does not know: a newer chunkvault migrated it.
    Ahead { applied: i64, latest: i64 },
    /// A migration that shipped was changed after it was applied, or one failed halfway.
    Mismatch { version: i64 },
}

impl SchemaStatus {
    /// A message telling the operator what to do, or `None` when the schema is current.
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Current { .. } => None,
            Self::Empty => Some(
                "the metadata database has no schema yet: run `chunkvault migrate` first".into(),
            ),
            Self::Behind { applied, latest } => Some(format!(
                "the metadata schema is at version {applied}, this binary needs {latest}: run `chunkvault migrate`"
            )),
            Self::Ahead { applied, latest } => Some(format!(
                "the metadata schema is at version {applied}, newer than this binary knows ({latest}): upgrade chunkvault"
            )),
            Self::Mismatch { version } => Some(format!(
                "migration {version} in the database differs from this binary's or did not finish: restore the database or fix the migration history"
            )),
        }
    }
}

/// `applied`: (version, checksum, success) rows of `_sqlx_migrations`, empty when the table
/// does not exist.
pub(crate) fn compare(migrator: &Migrator, applied: &[(i64, Vec<u8>, bool)]) -> SchemaStatus {
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    if applied.is_empty() {
        return SchemaStatus::Empty;
    }
    let max_applied = applied.iter().map(|a| a.0).max().unwrap_or(0);
    for (version, checksum, success) in applied {
        match migrator.iter().find(|m| m.version == *version) {
            None => {
                return SchemaStatus::Ahead {
                    applied: max_applied,
                    latest,
                };
            }
            Some(m) if !success || m.checksum.as_ref() != checksum.as_slice() => {
                return SchemaStatus::Mismatch { version: *version };
            }
            Some(_) => {}
        }
    }
    if max_applied < latest || applied.len() < migrator.iter().count() {
        SchemaStatus::Behind {
            applied: max_applied,
            latest,
        }
    } else {
        SchemaStatus::Current { version: latest }
    }
}
