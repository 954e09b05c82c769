//! The edge's tunnels file (tunnels, routes, pools) from arbitrary text: it loads and builds a
//! route table, or reports problems, never panics; lookups in a built table never panic.
#![no_main]

use burrow_edge::control::tunnels_file::TunnelsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = serde_yaml_ng::from_str::<TunnelsFile>(text) else {
        return;
    };
    let Ok(table) = file.to_table() else { return };
    for host in text.split_whitespace().take(16) {
        let _ = table.lookup(host);
    }
});
