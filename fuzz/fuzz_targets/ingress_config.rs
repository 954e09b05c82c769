//! A connector config file (cloudflared-shaped YAML with ingress rules) from arbitrary text, then
//! rule matching for hosts and paths taken from the same input: errors, never panics.
#![no_main]

use burrow_connector::config_file::ConfigFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (config, probe) = text.split_once("\n---probe\n").unwrap_or((text, "app.example.com /x"));
    let Ok(file) = ConfigFile::parse(config, "fuzz") else {
        return;
    };
    let Ok(ingress) = file.ingress() else { return };
    for line in probe.lines().take(8) {
        let (host, path) = line.split_once(' ').unwrap_or((line, "/"));
        let rule = ingress.find(host, path);
        let _ = rule.describe();
    }
});
