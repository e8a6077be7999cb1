use std::error::Error as StdError;

pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;
pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// Errors of a [`crate::BlobStore`]. Callers decide retry and HTTP status from the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The blob is not stored.
    #[error("blob {key} not found")]
    NotFound { key: String },
    /// The container, bucket or directory itself is missing (or was wiped).
    #[error("the blob container {name} does not exist or was wiped")]
    ContainerMissing { name: String },
    /// The store refused the credentials.
    #[error("the blob store refused the credentials")]
    Denied { source: BoxError },
    /// The store could not be reached or answered with a transient failure after retries.
    #[error("the blob store is unavailable")]
    Unavailable { source: BoxError },
    /// The configuration of the store is invalid.
    #[error("invalid blob store configuration: {message}")]
    Config { message: String },
    /// Anything else.
    #[error("blob store error")]
    Other { source: BoxError },
}

impl BlobError {
    /// Whether the error means the backend is (perhaps briefly) out of reach, as opposed to a
    /// missing blob or a bug: these map to 503 for clients.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::ContainerMissing { .. } | Self::Denied { .. }
        )
    }

    /// Whether the backend refused a write for lack of room: the file system is full
    /// (`ENOSPC`) or a disk quota is reached (`EDQUOT`). Clients get a 507: unlike an
    /// unreachable store, retrying at once will not help until space is freed.
    pub fn is_storage_full(&self) -> bool {
        match self {
            Self::Unavailable { source } | Self::Denied { source } | Self::Other { source } => {
                is_out_of_space(source.as_ref())
            }
            _ => false,
        }
    }

    pub(crate) fn from_object_store(e: object_store::Error, key: &str) -> Self {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => Self::NotFound {
                key: key.to_string(),
            },
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
                Self::Denied { source }
            }
            // A local file operation of ours: its text holds a path, which says nothing about
            // reachability (a data dir may be named "connections").
            E::Generic { source, .. } if source.is::<crate::adapter::LocalIoError>() => {
                Self::Other { source }
            }
            E::Generic { source, .. } => {
                // object_store reports exhausted retries, timeouts and connection failures as
                // Generic; its message is the only thing that tells them apart.
                let text = format!("{source:?}").to_ascii_lowercase();
                if [
                    "retry",
                    "timed out",
                    "timeout",
                    "connect",
                    "connection",
                    "dns",
                    "error sending request",
                    "io error",
                ]
                .iter()
                .any(|w| text.contains(w))
                {
                    Self::Unavailable { source }
                } else {
                    Self::Other { source }
                }
            }
            other => Self::Other {
                source: Box::new(other),
            },
        }
    }
}

/// Whether `e` or one of its sources is an I/O error saying the file system is full or a disk
/// quota is reached.
fn is_out_of_space(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}
