//! What the fuzz targets (`fuzz/`, run by `scripts/fuzz`) check for each provider parser, here so
//! that the committed inputs (seed corpus, and any input that once crashed) also run as a unit
//! test on stable Rust.

use tickflow_shared::domain::parse_decimal;

use tickflow_providers::{Frame, Provider};

/// Parses `data` as `provider`'s frame: it must answer (trades, a named non-trade kind, or an
/// error with its detail) without panicking, and each trade's price and size text must go
/// through the decimal parsing the normalizer applies next without panicking either.
pub fn check_parse(provider: &dyn Provider, data: &[u8]) {
    match provider.parse(data) {
        Ok(Frame::Trades(trades)) => {
            for t in trades {
                let _ = parse_decimal(&t.price);
                let _ = parse_decimal(&t.size);
            }
        }
        Ok(Frame::NonTrade(kind)) => assert!(!kind.is_empty(), "a non-trade frame without a kind"),
        Err(e) => assert!(!e.detail.is_empty(), "an error without a detail: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed fuzz input (`fuzz/corpus/parse_<provider>/*`) passes the check.
    #[test]
    fn committed_fuzz_inputs_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let mut checked = 0;
        for &provider in tickflow_providers::ALL {
            let dir = root.join(format!("parse_{}", provider.id()));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let data = std::fs::read(entry.unwrap().path()).unwrap();
                check_parse(provider, &data);
                checked += 1;
            }
        }
        assert!(
            checked >= 20,
            "only {checked} committed inputs under {root:?}"
        );
    }
}
