//! Test plugin: traps on every request whose path contains `/trap` (a guest panic), continues
//! otherwise. Proves a trap fails one request, not the edge.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

struct Trap;

impl Guest for Trap {
    fn on_request_headers(req: &Request) -> Action {
        if req.path().contains("/trap") {
            panic!("this plugin traps on purpose");
        }
        Action::Continue
    }
}

export!(Trap);
