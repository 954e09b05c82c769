//! The edge's checks of a public request head (Host / :authority, framing headers, target
//! length, method, asterisk-form) on arbitrary heads: a clean verdict, never a panic. Input: first line is the target,
//! then `name: value` lines.
#![no_main]

use burrow_edge::dataplane::request_checks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let Ok(uri) = http::Uri::try_from(target) else { return };
    let first = data.first().copied().unwrap_or_default();
    let method = [http::Method::GET, http::Method::OPTIONS, http::Method::CONNECT, http::Method::POST]
        [usize::from(first >> 1) % 4]
        .clone();
    let mut builder = http::Request::builder().uri(uri).method(method);
    if first & 1 == 1 {
        builder = builder.version(http::Version::HTTP_2);
    }
    for line in lines.take(64) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value)) {
            builder = builder.header(name, value);
        }
    }
    let Ok(request) = builder.body(()) else { return };
    if let Ok(host) = request_checks::check(&request) {
        assert!(!host.is_empty());
        assert!(request.method() != http::Method::CONNECT);
        assert!(!request_checks::is_asterisk(&request) || request.method() == http::Method::OPTIONS);
    }
});
