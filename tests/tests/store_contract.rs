//! The `Store` contract, one suite run against every backend: SQLite (a file) and etcd (a real
//! etcd process per test). What a backend does beyond the contract (SQLite's pragmas and
//! reopening, etcd's member restarts) is tested next to it.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use burrow_edge::control::store::{
    Compare, Event, LeaseId, MAX_KEY_BYTES, MAX_VALUE_BYTES, Op, Revision, Store, StoreError, WatchReceiver,
};
use burrow_tests::TempDir;
use burrow_tests::etcd::EtcdCluster;
use futures_util::future::BoxFuture;

/// A store to test, a way to open another handle on the same data, and what keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    another: Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Store>>>,
    _keep: Box<dyn std::any::Any>,
}

async fn sqlite() -> Fixture {
    let dir = TempDir::new();
    let path = dir.path().join("store.db");
    let store = burrow_edge::control::store::sqlite::SqliteStore::open(&path).unwrap();
    Fixture {
        store,
        another: Box::new(move || {
            let path = path.clone();
            Box::pin(async move {
                let store: Arc<dyn Store> = burrow_edge::control::store::sqlite::SqliteStore::open(&path).unwrap();
                store
            })
        }),
        _keep: Box::new(dir),
    }
}

async fn etcd() -> Fixture {
    let cluster = Arc::new(EtcdCluster::start(1).await);
    let store = cluster.store("burrow/").await;
    let keep = cluster.clone();
    Fixture {
        store,
        another: Box::new(move || {
            let cluster = cluster.clone();
            Box::pin(async move {
                let store: Arc<dyn Store> = cluster.store("burrow/").await;
                store
            })
        }),
        _keep: Box::new(keep),
    }
}

/// Each contract test, once per backend.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::sqlite().await).await;
            })*
        }
        mod etcd_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::etcd().await).await;
            })*
        }
    };
}

contract!(
    put_get_list_prefix_and_pagination,
    txn_compares_revisions_and_deletes,
    bulk_values_stay_out_of_watches,
    large_bulk_writes_are_atomic_for_readers,
    watch_replays_then_streams_live_in_order,
    leases_revoke_expire_and_validate,
    another_handles_writes_reach_watchers,
    dropping_the_store_ends_watches,
);

fn put(key: &str, value: &str) -> Op {
    Op::put(key, value)
}

fn leased(key: &str, lease: LeaseId) -> Op {
    Op::leased(key, "v", lease)
}

fn del(key: &str, revision: Revision) -> Event {
    Event::Delete {
        key: key.into(),
        revision,
    }
}

/// `(succeeded, revision)` of a txn that must not error.
async fn txn(s: &dyn Store, compares: Vec<Compare>, ops: Vec<Op>) -> (bool, Revision) {
    let r = s.txn(compares, ops).await.unwrap();
    (r.succeeded, r.revision)
}

async fn put1(s: &dyn Store, key: &str, value: &str) -> Revision {
    let (ok, revision) = txn(s, vec![], vec![put(key, value)]).await;
    assert!(ok);
    revision
}

async fn keys(s: &dyn Store, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
    s.list(prefix, after, limit)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

async fn next(rx: &mut WatchReceiver) -> Vec<Event> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a watch batch within 10 s")
        .expect("the watch still open")
}

async fn put_get_list_prefix_and_pagination(f: Fixture) {
    let s = &*f.store;
    let mut last = 0;
    for k in ["a/1", "a/2", "a/3", "a/4", "a0", "b/1", "a%/x", "a_/y", "ab"] {
        last = put1(s, k, k).await;
    }
    assert_eq!(s.get("a/2").await.unwrap().unwrap().value, b"a/2");
    assert!(s.get("a/9").await.unwrap().is_none());

    assert_eq!(s.list("a/", None, 100).await.unwrap().1, last, "read at the head");
    assert_eq!(keys(s, "a/", None, 100).await, ["a/1", "a/2", "a/3", "a/4"]);
    assert_eq!(keys(s, "a/", None, 2).await, ["a/1", "a/2"]);
    assert_eq!(keys(s, "a/", Some("a/2"), 2).await, ["a/3", "a/4"]);
    assert!(keys(s, "a/", Some("a/4"), 2).await.is_empty());
    // Wildcards of any query language are plain characters here.
    assert_eq!(keys(s, "a%", None, 10).await, ["a%/x"]);
    assert_eq!(keys(s, "a_", None, 10).await, ["a_/y"]);
    assert_eq!(keys(s, "", None, 100).await.len(), 9);

    // Limits, the same on every backend, and empty values.
    let err = s
        .txn(vec![], vec![put(&"k".repeat(MAX_KEY_BYTES + 1), "v")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key too long"), "{err}");
    let big = Op::Put {
        key: "big".into(),
        value: vec![0; MAX_VALUE_BYTES + 1],
        lease: None,
    };
    let err = s.txn(vec![], vec![big]).await.unwrap_err();
    assert!(err.to_string().contains("value too large"), "{err}");
    put1(s, "empty", "").await;
    assert_eq!(s.get("empty").await.unwrap().unwrap().value, b"");
}

async fn txn_compares_revisions_and_deletes(f: Fixture) {
    let s = &*f.store;
    let base = s.revision().await.unwrap();
    let missing = || vec![Compare::Missing("k".into())];
    let at = |rev| vec![Compare::ModRevision("k".into(), rev)];

    assert_eq!(txn(s, missing(), vec![put("k", "v1")]).await, (true, base + 1));
    // Failed compares write nothing and report the current revision.
    assert_eq!(
        txn(s, missing(), vec![put("k", "x"), put("other", "x")]).await,
        (false, base + 1)
    );
    assert_eq!(txn(s, at(base + 7), vec![put("k", "x")]).await, (false, base + 1));
    assert!(s.get("other").await.unwrap().is_none());
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v1");

    assert_eq!(txn(s, at(base + 1), vec![put("k", "v2")]).await, (true, base + 2));
    let kv = s.get("k").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.value),
        (base + 1, base + 2, b"v2".to_vec())
    );

    // Several ops share one revision.
    assert_eq!(
        txn(s, vec![], vec![put("p/a", "1"), put("p/b", "2"), put("q", "3")]).await,
        (true, base + 3)
    );
    assert_eq!(s.get("p/b").await.unwrap().unwrap().mod_revision, base + 3);
    let mut rx = s.watch("", base + 3).await.unwrap();
    let prefix = Op::DeletePrefix { prefix: "p/".into() };
    assert_eq!(txn(s, vec![], vec![prefix]).await, (true, base + 4));
    assert_eq!(next(&mut rx).await, [del("p/a", base + 4), del("p/b", base + 4)]);
    assert!(keys(s, "p/", None, 10).await.is_empty());
    assert!(s.get("q").await.unwrap().is_some());
    // Deleting a missing key succeeds and changes nothing a watcher sees.
    let (deleted, _) = txn(s, vec![], vec![Op::Delete { key: "nope".into() }]).await;
    assert!(deleted);
    let after_put = put1(s, "q", "4").await;
    assert_eq!(next(&mut rx).await[0].revision(), after_put);

    // Exists: "q" does, "p/a" was deleted.
    let exists = |k: &str| Compare::Exists(k.into());
    assert_eq!(
        txn(s, vec![exists("p/a")], vec![put("x", "1")]).await,
        (false, after_put)
    );
    assert_eq!(
        txn(s, vec![exists("q")], vec![put("x", "1")]).await,
        (true, after_put + 1)
    );
}

fn values(batch: Vec<Event>) -> Vec<(String, Vec<u8>)> {
    batch
        .into_iter()
        .map(|e| match e {
            Event::Put(kv) => (kv.key, kv.value),
            Event::Delete { key, .. } => (key, Vec::new()),
        })
        .collect()
}

async fn bulk_values_stay_out_of_watches(f: Fixture) {
    let s = &*f.store;
    let base = s.revision().await.unwrap();
    let mut live = s.watch("", base).await.unwrap();
    put1(s, "bulk/blob", "a large value").await;
    put1(s, "small", "v").await;
    assert_eq!(values(next(&mut live).await), [("bulk/blob".to_owned(), Vec::new())]);
    assert_eq!(values(next(&mut live).await), [("small".to_owned(), b"v".to_vec())]);
    // Replayed from history: the same.
    let mut replay = s.watch("", base).await.unwrap();
    assert_eq!(values(next(&mut replay).await), [("bulk/blob".to_owned(), Vec::new())]);
    // The value itself is kept.
    assert_eq!(s.get("bulk/blob").await.unwrap().unwrap().value, b"a large value");
}

/// A write of several MiB of bulk values (a plugin upload) and the document naming them: a
/// reader never sees the document without its values, and a write whose compare fails leaves no
/// bulk value behind.
async fn large_bulk_writes_are_atomic_for_readers(f: Fixture) {
    let s = &*f.store;
    let chunk = |i: u8| Op::Put {
        key: format!("bulk/blob/{i:03}"),
        value: vec![i; 512 * 1024],
        lease: None,
    };
    let mut ops: Vec<Op> = (0..16).map(chunk).collect();
    ops.push(put("docs/blob", "16 chunks"));
    let base = s.revision().await.unwrap();
    let mut rx = s.watch("docs/", base).await.unwrap();
    assert!(txn(s, vec![Compare::Missing("docs/blob".into())], ops).await.0);
    let seen = next(&mut rx).await;
    assert!(
        matches!(&seen[..], [Event::Put(kv)] if kv.key == "docs/blob"),
        "{seen:?}"
    );
    let (chunks, _) = s.list("bulk/blob/", None, 100).await.unwrap();
    assert_eq!(chunks.len(), 16);
    assert!(
        chunks
            .iter()
            .enumerate()
            .all(|(i, kv)| kv.value == vec![i as u8; 512 * 1024])
    );

    // The same again: the compare fails, nothing new stays.
    let mut ops: Vec<Op> = (0..16).map(|i| chunk(i + 100)).collect();
    ops.push(put("docs/blob", "again"));
    assert!(!txn(s, vec![Compare::Missing("docs/blob".into())], ops).await.0);
    assert_eq!(keys(s, "bulk/blob/", None, 100).await.len(), 16);
    assert_eq!(s.get("docs/blob").await.unwrap().unwrap().value, b"16 chunks");
}

async fn watch_replays_then_streams_live_in_order(f: Fixture) {
    let s = f.store.clone();
    let base = s.revision().await.unwrap();
    put1(&*s, "w/1", "a").await;
    put1(&*s, "x/1", "b").await;
    txn(&*s, vec![], vec![put("w/2", "c"), put("x/2", "d")]).await;

    let mut rx = s.watch("w/", base).await.unwrap();
    // Writers race the replay and the switch to live events.
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            for i in 0..200 {
                put1(&*s, &format!("{}/{i}", if i % 2 == 0 { "w" } else { "x" }), "v").await;
            }
            txn(&*s, vec![], vec![Op::Delete { key: "w/1".into() }]).await;
        })
    };
    let last = base + 204;
    let mut revs = Vec::new();
    while revs.last() != Some(&last) {
        let batch = next(&mut rx).await;
        let rev = batch[0].revision();
        assert!(
            batch.iter().all(|e| e.revision() == rev && e.key().starts_with("w/")),
            "{batch:?}"
        );
        if rev == base + 3 {
            assert_eq!(batch.len(), 1, "filtered by prefix");
        }
        revs.push(rev);
    }
    writer.await.unwrap();
    let expected: Vec<Revision> = [1, 3]
        .into_iter()
        .chain((4..204).step_by(2))
        .chain([204])
        .map(|r| base + r)
        .collect();
    assert_eq!(revs, expected, "in order, no gaps, no duplicates");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err()
    );

    // Watching from the head gets only new changes.
    let mut rx = s.watch("", last).await.unwrap();
    put1(&*s, "z", "1").await;
    assert_eq!(next(&mut rx).await, [Event::Put(s.get("z").await.unwrap().unwrap())]);
}

async fn leases_revoke_expire_and_validate(f: Fixture) {
    let s = &*f.store;
    let base = s.revision().await.unwrap();
    let gone = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseNotFound(_)));

    // Unknown lease: the whole txn fails and writes nothing.
    let err = s
        .txn(vec![], vec![put("plain", "v"), leased("conn/x", 999)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseNotFound(999)), "{err}");
    assert!(s.get("plain").await.unwrap().is_none());
    assert_eq!(s.revision().await.unwrap(), base);

    let mut rx = s.watch("conn/", base).await.unwrap();
    let long = s.lease_grant(Duration::from_secs(60)).await.unwrap();
    txn(
        s,
        vec![],
        vec![leased("conn/a", long), leased("conn/b", long), put("keep", "v")],
    )
    .await;
    assert_eq!(next(&mut rx).await.len(), 2);
    s.lease_revoke(long).await.unwrap();
    assert_eq!(next(&mut rx).await, [del("conn/a", base + 2), del("conn/b", base + 2)]);
    assert!(s.get("conn/a").await.unwrap().is_none());
    assert!(s.get("keep").await.unwrap().is_some());
    assert!(gone(s.lease_keep_alive(long).await));
    assert!(gone(s.lease_revoke(long).await));

    // Expiry: kept alive past its TTL, then left to lapse (etcd's shortest TTL is a second).
    let short = s.lease_grant(Duration::from_millis(1000)).await.unwrap();
    assert_ne!(short, long);
    txn(s, vec![], vec![leased("conn/c", short)]).await;
    assert_eq!(next(&mut rx).await.len(), 1);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.lease_keep_alive(short).await.unwrap();
    }
    assert!(s.get("conn/c").await.unwrap().is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.get("conn/c").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "lease did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(next(&mut rx).await, [del("conn/c", base + 4)]);
    assert!(gone(s.lease_keep_alive(short).await));
}

/// Another process on the same data (`burrow-edge account delete` beside a running edge, or
/// another edge of a cluster): this one's watchers get its changes, in order.
async fn another_handles_writes_reach_watchers(f: Fixture) {
    let ours = &*f.store;
    let theirs = (f.another)().await;
    let base = put1(ours, "a", "1").await;
    let mut rx = ours.watch("", base).await.unwrap();
    put1(&*theirs, "b", "2").await;
    txn(&*theirs, vec![], vec![Op::Delete { key: "a".into() }]).await;
    let first = next(&mut rx).await;
    assert!(
        matches!(&first[..], [Event::Put(kv)] if kv.key == "b" && kv.mod_revision == base + 1),
        "{first:?}"
    );
    assert_eq!(next(&mut rx).await, [del("a", base + 2)]);
    put1(ours, "c", "3").await;
    let own = next(&mut rx).await;
    assert!(
        matches!(&own[..], [Event::Put(kv)] if kv.key == "c" && kv.mod_revision == base + 3),
        "{own:?}"
    );
}

async fn dropping_the_store_ends_watches(f: Fixture) {
    let Fixture { store, _keep, .. } = f;
    let base = store.revision().await.unwrap();
    let mut rx = store.watch("", base).await.unwrap();
    put1(&*store, "a", "1").await;
    assert_eq!(next(&mut rx).await.len(), 1);
    drop(store);
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(end.unwrap().is_none());
}

/// etcd: a watch whose history was compacted away fails with `Compacted`; one that breaks when
/// a member restarts resumes on another member, missing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watches_survive_member_restarts_and_report_compaction() {
    let mut cluster = EtcdCluster::start(3).await;
    let s = cluster.store("burrow/").await;
    let base = s.revision().await.unwrap();
    for i in 0..5 {
        put1(&*s, &format!("k{i}"), "v").await;
    }
    let head = cluster.compact().await as Revision;
    let err = s.watch("", base).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { oldest, .. } if oldest == head),
        "{err}"
    );

    let mut rx = s.watch("", head).await.unwrap();
    let mut expected = Vec::new();
    for round in 0..3 {
        // Kill each member once while writes go on; the watch must see every write once.
        cluster.kill(round);
        for i in 0..20 {
            let key = format!("r{round}/{i}");
            expected.push(key.clone());
            // Guarded: a write whose answer was lost may have happened; it is not written twice.
            while s
                .txn(vec![Compare::Missing(key.clone())], vec![put(&key, "v")])
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster.restart(round);
        cluster.wait_healthy().await;
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        for event in next(&mut rx).await {
            seen.push(event.key().to_owned());
        }
    }
    assert_eq!(seen, expected, "every write once, in order");
}
