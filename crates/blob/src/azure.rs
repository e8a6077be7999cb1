//! Azure Blob Storage through object_store, plus the one call object_store lacks: creating
//! the container (Azure and Azurite refuse writes to a missing one).

use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{BlobError, ObjectStoreBlobs, Result, RetryOptions};

const API_VERSION: &str = "2021-08-06";

/// Where and as whom to reach Azure Blob Storage.
#[derive(Clone)]
pub struct AzureConfig {
    pub account: String,
    /// The storage account key, base64 as the portal shows it.
    pub access_key: String,
    pub container: String,
    /// Overrides `https://{account}.blob.core.windows.net`, for Azurite and private clouds:
    /// for example `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("AzureConfig")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AzureConfig {
    fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://{}.blob.core.windows.net", self.account),
        }
    }

    fn validate(&self) -> Result<Vec<u8>> {
        let c = &self.container;
        let valid = (3..=63).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.starts_with('-')
            && !c.ends_with('-')
            && !c.contains("--");
        if !valid {
            return Err(BlobError::Config {
                message: format!(
                    "Azure container name {c:?} is invalid: 3 to 63 lowercase letters, digits and single hyphens"
                ),
            });
        }
        if self.account.is_empty() {
            return Err(BlobError::Config {
                message: "the Azure storage account name is empty".into(),
            });
        }
        base64::engine::general_purpose::STANDARD
            .decode(self.access_key.trim())
            .map_err(|_| BlobError::Config {
                message: "the Azure storage account key is not valid base64".into(),
            })
    }

    pub(crate) async fn build(&self, retry: &RetryOptions) -> Result<ObjectStoreBlobs> {
        let key = self.validate()?;
        let endpoint = self.endpoint();
        self.create_container(&endpoint, &key, retry).await?;
        self.client(retry)
    }

    /// The client alone, without a request: for a location that does not answer at start-up.
    pub(crate) fn client(&self, retry: &RetryOptions) -> Result<ObjectStoreBlobs> {
        self.validate()?;
        let endpoint = self.endpoint();
        let mut builder = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(&self.account)
            .with_access_key(self.access_key.trim())
            .with_container_name(&self.container)
            .with_client_options(retry.client_options())
            .with_retry(retry.retry_config());
        if self.endpoint.is_some() {
            builder = builder
                .with_endpoint(endpoint.clone())
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|e| BlobError::Config {
            message: e.to_string(),
        })?;
        Ok(ObjectStoreBlobs::new(
            Arc::new(store),
            format!("azure container {} at {}", self.container, endpoint),
        ))
    }

    /// `PUT {endpoint}/{container}?restype=container`, signed with SharedKey. 201 (created) and
    /// 409 (already there) both mean the container exists.
    async fn create_container(
        &self,
        endpoint: &str,
        key: &[u8],
        retry: &RetryOptions,
    ) -> Result<()> {
        let url = url::Url::parse(&format!("{endpoint}/{}?restype=container", self.container))
            .map_err(|e| BlobError::Config {
                message: format!("bad Azure endpoint {endpoint:?}: {e}"),
            })?;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        // Canonicalized resource: "/{account}{path}" then each query parameter; with a
        // path-style endpoint (Azurite) the path already starts with the account name, which
        // then appears twice, as the service expects.
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{}{}\nrestype:container",
            self.account,
            url.path()
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| BlobError::Config {
            message: e.to_string(),
        })?;
        mac.update(string_to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let client = reqwest::Client::builder()
            .connect_timeout(retry.connect_timeout)
            .timeout(retry.request_timeout)
            .build()
            .map_err(|e| BlobError::Other {
                source: Box::new(e),
            })?;
        let mut attempt = 0;
        loop {
            let sent = client
                .put(url.clone())
                .header("x-ms-date", &date)
                .header("x-ms-version", API_VERSION)
                .header("Content-Length", "0")
                .header(
                    "Authorization",
                    format!("SharedKey {}:{signature}", self.account),
                )
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 409 => return Ok(()),
                Ok(r) if r.status().as_u16() == 403 || r.status().as_u16() == 401 => {
                    return Err(BlobError::Denied {
                        source: format!(
                            "creating container {}: HTTP {}",
                            self.container,
                            r.status()
                        )
                        .into(),
                    });
                }
                Ok(r) if !r.status().is_server_error() => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    return Err(BlobError::Other {
                        source: format!(
                            "creating container {}: HTTP {status}: {body}",
                            self.container
                        )
                        .into(),
                    });
                }
                Ok(r) if attempt >= retry.max_retries => {
                    return Err(BlobError::Unavailable {
                        source: format!(
                            "creating container {}: HTTP {}",
                            self.container,
                            r.status()
                        )
                        .into(),
                    });
                }
                Err(e) if attempt >= retry.max_retries => {
                    return Err(BlobError::Unavailable {
                        source: Box::new(e),
                    });
                }
                _ => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(5)))
                        .await;
                }
            }
        }
    }
}
