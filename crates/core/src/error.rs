use chunkvault_blob::BlobError;
use chunkvault_meta::MetaError;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// What can go wrong in the pipeline, in terms a front end can map to a response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("no such file")]
    NotFound,
    /// The client sent something unacceptable; `code` is stable and machine-readable.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The request body ended in an error (client disconnected, malformed framing).
    #[error("the upload body could not be read: {message}")]
    BodyFailed { message: String },
    /// The upload is no longer open (committed, aborted or expired).
    #[error("the upload is {state}")]
    UploadClosed { state: String },
    /// The request conflicts with the upload's current state (e.g. a resumable upload's
    /// offset moved on); `code` is stable.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A chunk stayed claimed by GC for longer than an upload waits.
    #[error("a chunk of this upload is being garbage-collected; retry")]
    Busy,
    #[error("the blob store is unavailable")]
    BlobUnavailable(#[source] BlobError),
    #[error("the metadata store is unavailable")]
    MetaUnavailable(#[source] MetaError),
    /// The blob store's or the database's disk is full (or at a disk quota): nothing of the
    /// write was kept visible, and writes fail until space is freed.
    #[error("storage is full")]
    StorageFull(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored chunk did not match its hash, or is missing although referenced.
    #[error("chunk {chunk} of file {file} is {problem}")]
    Damaged {
        file: String,
        chunk: String,
        problem: &'static str,
    },
    /// The account's quota cannot hold the upload; nothing of it is visible or charged.
    #[error("{message}")]
    QuotaExceeded { message: String },
    /// The account already has `max` uploads in progress on this node.
    #[error("at most {max} uploads in progress per account")]
    TooManyUploads { max: usize },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<MetaError> for CoreError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound => Self::NotFound,
            MetaError::NotOpen { state } => Self::UploadClosed { state },
            MetaError::InvalidManifest { message } => Self::Invalid {
                code: "invalid_manifest",
                message,
            },
            MetaError::ChunkBusy { .. } => Self::Busy,
            MetaError::QuotaExceeded { quota, used, size } => Self::QuotaExceeded {
                message: format!(
                    "the account's quota of {quota} bytes cannot hold {size} more ({used} used)"
                ),
            },
            e @ MetaError::StorageFull { .. } => Self::StorageFull(Box::new(e)),
            e if e.is_unavailable() => Self::MetaUnavailable(e),
            e => Self::Internal(Box::new(e)),
        }
    }
}

impl From<BlobError> for CoreError {
    fn from(e: BlobError) -> Self {
        if e.is_storage_full() {
            Self::StorageFull(Box::new(e))
        } else if e.is_unavailable() {
            Self::BlobUnavailable(e)
        } else {
            Self::Internal(Box::new(e))
        }
    }
}

impl From<tokio::task::JoinError> for CoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(Box::new(e))
    }
}
