//! The stream runtime's checkpoint table in the real Cassandra (`scripts/stack up`): checkpoints
//! of any size round-trip, and a claimed partition fences its previous owner.

use tickflow_shared::cassandra;
use tickflow_testkit::{self as testkit, Stack};

#[tokio::test]
async fn checkpoints_of_any_size_round_trip_and_replaced_chunks_go() {
    use tickflow_shared::cassandra::{Checkpoint, CheckpointStore, CHUNK_BYTES};
    use tickflow_shared::domain::now_micros;
    let stack = Stack::require().await;
    let mut config = stack.cassandra.clone();
    config.keyspace = testkit::unique_keyspace("checkpoints");
    let session = cassandra::connect(&config).await.unwrap();
    cassandra::migrate(&session, &config).await.unwrap();
    let store = CheckpointStore::new(session.clone(), &config.keyspace)
        .await
        .unwrap();
    let chunk_rows = |snapshot_count: &'static str| {
        let session = session.clone();
        let keyspace = config.keyspace.clone();
        async move {
            let rows = session
                .query_unpaged(
                    format!("SELECT {snapshot_count} FROM {keyspace}.checkpoint_chunks"),
                    &[],
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            let (n,): (i64,) = rows.single_row().unwrap();
            n
        }
    };
    // Bytes that do not repeat, so nothing in the path can shrink them.
    let state = |len: usize, seed: u64| -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let cases = [
        ("inline", state(1000, 1)),
        ("exactly one chunk", state(CHUNK_BYTES, 2)),
        // Over Cassandra's 16 MiB request limit in one piece.
        ("17 MiB", state(17 * CHUNK_BYTES + 5, 3)),
        ("a few chunks", state(3 * CHUNK_BYTES - 1, 4)),
        ("inline again", state(10, 5)),
    ];
    let mut expected_chunks = [0i64, 0, 18, 3, 0].into_iter();
    let lease = |p: i32| {
        let store = store.clone();
        async move {
            store
                .claim("op", "topic", p, None, now_micros() + 60_000_000)
                .await
                .unwrap()
                .lease
        }
    };
    let (lease3, lease4) = (lease(3).await, lease(4).await);
    for (offset, (what, bytes)) in cases.iter().enumerate() {
        let checkpoint = Checkpoint {
            next_offset: offset as i64,
            state: bytes.clone(),
            state_format: 7,
        };
        assert!(store
            .save("op", "topic", 3, &checkpoint, lease3)
            .await
            .unwrap());
        assert!(store
            .save(
                "op",
                "topic",
                4,
                &Checkpoint {
                    next_offset: 99,
                    state: b"other".to_vec(),
                    state_format: 7,
                },
                lease4,
            )
            .await
            .unwrap());
        // A store that starts afresh (a restarted service) reads what was saved.
        let fresh = CheckpointStore::new(session.clone(), &config.keyspace)
            .await
            .unwrap();
        let loaded = fresh.load("op", "topic").await.unwrap();
        assert_eq!(loaded.len(), 2, "{what}");
        assert!(
            loaded[&3].checkpoint.as_ref() == Some(&checkpoint),
            "{what}: not the state saved"
        );
        assert_eq!(
            loaded[&4].checkpoint.as_ref().map(|c| &c.state[..]),
            Some(&b"other"[..]),
            "{what}"
        );
        assert_eq!(loaded[&3].lease.map(|l| l.epoch), Some(1), "{what}");
        // Only the snapshot the row names keeps chunks.
        assert_eq!(
            chunk_rows("count(*)").await,
            expected_chunks.next().unwrap(),
            "{what}"
        );
    }
    session
        .query_unpaged(format!("DROP KEYSPACE {}", config.keyspace), &[])
        .await
        .unwrap();
}

/// Zombie fencing at the store: once another instance has claimed a partition, the previous
/// owner's saves and renewals are refused (and a refused chunked save leaves no chunks), the new
/// owner's floor is the previous lease's end, and a claim made from a stale read still lands.
#[tokio::test]
async fn a_claimed_partition_fences_its_previous_owner() {
    use tickflow_shared::cassandra::{Checkpoint, CheckpointStore, Lease, CHUNK_BYTES};
    let stack = Stack::require().await;
    let mut config = stack.cassandra.clone();
    config.keyspace = testkit::unique_keyspace("fencing");
    let session = cassandra::connect(&config).await.unwrap();
    cassandra::migrate(&session, &config).await.unwrap();
    let store = CheckpointStore::new(session.clone(), &config.keyspace)
        .await
        .unwrap();
    let checkpoint = |offset: i64, len: usize| Checkpoint {
        next_offset: offset,
        state: vec![offset as u8; len],
        state_format: 1,
    };

    let a = store.claim("op", "t", 0, None, 1_000).await.unwrap();
    assert_eq!(
        a.lease,
        Lease {
            epoch: 1,
            until: 1_000
        }
    );
    assert_eq!(a.floor, 0, "a first claim has no predecessor");
    assert!(store
        .save(
            "op",
            "t",
            0,
            &checkpoint(10, 8),
            Lease {
                until: 2_000,
                ..a.lease
            }
        )
        .await
        .unwrap());

    // B claims from what it read: the lease A last renewed is its floor.
    let seen = store.load("op", "t").await.unwrap()[&0].lease;
    assert_eq!(
        seen,
        Some(Lease {
            epoch: 1,
            until: 2_000
        })
    );
    let b = store.claim("op", "t", 0, seen, 1_500).await.unwrap();
    assert_eq!(
        b.lease,
        Lease {
            epoch: 2,
            until: 2_000
        },
        "never a lease shorter than the last"
    );
    assert_eq!(b.floor, 2_000);

    // A wakes: every write of its row is refused; a large state's chunks do not stay behind.
    let a_late = Lease {
        until: 3_000,
        ..a.lease
    };
    assert!(!store
        .save("op", "t", 0, &checkpoint(20, 8), a_late)
        .await
        .unwrap());
    assert!(!store
        .save("op", "t", 0, &checkpoint(21, CHUNK_BYTES + 1), a_late)
        .await
        .unwrap());
    assert!(!store.renew("op", "t", 0, a_late).await.unwrap());
    let chunks = session
        .query_unpaged(
            format!("SELECT count(*) FROM {}.checkpoint_chunks", config.keyspace),
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(i64,)>()
        .unwrap()
        .0;
    assert_eq!(chunks, 0, "a fenced save's chunks are removed");
    let stored = &store.load("op", "t").await.unwrap()[&0];
    assert_eq!(
        stored.checkpoint.as_ref().map(|c| c.next_offset),
        Some(10),
        "A's last accepted checkpoint stays"
    );

    // B's writes hold.
    let b_renewed = Lease {
        until: 4_000,
        ..b.lease
    };
    assert!(store.renew("op", "t", 0, b_renewed).await.unwrap());
    assert!(store
        .save("op", "t", 0, &checkpoint(30, 8), b_renewed)
        .await
        .unwrap());

    // C claims from a stale read (epoch 1): the transaction's answer is read and claimed over.
    let c = store.claim("op", "t", 0, seen, 100).await.unwrap();
    assert_eq!(c.lease.epoch, 3);
    assert_eq!(c.floor, 4_000);
    assert!(!store
        .save("op", "t", 0, &checkpoint(40, 8), b_renewed)
        .await
        .unwrap());
    let stored = &store.load("op", "t").await.unwrap()[&0];
    assert_eq!(stored.checkpoint.as_ref().map(|c| c.next_offset), Some(30));
    assert_eq!(stored.lease, Some(c.lease));

    session
        .query_unpaged(format!("DROP KEYSPACE {}", config.keyspace), &[])
        .await
        .unwrap();
}
