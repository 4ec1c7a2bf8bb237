use super::*;
use tickflow_providers::coinbase::Coinbase;
use tickflow_providers::finnhub::Finnhub;
use tickflow_providers::kraken::Kraken;
use tickflow_providers::simulator::Simulator;
use tickflow_shared::domain::{AssetClass, Side};
use tickflow_shared::instruments::parse_toml;

const NOW: Micros = 1_763_769_600_000_000;

fn index() -> InstrumentIndex {
    InstrumentIndex::new(parse_toml(tickflow_testkit::INSTRUMENTS_FIXTURE).unwrap())
}

fn limits() -> Limits {
    Limits {
        max_future: 10_000_000,
        max_age: 3_600_000_000,
        max_price: Decimal::new(1_000_000_000, 0),
        max_size: Decimal::new(1_000_000, 0),
    }
}

fn envelope(provider: &str, payload: &str) -> RawEnvelope {
    RawEnvelope {
        provider: provider.into(),
        connection_id: "c1".into(),
        sequence: 0,
        received_at: NOW,
        channel: "x".into(),
        payload: payload.as_bytes().to_vec(),
    }
}

fn run(provider: &dyn Provider, payload: &str, dedup: &mut Dedup) -> Vec<Outcome> {
    let env = envelope(provider.id().as_str(), payload);
    let mut out = Vec::new();
    normalize(
        provider,
        &env,
        provider.parse(&env.payload),
        Rules {
            index: &index(),
            limits: &limits(),
            now: NOW + 5,
        },
        dedup,
        &mut out,
    );
    out
}

fn coinbase(price: &str, size: &str, time: &str, id: u32) -> String {
    format!(
        r#"{{"type":"match","trade_id":{id},"sequence":50,"time":"{time}","product_id":"BTC-USD","size":"{size}","price":"{price}","side":"sell"}}"#
    )
}

const T: &str = "2025-11-22T00:00:00.000001Z";

#[test]
fn a_valid_trade_is_unified_exactly() {
    let out = run(
        &Coinbase,
        &coinbase("67012.34000000", "0.000012345678", T, 7),
        &mut Dedup::default(),
    );
    let [Outcome::Trade(t)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(
        (t.instrument.as_str(), t.base.as_str(), t.quote.as_str()),
        ("BTC-USD", "BTC", "USD")
    );
    assert_eq!(t.asset_class, AssetClass::Crypto);
    assert_eq!(
        (t.exchange.as_str(), t.provider.as_str()),
        ("coinbase", "coinbase")
    );
    assert_eq!(t.price.to_string(), "67012.34000000");
    assert_eq!(t.size.to_string(), "0.000012345678");
    assert_eq!(t.side, Side::Buy);
    assert_eq!(
        (t.event_time, t.ingest_time, t.normalized_time),
        (NOW + 1, NOW, NOW + 5)
    );
    assert_eq!(t.trade_id, "7");
    assert_eq!(t.provider_sequence, Some(50));
}

#[test]
fn bad_values_are_refused_with_their_reason() {
    let future = "2025-11-22T00:00:11Z";
    let past = "2025-11-21T22:59:59Z";
    let cases: &[(&str, &str, &str, Reason)] = &[
        ("NaN", "1", T, Reason::InvalidPrice),
        ("-1", "1", T, Reason::InvalidPrice),
        ("0", "1", T, Reason::InvalidPrice),
        ("Infinity", "1", T, Reason::InvalidPrice),
        ("1000000001", "1", T, Reason::PriceOutOfRange),
        ("0.0000000000000000001", "1", T, Reason::InvalidPrice),
        ("1", "0", T, Reason::InvalidSize),
        ("1", "-0.5", T, Reason::InvalidSize),
        ("1", "abc", T, Reason::InvalidSize),
        ("1", "2000000", T, Reason::SizeOutOfRange),
        ("1", "1", future, Reason::EventTimeFuture),
        ("1", "1", past, Reason::EventTimePast),
    ];
    for (i, (price, size, time, reason)) in cases.iter().enumerate() {
        let out = run(
            &Coinbase,
            &coinbase(price, size, time, i as u32),
            &mut Dedup::default(),
        );
        match out.as_slice() {
            [Outcome::Rejected {
                reason: got,
                trade_index: None,
                detail,
            }] => assert_eq!(got, reason, "{price} {size} {time}: {detail}"),
            other => panic!("{price} {size} {time}: {other:?}"),
        }
    }
}

#[test]
fn symbols_control_frames_and_garbage() {
    let mut dedup = Dedup::default();
    let unknown = coinbase("1", "1", T, 1).replace("BTC-USD", "DOGE-USD");
    let inactive = coinbase("1", "1", T, 1).replace("BTC-USD", "OLD-USD");
    for (payload, want) in [
        (unknown.as_str(), Some(Reason::UnknownSymbol)),
        (inactive.as_str(), Some(Reason::InactiveInstrument)),
        (r#"{"type":"heartbeat"}"#, None),
        ("\u{fffd}garbage", Some(Reason::UnparsablePayload)),
        (
            r#"{"type":"full_snapshot"}"#,
            Some(Reason::UnsupportedMessage),
        ),
    ] {
        let out = run(&Coinbase, payload, &mut dedup);
        match (want, out.as_slice()) {
            (Some(reason), [Outcome::Rejected { reason: got, .. }]) => assert_eq!(*got, reason),
            (None, [Outcome::Skipped("heartbeat")]) => {}
            other => panic!("{payload}: {other:?}"),
        }
    }
    // Non-UTF-8 bytes never reach a parser as text.
    let env = RawEnvelope {
        payload: vec![0xff, 0xfe, b'{'],
        ..envelope("coinbase", "")
    };
    let mut out = Vec::new();
    normalize(
        &Coinbase,
        &env,
        Coinbase.parse(&env.payload),
        Rules {
            index: &index(),
            limits: &limits(),
            now: NOW,
        },
        &mut dedup,
        &mut out,
    );
    assert!(matches!(
        out.as_slice(),
        [Outcome::Rejected {
            reason: Reason::UnparsablePayload,
            ..
        }]
    ));
}

#[test]
fn duplicates_are_dropped_per_provider_and_identity_derived_for_finnhub() {
    let mut dedup = Dedup::default();
    let frame = coinbase("1", "1", T, 9);
    assert!(matches!(
        run(&Coinbase, &frame, &mut dedup)[0],
        Outcome::Trade(_)
    ));
    assert!(matches!(
        run(&Coinbase, &frame, &mut dedup)[0],
        Outcome::Duplicate { .. }
    ));
    // The same exchange trade from another provider is a source of its own.
    let fh = r#"{"type":"trade","data":[{"p":67000.5,"s":"COINBASE:BTC-USD","t":1763769600000,"v":0.25,"c":null}]}"#;
    let first = run(&Finnhub, fh, &mut dedup);
    let [Outcome::Trade(t)] = first.as_slice() else {
        panic!("{first:?}")
    };
    assert_eq!(t.exchange, "coinbase");
    assert_eq!(t.side, Side::Unknown);
    assert!(t.trade_id.starts_with("h-"), "{}", t.trade_id);
    // Finnhub delivering the same trade three times: kept once.
    for _ in 0..2 {
        assert!(matches!(
            run(&Finnhub, fh, &mut dedup)[0],
            Outcome::Duplicate { .. }
        ));
    }
    let other = fh.replace("0.25", "0.26");
    assert!(matches!(
        run(&Finnhub, &other, &mut dedup)[0],
        Outcome::Trade(_)
    ));
}

#[test]
fn one_bad_trade_in_a_batch_frame_does_not_sink_the_others() {
    let frame = r#"{"channel":"trade","type":"update","data":[
        {"symbol":"BTC/USD","side":"buy","price":67000.1,"qty":0.1,"ord_type":"limit","trade_id":1,"timestamp":"2025-11-22T00:00:00Z"},
        {"symbol":"BTC/USD","side":"buy","price":-3,"qty":0.1,"ord_type":"limit","trade_id":2,"timestamp":"2025-11-22T00:00:00Z"},
        {"symbol":"BTC/USD","side":"sell","price":67000.2,"qty":0.2,"ord_type":"limit","trade_id":3,"timestamp":"2025-11-22T00:00:00Z"}]}"#;
    let out = run(&Kraken, frame, &mut Dedup::default());
    assert!(matches!(out[0], Outcome::Trade(_)));
    assert!(matches!(
        out[1],
        Outcome::Rejected {
            trade_index: Some(1),
            reason: Reason::InvalidPrice,
            ..
        }
    ));
    let Outcome::Trade(t) = &out[2] else { panic!() };
    assert_eq!(
        (t.exchange.as_str(), t.price.to_string().as_str()),
        ("kraken", "67000.2")
    );
}

#[test]
fn simulator_venue_comes_from_the_message() {
    let frame = r#"{"type":"trade","venue":"sim-b","symbol":"BTC-USD","trade_id":"b-1","price":"100.5","size":"2","side":"buy","ts_us":1763769600000000,"seq":1}"#;
    let out = run(&Simulator, frame, &mut Dedup::default());
    let [Outcome::Trade(t)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(t.exchange, "sim-b");
}

/// Providers number trades per symbol: the same id on two pairs is two trades, and the same id
/// on one pair again is a duplicate.
#[test]
fn the_same_trade_id_on_two_symbols_is_two_trades() {
    let frame = |symbol: &str| {
        format!(
            r#"{{"channel":"trade","type":"update","data":[{{"symbol":"{symbol}","side":"buy","price":1.5,"qty":2,"ord_type":"limit","trade_id":77,"timestamp":"2025-11-22T00:00:00Z"}}]}}"#
        )
    };
    let mut dedup = Dedup::default();
    assert!(matches!(
        run(&Kraken, &frame("BTC/USD"), &mut dedup)[0],
        Outcome::Trade(_)
    ));
    assert!(matches!(
        run(&Kraken, &frame("ETH/USD"), &mut dedup)[0],
        Outcome::Trade(_)
    ));
    assert!(matches!(
        run(&Kraken, &frame("ETH/USD"), &mut dedup)[0],
        Outcome::Duplicate { .. }
    ));
}
