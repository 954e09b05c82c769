//! Test plugin for the body and response hooks (with the SDK):
//! - `on-request-body` refuses a body containing `forbidden` (403) and passes every other one on
//!   in upper case;
//! - `on-response-headers` sets `x-status-seen` (the origin's status) and turns a 404 into 410,
//!   and panics for a path containing `/trap-response`;
//! - `on-response-body` appends ` [inspected N bytes]` to the body;
//! - `on-log` keeps `STATUS BYTES completed|cut` of the last request of each path in the
//!   key-value store, which a request for `/last-log?path=PATH` gets back (from
//!   `on-request-headers`), and counts requests in its own metric `logged`.
//!
//! Bodies are read up to 1 KiB each way.

use burrow_plugin::{Action, BodyAction, HookSet, Hooks, LogEntry, Plugin, Request, ResponseHead, kv, metrics};

struct TestBody;

impl Plugin for TestBody {
    fn hooks() -> Hooks {
        Hooks {
            hooks: HookSet::REQUEST_BODY | HookSet::RESPONSE_HEADERS | HookSet::RESPONSE_BODY | HookSet::LOG,
            max_request_body: 1024,
            max_response_body: 1024,
        }
    }

    fn on_request_headers(req: &Request) -> Action {
        if req.path() == "/last-log" {
            let path = req.query_param("path").unwrap_or_default();
            let last = kv::get(&format!("log:{path}")).unwrap_or_default();
            return burrow_plugin::respond(200, &String::from_utf8_lossy(&last));
        }
        Action::Continue
    }

    fn on_request_body(_req: &Request, body: Vec<u8>) -> BodyAction {
        if body.windows(9).any(|w| w == b"forbidden") {
            return burrow_plugin::respond(403, "forbidden body").into();
        }
        BodyAction::Replace(body.to_ascii_uppercase())
    }

    fn on_response_headers(req: &Request, resp: &ResponseHead) -> Action {
        if req.path().contains("/trap-response") {
            panic!("this plugin traps in on-response-headers on purpose");
        }
        let status = resp.status();
        let _ = resp.set_header("x-status-seen", status.to_string().as_bytes());
        if status == 404 {
            let _ = resp.set_status(410);
        }
        Action::Continue
    }

    fn on_response_body(_req: &Request, _resp: &ResponseHead, mut body: Vec<u8>) -> BodyAction {
        let note = format!(" [inspected {} bytes]", body.len());
        body.extend_from_slice(note.as_bytes());
        BodyAction::Replace(body)
    }

    fn on_log(req: &Request, entry: LogEntry) {
        let how = if entry.completed { "completed" } else { "cut" };
        let line = format!("{} {} {how}", entry.status, entry.bytes_sent);
        let _ = kv::set(&format!("log:{}", req.path()), line.as_bytes(), 60_000);
        metrics::counter_add("logged", 1);
    }
}

burrow_plugin::export_plugin!(TestBody);
