//! AWS KMS through the AWS SDK for Rust: `Encrypt` and `Decrypt` of 32-byte secrets under a
//! symmetric KMS key, with an encryption context.
//!
//! Credentials and region come from the SDK's default chain (environment, profile, web
//! identity, container and instance roles); a key ARN names its own region. The endpoint can be
//! overridden with `AWS_ENDPOINT_URL_KMS` (or `AWS_ENDPOINT_URL`), as for every AWS SDK: VPC
//! endpoints, and the emulator the tests use. TLS is rustls with *ring* (already in this build
//! for the registry client), not aws-lc, which would add a C build.
//!
//! The SDK is async; this interface is called from synchronous code (the CLI, keyring loads)
//! and from inside the worker's runtime, so each call runs on a dedicated thread of a small
//! runtime of its own.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use super::{count, Context, Kms, KmsError};

/// The URI scheme of AWS KMS keys (as Tink and Kroxylicious spell it).
pub const SCHEME: &str = "aws-kms://";

/// One AWS KMS key and a client for it.
pub struct AwsKms {
    uri: String,
    key_id: String,
    client: aws_sdk_kms::Client,
}

impl AwsKms {
    /// A client for `key` (a key ARN, an alias ARN, a key id or `alias/…`); the region is the
    /// ARN's, else the default chain's.
    pub fn new(uri: &str, key: &str) -> Result<Self, KmsError> {
        let region = key
            .strip_prefix("arn:")
            .and_then(|arn| arn.split(':').nth(2))
            .filter(|r| !r.is_empty())
            .map(|r| Region::new(r.to_owned()));
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = run(async move {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(3))
                        .operation_attempt_timeout(Duration::from_secs(10))
                        .operation_timeout(Duration::from_secs(30))
                        .build(),
                );
            if let Some(region) = region {
                loader = loader.region(region);
            }
            loader.load().await
        });
        if config.region().is_none() {
            return Err(KmsError::Refused {
                uri: uri.to_owned(),
                reason: "no AWS region: use a key ARN, or set AWS_REGION".to_owned(),
            });
        }
        Ok(AwsKms {
            uri: uri.to_owned(),
            key_id: key.to_owned(),
            client: aws_sdk_kms::Client::new(&config),
        })
    }

    /// A failed call, in this module's terms: transport failures, timeouts, throttling and
    /// the KMS's own internal errors are transient; anything the KMS decided is a refusal.
    fn error<E, R>(&self, error: SdkError<E, R>) -> KmsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let uri = self.uri.clone();
        match &error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("unknown").to_owned();
                let transient = matches!(
                    code.as_str(),
                    "KMSInternalException"
                        | "DependencyTimeoutException"
                        | "ThrottlingException"
                        | "KeyUnavailableException"
                );
                let reason = format!("{code} from the KMS");
                if transient {
                    KmsError::Unavailable { uri, reason }
                } else {
                    KmsError::Refused { uri, reason }
                }
            }
            SdkError::ConstructionFailure(_) => KmsError::Refused {
                uri,
                reason: "the request could not be built (credentials or region missing?)"
                    .to_owned(),
            },
            SdkError::TimeoutError(_) => KmsError::Unavailable {
                uri,
                reason: "timed out".to_owned(),
            },
            SdkError::DispatchFailure(_) => KmsError::Unavailable {
                uri,
                reason: "cannot connect".to_owned(),
            },
            _ => KmsError::Unavailable {
                uri,
                reason: "unreadable response".to_owned(),
            },
        }
    }
}

impl Kms for AwsKms {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn wrap(&self, plaintext: &[u8], context: &Context) -> Result<Vec<u8>, KmsError> {
        let request = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext.to_vec()))
            .set_encryption_context(Some(context.clone().into_iter().collect()));
        let result = run(request.send())
            .map_err(|e| self.error(e))
            .and_then(|out| {
                out.ciphertext_blob
                    .map(Blob::into_inner)
                    .ok_or_else(|| KmsError::Refused {
                        uri: self.uri.clone(),
                        reason: "Encrypt returned no ciphertext".to_owned(),
                    })
            });
        count(false, &result);
        result
    }

    fn unwrap(&self, wrapped: &[u8], context: &Context) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let request = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(context.clone().into_iter().collect()));
        let result = run(request.send())
            .map_err(|e| self.error(e))
            .and_then(|out| {
                out.plaintext
                    .map(|blob| Zeroizing::new(blob.into_inner()))
                    .ok_or_else(|| KmsError::Refused {
                        uri: self.uri.clone(),
                        reason: "Decrypt returned no plaintext".to_owned(),
                    })
            });
        count(true, &result);
        result
    }
}

/// The runtime KMS calls run on (never dropped: dropping a runtime inside another panics).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kms")
            .enable_all()
            .build()
            .expect("the KMS runtime starts")
    })
}

/// Runs `future` to completion from any context, async or not: on a thread of its own, so the
/// caller's runtime (if any) is neither entered nor blocked from within.
fn run<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime().block_on(future))
            .join()
            .expect("a KMS call does not panic")
    })
}
