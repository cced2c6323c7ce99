//! A real S3 wire protocol for tests: an `s3s-fs` server (S3 over a directory) started
//! inside the test process on 127.0.0.1, reached with `object_store`'s S3 client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;

pub const BUCKET: &str = "walvault";
pub const ACCESS_KEY: &str = "walvault-test";
pub const SECRET_KEY: &str = "walvault-test-secret";

/// A running server: its address, and the task serving it (aborted on drop). It can be
/// stopped and started again on the same port, serving the same directory, to play a
/// store outage.
pub struct S3Server {
    pub endpoint: String,
    root: PathBuf,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl S3Server {
    /// Serves the directory `root` (a bucket is a subdirectory) on a free loopback port.
    /// Must be called inside a tokio runtime.
    pub fn start(root: &Path) -> Self {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        Self {
            endpoint: format!("http://{addr}"),
            root: root.to_path_buf(),
            addr,
            task: Some(serve(root, listener)),
        }
    }

    /// Stops serving: the port is closed (connections are refused) and every open
    /// connection is dropped. The directory is kept.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await; // the listener and the connections are gone once it ends
        }
    }

    /// Serves the same directory on the same port again (after [`stop`](Self::stop)).
    pub async fn start_again(&mut self) {
        assert!(self.task.is_none(), "the server is running");
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding {}: {e}; trying again", self.addr);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot serve on {} again: {e}", self.addr),
            }
        };
        self.task = Some(serve(&self.root, listener));
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

/// Serves `root` on `listener` until the returned task is aborted, which also drops every
/// connection (they live in the task's `JoinSet`).
fn serve(root: &Path, listener: std::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let fs = AtomicWrites::new(s3s_fs::FileSystem::new(root).unwrap(), root);
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            // Without it, a response's last small write waits for the client's
            // delayed ACK (Nagle's algorithm): about 40 ms per request on loopback.
            let _ = socket.set_nodelay(true);
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            connections.spawn(async move {
                let _ = conn.await;
            });
        }
    })
}

/// `s3s-fs` with S3's atomicity for writes to one key.
///
/// `s3s-fs` checks `If-None-Match: *` and then writes, so two conditional PUTs racing
/// for one key can both succeed, and the later silently replaces the earlier, which
/// real S3 (and every store `object_store` supports conditional creation on) never
/// allows. walvault's manifest versions rely on that rule, so the test server keeps it:
/// every operation that writes or deletes a key holds that key's lock throughout.
/// Reads and listings pass straight through.
///
/// Writes to a bucket that does not exist fail with `NoSuchBucket` (404), as on S3;
/// `s3s-fs` would create the bucket's directory.
struct AtomicWrites {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
    keys: Mutex<HashMap<BucketKey, KeyLock>>,
}

type BucketKey = (String, String);
type KeyLock = Arc<tokio::sync::Mutex<()>>;

impl AtomicWrites {
    fn new(inner: s3s_fs::FileSystem, root: &Path) -> Self {
        Self {
            inner,
            root: root.to_path_buf(),
            keys: Mutex::default(),
        }
    }

    /// `NoSuchBucket` unless `bucket` exists.
    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if self.root.join(bucket).is_dir() {
            return Ok(());
        }
        Err(s3s::s3_error!(NoSuchBucket))
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
                    self.check_bucket(&req.input.bucket)?;
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
