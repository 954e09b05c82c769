//! Test plugin: loops forever on paths containing `/spin`. Proves the deadline stops it.

use burrow_plugin::{Action, Plugin, Request};

struct Spin;

impl Plugin for Spin {
    fn on_request_headers(req: &Request) -> Action {
        if req.path().contains("/spin") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Action::Continue
    }
}

burrow_plugin::export_plugin!(Spin);
