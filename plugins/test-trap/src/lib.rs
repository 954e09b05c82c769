//! Test plugin, hostile on purpose:
//! - a path containing `/trap` panics (a guest trap);
//! - a path containing `/grow` fills memory 1 MiB at a time towards 64 MiB, past the edge's cap;
//! - every call checks a static that it then marks: a value left by an earlier request would
//!   mean instances share memory, and the request is refused with 409.
//!
//! Otherwise it continues, so it doubles as the no-op plugin of the benchmarks.

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use burrow::plugin::types::{HookSet, Response};

static MARK: AtomicU32 = AtomicU32::new(0);

struct Trap;

impl Guest for Trap {
    fn hooks() -> Hooks {
        Hooks {
            hooks: HookSet::empty(),
            max_request_body: 0,
            max_response_body: 0,
        }
    }

    fn on_request_body(_req: &Request, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue
    }

    fn on_response_headers(_req: &Request, _resp: &ResponseHead) -> Action {
        Action::Continue
    }

    fn on_response_body(_req: &Request, _resp: &ResponseHead, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue
    }

    fn on_log(_req: &Request, _entry: LogEntry) {}

    fn on_request_headers(req: &Request) -> Action {
        if MARK.swap(0xB0B, Ordering::Relaxed) != 0 {
            return Action::Respond(Response {
                status: 409,
                headers: Vec::new(),
                body: b"saw memory of an earlier request\n".to_vec(),
            });
        }
        let path = req.path();
        if path.contains("/trap") {
            panic!("this plugin traps on purpose");
        }
        if path.contains("/grow") {
            // 1 MiB at a time, every page written, up to 64 MiB: the cap stops it at 16 MiB
            // with that memory really in use.
            let mut hoard = Vec::new();
            for _ in 0..64 {
                hoard.push(vec![7u8; 1 << 20]);
            }
            std::hint::black_box(&hoard);
        }
        Action::Continue
    }
}

export!(Trap);
