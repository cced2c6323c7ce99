//! A real S3 wire protocol for tests: an `s3s-fs` server (S3 over a directory) started
//! inside the test process on 127.0.0.1, reached with `object_store`'s S3 client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;

pub const BUCKET: &str = "walvault";
pub const ACCESS_KEY: &str = "walvault-test";
pub const SECRET_KEY: &str = "walvault-test-secret";

/// A running server: its address, and the task serving it (aborted on drop).
pub struct S3Server {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    /// Serves the directory `root` (a bucket is a subdirectory) on a free loopback port.
    /// Must be called inside a tokio runtime.
    pub fn start(root: &Path) -> Self {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let fs = AtomicWrites::new(s3s_fs::FileSystem::new(root).unwrap());
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                // Without it, a response's last small write waits for the client's
                // delayed ACK (Nagle's algorithm): about 40 ms per request on loopback.
                let _ = socket.set_nodelay(true);
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Self { endpoint, task }
    }

    /// `object_store`'s S3 client for the bucket.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_bucket_name(BUCKET)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .unwrap(),
        )
    }
}

/// `s3s-fs` with S3's atomicity for writes to one key.
///
/// `s3s-fs` checks `If-None-Match: *` and then writes, so two conditional PUTs racing
/// for one key can both succeed, and the later silently replaces the earlier, which
/// real S3 (and every store `object_store` supports conditional creation on) never
/// allows. walvault's manifest versions rely on that rule, so the test server keeps it:
/// every operation that writes or deletes a key holds that key's lock throughout.
/// Reads and listings pass straight through.
struct AtomicWrites {
    inner: s3s_fs::FileSystem,
    keys: Mutex<HashMap<BucketKey, KeyLock>>,
}

type BucketKey = (String, String);
type KeyLock = Arc<tokio::sync::Mutex<()>>;

impl AtomicWrites {
    fn new(inner: s3s_fs::FileSystem) -> Self {
        Self {
            inner,
            keys: Mutex::default(),
        }
    }

    /// Locks `bucket/key` for writing; the guard releases it.
    async fn lock(&self, bucket: &str, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut keys = self.keys.lock().unwrap();
            keys.retain(|_, lock| Arc::strong_count(lock) > 1);
            keys.entry((bucket.to_owned(), key.to_owned()))
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }
}

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};

/// The `S3` implementation of [`AtomicWrites`]: `forward` operations go straight to
/// `s3s-fs`, `locked` ones hold the lock of the key they write. (One macro for the whole
/// impl, as `async_trait` must see the methods already expanded.)
macro_rules! atomic_writes {
    (
        forward: $($op:ident: $input:ident => $output:ident),*;
        locked: $($lop:ident: $linput:ident => $loutput:ident),*;
    ) => {
        #[async_trait::async_trait]
        impl S3 for AtomicWrites {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.inner.$op(req).await
                }
            )*
            $(
                async fn $lop(&self, req: S3Request<$linput>) -> S3Result<S3Response<$loutput>> {
                    let _key = self.lock(&req.input.bucket, &req.input.key).await;
                    self.inner.$lop(req).await
                }
            )*

            async fn delete_objects(
                &self,
                req: S3Request<DeleteObjectsInput>,
            ) -> S3Result<S3Response<DeleteObjectsOutput>> {
                // Keys in order, so two batches cannot each hold a key the other waits on.
                let mut keys: Vec<&str> =
                    req.input.delete.objects.iter().map(|o| o.key.as_str()).collect();
                keys.sort_unstable();
                keys.dedup();
                let mut held = Vec::with_capacity(keys.len());
                for key in keys {
                    held.push(self.lock(&req.input.bucket, key).await);
                }
                self.inner.delete_objects(req).await
            }
        }
    };
}

atomic_writes!(
    forward:
        create_bucket: CreateBucketInput => CreateBucketOutput,
        delete_bucket: DeleteBucketInput => DeleteBucketOutput,
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
        head_bucket: HeadBucketInput => HeadBucketOutput,
        list_buckets: ListBucketsInput => ListBucketsOutput,
        get_object: GetObjectInput => GetObjectOutput,
        head_object: HeadObjectInput => HeadObjectOutput,
        list_objects: ListObjectsInput => ListObjectsOutput,
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
        upload_part: UploadPartInput => UploadPartOutput,
        upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
        list_parts: ListPartsInput => ListPartsOutput,
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    locked:
        put_object: PutObjectInput => PutObjectOutput,
        copy_object: CopyObjectInput => CopyObjectOutput,
        delete_object: DeleteObjectInput => DeleteObjectOutput,
        complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput;
);
