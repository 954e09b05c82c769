//! The connector's origin URI for arbitrary request targets: an error, or a URI naming exactly
//! the configured origin — never another host or port. Input: the target, as sent by the edge.
#![no_main]

use burrow_tunnel::ingress::Service;
use burrow_tunnel::origin::origin_uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let Ok(service) = Service::parse("http://127.0.0.1:48001/base") else { return };
    if let Ok(uri) = origin_uri(&service, path, true) {
        assert_eq!(uri.authority().map(|a| a.as_str()), Some("127.0.0.1:48001"));
        assert_eq!(uri.scheme_str(), Some("http"));
    }
    if let Ok(uri) = origin_uri(&service, path, false) {
        assert!(uri.authority().is_none() && uri.path().starts_with('/'));
    }
});
