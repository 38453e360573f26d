//! Any bytes, as a document of the raw-bytes path and as serde_json input: both must take the
//! same documents, and the raw path's output must mean what the `Value` path's does. The
//! oracle is the one `tests/grammar.rs` runs in the test suite, bounded.
#![no_main]

#[path = "../../tests/differential/mod.rs"]
mod differential;

use std::sync::LazyLock;

use differential::Oracle;
use enrich::Depth;
use libfuzzer_sys::fuzz_target;

static ORACLE: LazyLock<Oracle> = LazyLock::new(Oracle::new);

fuzz_target!(|data: &[u8]| {
    // The first byte picks how deep references are looked for; the rest is the document.
    let Some((&mode, doc)) = data.split_first() else {
        return;
    };
    let depth = if mode & 1 == 0 {
        Depth::TopLevel
    } else {
        Depth::Deep
    };
    ORACLE.check(doc, depth);
});
