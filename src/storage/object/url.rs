//! Store URLs: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` and
//! `file:///path`, opened with `object_store`'s builders. Credentials, region and endpoint
//! come from the standard environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as
//! `object_store` reads them, `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` included), then from
//! the options given, which win.

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use crate::error::{InvalidInput, Result};

/// The store a URL names, and the prefix inside it.
pub(crate) fn open(
    url: &str,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, String)> {
    let bad = |why: &str| InvalidInput::Config(format!("store URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://bucket/prefix"))?;
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(bad("a file:// URL needs an absolute path (file:///dir)").into());
        }
        std::fs::create_dir_all(rest).map_err(|e| bad(&format!("cannot create {rest}: {e}")))?;
        let local = LocalFileSystem::new_with_prefix(rest).map_err(|e| bad(&e.to_string()))?;
        return Ok((Arc::new(local), String::new()));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket").into());
    }
    let prefix = prefix.trim_matches('/').to_string();
    let store = match scheme {
        "s3" | "s3a" => s3(bucket, options, &bad)?,
        "gs" => gcs(bucket, options, &bad)?,
        "az" | "azure" | "abfs" => azure(bucket, options, &bad)?,
        other => {
            return Err(bad(&format!("scheme {other}:// is not one of s3, gs, az, file")).into())
        }
    };
    Ok((store, prefix))
}

/// Builds an error saying what was wrong with the URL.
type Bad<'a> = dyn Fn(&str) -> InvalidInput + 'a;

/// Applies the `options` (keys `object_store` knows for the backend) to a builder.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
macro_rules! configure {
    ($builder:expr, $key:ty, $options:expr, $bad:expr) => {{
        let mut b = $builder;
        for (key, value) in $options {
            let key: $key = key
                .parse()
                .map_err(|_| $bad(&format!("unknown option {key}")))?;
            b = b.with_config(key, value);
        }
        Arc::new(b.build().map_err(|e| $bad(&e.to_string()))?)
    }};
}

#[cfg(feature = "s3")]
fn s3(bucket: &str, options: &[(String, String)], bad: &Bad) -> Result<Arc<dyn ObjectStore>> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    Ok(configure!(builder, AmazonS3ConfigKey, options, bad))
}

#[cfg(feature = "gcs")]
fn gcs(bucket: &str, options: &[(String, String)], bad: &Bad) -> Result<Arc<dyn ObjectStore>> {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    let builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
    Ok(configure!(builder, GoogleConfigKey, options, bad))
}

#[cfg(feature = "azure")]
fn azure(bucket: &str, options: &[(String, String)], bad: &Bad) -> Result<Arc<dyn ObjectStore>> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    let builder = MicrosoftAzureBuilder::from_env().with_container_name(bucket);
    Ok(configure!(builder, AzureConfigKey, options, bad))
}

/// A backend this build left out: say which cargo feature brings it.
#[cfg(not(all(feature = "s3", feature = "gcs", feature = "azure")))]
fn not_built(feature: &str, bad: &Bad) -> crate::error::Error {
    bad(&format!(
        "this build of walvault has no {feature} backend (enable the cargo feature `{feature}`)"
    ))
    .into()
}

#[cfg(not(feature = "s3"))]
fn s3(_: &str, _: &[(String, String)], bad: &Bad) -> Result<Arc<dyn ObjectStore>> {
    Err(not_built("s3", bad))
}

#[cfg(not(feature = "gcs"))]
fn gcs(_: &str, _: &[(String, String)], bad: &Bad) -> Result<Arc<dyn ObjectStore>> {
    Err(not_built("gcs", bad))
}

#[cfg(not(feature = "azure"))]
fn azure(_: &str, _: &[(String, String)], bad: &Bad) -> Result<Arc<dyn ObjectStore>> {
    Err(not_built("azure", bad))
}
