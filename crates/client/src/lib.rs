//! A typed client for the chunkvault HTTP API.

use bytes::Bytes;
use chunkvault_types::{
    ChunkId, ChunkOffer, ChunkOffers, ChunkStored, ErrorBody, FileDetail, FileInfo, FileList,
    LinkCreate, LinkInfo, OfferResult, SessionCommit, SessionCreate, SessionInfo,
};
use futures::{Stream, TryStreamExt};
use reqwest::{Body, StatusCode};

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{status}: {code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("invalid server URL: {0}")]
    Url(String),
    /// Not a file or upload id: refused before it could become part of a URL path (where
    /// `../uploads/...` would reach another endpoint).
    #[error("{0:?} is not a file or upload id")]
    InvalidId(String),
}

/// `id` as a file or upload id (both are UUIDs), or [`ClientError::InvalidId`].
fn checked(id: &str) -> Result<chunkvault_types::FileId> {
    id.parse()
        .map_err(|_| ClientError::InvalidId(id.to_string()))
}

impl ClientError {
    /// The server's error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
}

impl Client {
    /// A client for the server at `base` (for example `http://127.0.0.1:3000`).
    pub fn new(base: &str) -> Result<Self> {
        Self::with_token(base, None)
    }

    /// A client that sends `token` (an API key) as `Authorization: Bearer` on every request.
    pub fn with_token(base: &str, token: Option<&str>) -> Result<Self> {
        // A server that stops answering (stopped, or a dead peer behind a proxy) fails the
        // request instead of hanging it: no connection within 15 s, or nothing received
        // for 120 s at any point of a request.
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(std::time::Duration::from_secs(120));
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Url("the API key is not a valid header value".into()))?;
            // Kept out of debug output and logs.
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Self::with_http(base, builder.build()?)
    }

    pub fn with_http(base: &str, http: reqwest::Client) -> Result<Self> {
        let mut base = url::Url::parse(base).map_err(|e| ClientError::Url(e.to_string()))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self { http, base })
    }

    pub fn url(&self, path: &str) -> url::Url {
        self.base
            .join(path.trim_start_matches('/'))
            .expect("relative path joins")
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Uploads a body as a raw stream, with name, type and size as headers.
    pub async fn upload_stream<S>(
        &self,
        name: &str,
        content_type: &str,
        size: Option<u64>,
        body: S,
    ) -> Result<FileInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + Sync + 'static,
    {
        let mut req = self
            .http
            .post(self.url("upload"))
            .query(&[("fileName", name), ("fileType", content_type)])
            .body(Body::wrap_stream(body));
        if let Some(size) = size {
            req = req.header("fileSize", size.to_string());
        }
        json(req.send().await?).await
    }

    /// Uploads bytes held in memory.
    pub async fn upload_bytes(
        &self,
        name: &str,
        content_type: &str,
        data: Bytes,
    ) -> Result<FileInfo> {
        let size = data.len() as u64;
        let req = self
            .http
            .post(self.url("upload"))
            .query(&[("fileName", name), ("fileType", content_type)])
            .header("fileSize", size.to_string())
            .body(data);
        json(req.send().await?).await
    }

    /// Uploads a local file, streamed from disk ([`file_body`]).
    pub async fn upload_file(
        &self,
        path: &std::path::Path,
        name: &str,
        content_type: &str,
    ) -> Result<FileInfo> {
        let (size, body) = file_body(path)
            .await
            .map_err(|e| ClientError::Url(format!("{}: {e}", path.display())))?;
        self.upload_stream(name, content_type, Some(size), body)
            .await
    }

    /// Starts a download; the response streams the body. `range` is a `Range` header value.
    pub async fn download(&self, id: &str, range: Option<&str>) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .get(self.url(&format!("download/{}", checked(id)?)));
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        check(req.send().await?).await
    }

    /// Downloads a whole file into memory (tests and small files).
    pub async fn download_bytes(&self, id: &str) -> Result<Bytes> {
        Ok(self.download(id, None).await?.bytes().await?)
    }

    /// Downloads and counts the bytes, discarding them.
    pub async fn download_discard(&self, id: &str) -> Result<u64> {
        let resp = self.download(id, None).await?;
        let mut n = 0u64;
        let mut s = resp.bytes_stream();
        while let Some(b) = s.try_next().await? {
            n += b.len() as u64;
        }
        Ok(n)
    }

    pub async fn list(&self, limit: Option<u32>, after: Option<&str>) -> Result<FileList> {
        let mut req = self.http.get(self.url("files"));
        if let Some(l) = limit {
            req = req.query(&[("limit", l.to_string())]);
        }
        if let Some(a) = after {
            req = req.query(&[("after", a)]);
        }
        json(req.send().await?).await
    }

    pub async fn stat(&self, id: &str) -> Result<FileDetail> {
        json(
            self.http
                .get(self.url(&format!("files/{}", checked(id)?)))
                .send()
                .await?,
        )
        .await
    }

    /// Opens an upload session (`POST /uploads`).
    pub async fn create_session(&self, req: &SessionCreate) -> Result<SessionInfo> {
        json(self.http.post(self.url("uploads")).json(req).send().await?).await
    }

    /// A session and the chunk indices the server has stored.
    pub async fn session(&self, id: &str) -> Result<SessionInfo> {
        json(
            self.http
                .get(self.url(&format!("uploads/{}", checked(id)?)))
                .send()
                .await?,
        )
        .await
    }

    /// Offers chunks by hash; the server records those it has and answers what to send.
    pub async fn offer_chunks(&self, id: &str, chunks: Vec<ChunkOffer>) -> Result<OfferResult> {
        json(
            self.http
                .post(self.url(&format!("uploads/{}/chunks", checked(id)?)))
                .json(&ChunkOffers { chunks })
                .send()
                .await?,
        )
        .await
    }

    /// Sends chunk `index`; the server checks it against `hash`.
    pub async fn put_chunk(
        &self,
        id: &str,
        index: u64,
        data: Bytes,
        hash: &ChunkId,
    ) -> Result<ChunkStored> {
        json(
            self.http
                .put(self.url(&format!("uploads/{}/chunks/{}", checked(id)?, index)))
                .header("chunk-hash", hash.to_hex())
                .body(data)
                .send()
                .await?,
        )
        .await
    }

    /// Commits a session; the server computes the file's digest and compares it with each one
    /// `declared` names.
    pub async fn commit_session(&self, id: &str, declared: &SessionCommit) -> Result<FileInfo> {
        json(
            self.http
                .post(self.url(&format!("uploads/{}/commit", checked(id)?)))
                .json(declared)
                .send()
                .await?,
        )
        .await
    }

    /// Aborts a session.
    pub async fn abort_session(&self, id: &str) -> Result<()> {
        check(
            self.http
                .delete(self.url(&format!("uploads/{}", checked(id)?)))
                .send()
                .await?,
        )
        .await
        .map(|_| ())
    }

    /// Asks for a presigned download link to a file (`POST /files/{id}/links`).
    pub async fn create_link(&self, id: &str, req: &LinkCreate) -> Result<LinkInfo> {
        json(
            self.http
                .post(self.url(&format!("files/{}/links", checked(id)?)))
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        check(
            self.http
                .delete(self.url(&format!("files/{}", checked(id)?)))
                .send()
                .await?,
        )
        .await
        .map(|_| ())
    }
}

/// Turns an error response into [`ClientError::Api`].
pub async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => ClientError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".into(),
            message: text,
        },
    })
}

async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    Ok(check(resp).await?.json().await?)
}

/// Bytes read from a file at a time by [`file_body`].
pub const FILE_READ: usize = 1 << 20;
/// Reads [`file_body`] keeps ready ahead of the sender.
const FILE_READS_AHEAD: usize = 4;

/// A file's size and its contents as a stream, for a request body. One blocking thread reads
/// the file in [`FILE_READ`] pieces straight into the buffers that are sent, a few ahead of
/// the connection: no copy between a read buffer and the body, and one thread hand-off per
/// MiB. (`tokio::fs::File` behind a `ReaderStream` hands off every read to a pool thread and
/// copies each one again; for a large upload that was about a tenth of the client's CPU.)
pub async fn file_body(
    path: &std::path::Path,
) -> std::io::Result<(
    u64,
    impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
)> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let (tx, rx) = tokio::sync::mpsc::channel(FILE_READS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = Vec::with_capacity(FILE_READ);
            let read = (&mut file).take(FILE_READ as u64).read_to_end(&mut buf);
            let end = !matches!(read, Ok(n) if n > 0);
            let item = match read {
                Ok(0) => break,
                Ok(_) => Ok(Bytes::from(buf)),
                Err(e) => Err(e),
            };
            // A closed channel: the request was dropped, stop reading.
            if tx.blocking_send(item).is_err() || end {
                break;
            }
        }
    });
    Ok((size, receiver_stream(rx)))
}

fn receiver_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn only_ids_reach_a_url_path() {
        let id = chunkvault_types::FileId::new().to_string();
        assert_eq!(checked(&id).unwrap().to_string(), id);
        for bad in [
            "../uploads/0192e4c5-8f3a-7b4e-9d1c-2a3b4c5d6e7f".to_string(),
            "..".to_string(),
            format!("{id}/links"),
            format!("{id}?x=1"),
            String::new(),
        ] {
            assert!(
                matches!(checked(&bad), Err(ClientError::InvalidId(ref s)) if *s == bad),
                "{bad}"
            );
        }
    }
}
