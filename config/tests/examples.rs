#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every file in `config/examples/` must parse and validate, so the
//! examples in the docs cannot drift from the code.

use faxgate_config::{ApplianceConfig, RelayClientConfig, RelayServerConfig};
use std::path::Path;

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("appliance") {
            ApplianceConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("relay-client") {
            RelayClientConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("relay") {
            RelayServerConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            panic!(
                "{name}: no parser is known for this example; name it appliance*.toml, relay*.toml or relay-client*.toml"
            );
        }
        seen += 1;
    }
    assert!(seen >= 3, "expected at least two examples, found {seen}");
}
