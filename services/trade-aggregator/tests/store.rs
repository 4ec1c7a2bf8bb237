//! The `trades` table in the real Cassandra (`scripts/stack up`): the shared migrations run once
//! and refuse an edited one; exact decimals and microseconds survive the round trip.

use tickflow_shared::cassandra::{self, Migration};
use tickflow_shared::domain::{parse_decimal, AssetClass, Side, Trade};
use tickflow_testkit::{self as testkit, Stack};
use trade_aggregator::store::TradeStore;

fn trade(trade_id: &str, price: &str, size: &str, event_time: i64) -> Trade {
    Trade {
        instrument: "BTC-USD".into(),
        base: "BTC".into(),
        quote: "USD".into(),
        asset_class: AssetClass::Crypto,
        exchange: "kraken".into(),
        provider: "kraken".into(),
        provider_symbol: "BTC/USD".into(),
        trade_id: trade_id.into(),
        price: parse_decimal(price).unwrap(),
        size: parse_decimal(size).unwrap(),
        side: Side::Sell,
        event_time,
        ingest_time: event_time + 1_234,
        normalized_time: event_time + 2_345,
        provider_sequence: None,
    }
}

#[tokio::test]
async fn trades_keep_every_digit_and_microsecond_and_migrations_run_once() {
    let stack = Stack::require().await;
    let mut config = stack.cassandra.clone();
    config.keyspace = testkit::unique_keyspace("trades");
    let session = cassandra::connect(&config).await.unwrap();

    let first = cassandra::migrate(&session, &config).await.unwrap();
    let all: Vec<u32> = cassandra::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all);
    let second = cassandra::migrate(&session, &config).await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already_applied, all);

    let store = TradeStore::new(session.clone(), &config.keyspace)
        .await
        .unwrap();
    let day_start = 1_763_769_600_000_000; // 2025-11-22T00:00:00Z
    let older = trade("a-1", "67012.34000000", "0.000012345678", day_start + 1);
    let newer = trade(
        "a-2",
        "0.000012345678",
        "1500.5",
        day_start + 86_399_999_999,
    );
    let next_day = trade("a-3", "1", "1", day_start + 86_400_000_000);
    for t in [&older, &newer, &next_day, &older] {
        store.insert(t).await.unwrap(); // `older` twice: an idempotent upsert
    }

    let day = store.day("BTC-USD", day_start).await.unwrap();
    assert_eq!(
        day,
        vec![newer.clone(), older.clone()],
        "one partition, newest first, no duplicate"
    );
    // Not only equal in value: the provider's scale survives, digit for digit.
    assert_eq!(day[1].price.to_string(), "67012.34000000");
    assert_eq!(day[1].size.to_string(), "0.000012345678");
    assert_eq!(day[0].event_time % 1_000_000, 999_999);
    assert_eq!(
        store.day("BTC-USD", next_day.event_time).await.unwrap(),
        vec![next_day.clone()]
    );

    // One partition in one batch: every row, every digit; a batch across partitions is refused.
    let base = day_start + 3_600_000_000;
    let batch: Vec<Trade> = (0..16)
        .map(|i| {
            trade(
                &format!("b-{i}"),
                &format!("{i}.{i}0000001"),
                "0.5",
                base + i64::from(i) * 7,
            )
        })
        .collect();
    let refs: Vec<&Trade> = batch.iter().collect();
    store.insert_partition(&refs).await.unwrap();
    store.insert_partition(&refs[..3]).await.unwrap(); // again: idempotent
    let day = store.day("BTC-USD", day_start).await.unwrap();
    let mut want: Vec<Trade> = batch.iter().rev().cloned().collect();
    want.extend([newer.clone(), older.clone()]);
    want.sort_by_key(|t| std::cmp::Reverse(t.event_time));
    assert_eq!(day, want);
    let err = store
        .insert_partition(&[&older, &next_day])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not in the partition"), "{err}");

    // A migration edited after it ran is refused, not silently skipped.
    let edited = [Migration {
        version: 1,
        name: "trades",
        cql: "CREATE TABLE IF NOT EXISTS trades (k int PRIMARY KEY)",
    }];
    let err = cassandra::migrate_with(&session, &config, &edited)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("changed after it was applied"),
        "{err}"
    );

    session
        .query_unpaged(format!("DROP KEYSPACE {}", config.keyspace), &[])
        .await
        .unwrap();
}
