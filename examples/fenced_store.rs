//! Fencing end to end: a small key-value store guarded by a
//! [`FencingChecker`], written to by two workers that take turns under
//! one lock.
//!
//! Worker A takes the lock, then stalls (a GC pause, a SIGSTOP, a slow
//! disk) for longer than its TTL without renewing. The lease ends, the
//! lock passes to worker B, and B writes with its higher token. When A
//! wakes and writes with its old token, the store refuses it. Without the
//! token check A's stale write would silently overwrite B's.
//!
//! ```sh
//! cargo run --example fenced_store
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use coordmesh::locks::{FencingChecker, StaleToken};
use coordmesh::{Config, Mesh, Token};

/// The protected resource: every write carries the writer's token.
#[derive(Default)]
struct Store {
    fence: FencingChecker,
    data: Mutex<BTreeMap<String, String>>,
}

impl Store {
    fn put(&self, token: Token, key: &str, value: &str) -> Result<(), StaleToken> {
        // Check and write under one guard: no newer holder's write can
        // slip between the check and this write.
        self.fence.apply(token, || {
            self.data
                .lock()
                .unwrap()
                .insert(key.to_string(), value.to_string());
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // One node is enough to show fencing; a cluster behaves the same.
    let mesh = Mesh::start(Config::new(1, "127.0.0.1:0".parse()?)?).await?;
    mesh.watch_leader().wait_for(|l| l.is_some()).await?;
    let store = Store::default();
    let ttl = Duration::from_millis(300);

    // Worker A takes the lock. (It holds the raw grant, without the guard
    // that would renew it: A is about to stall, renewals included.)
    let a = mesh.lock("report").ttl(ttl).acquire_token().await?;
    println!("A holds the lock with token {}", a.token);
    store.put(a.token, "report", "draft by A")?;

    println!("A stalls for 1 s (its lease is {} ms)…", ttl.as_millis());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Meanwhile the lease ran out and B got the lock.
    let b = mesh
        .lock("report")
        .ttl(ttl)
        .wait(Duration::from_secs(2))
        .acquire()
        .await?;
    println!("B holds the lock with token {}", b.token());
    store.put(b.token(), "report", "final by B")?;

    // A wakes up, unaware, and writes.
    match store.put(a.token, "report", "draft by A, again") {
        Ok(()) => anyhow::bail!("the stale write was accepted"),
        Err(refused) => println!("A's write refused: {refused}"),
    }
    println!(
        "store holds {:?}",
        store.data.lock().unwrap().get("report").unwrap()
    );
    b.release().await?;
    mesh.shutdown().await;
    Ok(())
}
