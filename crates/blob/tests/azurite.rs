//! The Azure backend against Azurite (Azure's blob emulator): the conformance suite, container
//! creation, and the errors for wrong credentials and an unreachable endpoint.
//!
//! scripts/test starts Azurite and sets `CHUNKVAULT_TEST_AZURITE_ENDPOINT` (and the account and
//! key variables). There is no skipping: without the endpoint these tests fail, saying so.

#![cfg(feature = "azure")]

use std::time::Duration;

use bytes::Bytes;
use chunkvault_blob::{
    AzureConfig, BlobConfig, BlobError, BlobStore, ObjectStoreBlobs, RetryOptions, conformance,
};
use chunkvault_types::ChunkId;

/// Azurite's account and key, published in Microsoft's Azurite documentation.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Valid base64 (64 bytes, like a real key) that is not the account's key.
const WRONG_KEY: &str =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

fn endpoint() -> String {
    std::env::var("CHUNKVAULT_TEST_AZURITE_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CHUNKVAULT_TEST_AZURITE_ENDPOINT is not set: these tests need Azurite. \
             Run the suite with scripts/test, which starts Azurite \
             (or start azurite-blob yourself and set CHUNKVAULT_TEST_AZURITE_ENDPOINT=\
             http://127.0.0.1:PORT/devstoreaccount1)."
        )
    })
}

fn account() -> String {
    std::env::var("CHUNKVAULT_TEST_AZURITE_ACCOUNT").unwrap_or_else(|_| DEV_ACCOUNT.to_string())
}

fn access_key() -> String {
    std::env::var("CHUNKVAULT_TEST_AZURITE_KEY").unwrap_or_else(|_| DEV_KEY.to_string())
}

/// A container name no other test uses: "t" + 32 hex digits.
fn fresh_container() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

fn config(container: &str) -> BlobConfig {
    BlobConfig::Azure(AzureConfig {
        account: account(),
        access_key: access_key(),
        container: container.to_string(),
        endpoint: Some(endpoint()),
    })
}

/// Short timeouts and one retry, so the failure tests end in seconds.
fn short_retries() -> RetryOptions {
    RetryOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        max_retries: 1,
        retry_timeout: Duration::from_secs(3),
    }
}

async fn open(container: &str) -> ObjectStoreBlobs {
    ObjectStoreBlobs::open(&config(container), &RetryOptions::default())
        .await
        .unwrap_or_else(|e| panic!("open Azurite container {container}: {e:?}"))
}

#[tokio::test]
async fn azurite_conforms() {
    let store = open(&fresh_container()).await;
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn opening_the_same_container_twice_works() {
    let container = fresh_container();
    let first = open(&container).await;
    let id = ChunkId::of(b"kept across opens");
    first
        .put(&id, Bytes::from_static(b"kept across opens"))
        .await
        .expect("put through the first handle");
    // The second open finds the container (409 from the create call) and the marker in place.
    let second = open(&container).await;
    second
        .check()
        .await
        .expect("check through the second handle");
    assert_eq!(
        second
            .get(&id)
            .await
            .expect("get through the second handle"),
        Bytes::from_static(b"kept across opens")
    );
}

#[tokio::test]
async fn wrong_account_key_is_denied_at_open() {
    let cfg = BlobConfig::Azure(AzureConfig {
        account: account(),
        access_key: WRONG_KEY.to_string(),
        container: fresh_container(),
        endpoint: Some(endpoint()),
    });
    match ObjectStoreBlobs::open(&cfg, &short_retries()).await {
        Err(e @ BlobError::Denied { .. }) => assert!(e.is_unavailable()),
        other => panic!("open with a wrong account key must fail with Denied, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable() {
    let cfg = BlobConfig::Azure(AzureConfig {
        account: DEV_ACCOUNT.to_string(),
        access_key: DEV_KEY.to_string(),
        container: fresh_container(),
        // Port 1 (tcpmux) has no listener here: connections are refused at once.
        endpoint: Some("http://127.0.0.1:1/devstoreaccount1".to_string()),
    });
    let started = std::time::Instant::now();
    match ObjectStoreBlobs::open(&cfg, &short_retries()).await {
        Err(e @ BlobError::Unavailable { .. }) => assert!(e.is_unavailable()),
        other => panic!("open of an unreachable endpoint must be Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "short retry options bound the time to fail, took {:?}",
        started.elapsed()
    );
}
