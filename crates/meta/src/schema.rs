//! Comparing the database's applied migrations with the ones this binary embeds.

use sqlx::migrate::Migrator;

/// Where the database's schema stands relative to this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// No migration applied: an empty database.
    Empty,
    /// Some but not all of this binary's migrations applied. `missing` lists the versions not
    /// applied; it can hold one below `applied` when features landed with out-of-order numbers
    /// (a database migrated with 0004 before 0003 existed): `migrate` applies it all the same.
    Behind {
        applied: i64,
        latest: i64,
        missing: Vec<i64>,
    },
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
            Self::Behind {
                applied,
                latest,
                missing,
            } => {
                let missing: Vec<String> = missing.iter().map(|v| format!("{v:04}")).collect();
                Some(format!(
                    "the metadata schema is at version {applied}, this binary needs {latest} (migrations {} not applied): run `chunkvault migrate`",
                    missing.join(", ")
                ))
            }
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
    let missing: Vec<i64> = migrator
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.iter().any(|a| a.0 == *v))
        .collect();
    if !missing.is_empty() {
        SchemaStatus::Behind {
            applied: max_applied,
            latest,
            missing,
        }
    } else {
        SchemaStatus::Current { version: latest }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use sqlx::migrate::{Migration, MigrationType, Migrator};

    use super::*;

    fn migrator(versions: &[i64]) -> Migrator {
        let migrations: Vec<Migration> = versions
            .iter()
            .map(|&v| {
                Migration::new(
                    v,
                    Cow::Owned(format!("m{v}")),
                    MigrationType::Simple,
                    sqlx::AssertSqlSafe(format!("SELECT {v}")).into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        }
    }

    fn applied(m: &Migrator, versions: &[i64]) -> Vec<(i64, Vec<u8>, bool)> {
        m.iter()
            .filter(|x| versions.contains(&x.version))
            .map(|x| (x.version, x.checksum.to_vec(), true))
            .collect()
    }

    use sqlx::SqlSafeStr;

    /// Two features numbered their migrations 0003 and 0004 in parallel; 0004 shipped first.
    #[test]
    fn a_gap_in_the_numbering_is_current_and_a_late_lower_migration_is_behind() {
        let first = migrator(&[1, 2, 4]);
        assert_eq!(
            compare(&first, &applied(&first, &[1, 2, 4])),
            SchemaStatus::Current { version: 4 },
            "the unused number 3 is not missing"
        );
        let both = migrator(&[1, 2, 3, 4]);
        // The database the first binary migrated, opened by the binary that has both.
        let status = compare(&both, &applied(&first, &[1, 2, 4]));
        assert_eq!(
            status,
            SchemaStatus::Behind {
                applied: 4,
                latest: 4,
                missing: vec![3]
            }
        );
        assert!(
            status
                .problem()
                .unwrap()
                .contains("migrations 0003 not applied")
        );
        assert_eq!(
            compare(&both, &applied(&both, &[1, 2, 3, 4])),
            SchemaStatus::Current { version: 4 }
        );
        // The other order: the binary without 0004 opening a database that has it.
        let other = migrator(&[1, 2, 3]);
        assert!(matches!(
            compare(&other, &applied(&both, &[1, 2, 3, 4])),
            SchemaStatus::Ahead {
                applied: 4,
                latest: 3
            }
        ));
        assert!(matches!(
            compare(&both, &applied(&both, &[1, 2])),
            SchemaStatus::Behind { applied: 2, .. }
        ));
    }
}
