//! NDJSON in, enriched NDJSON out, on the raw-bytes path: each line is pushed into a
//! [`RawPage`] as bytes (checked, compacted, its references found in one pass), a page of
//! lines is resolved with one store call at most, and each line is written back with the
//! users' stored bytes spliced in. No line is ever parsed into a `Value`.
//!
//! ```sh
//! printf '%s\n' '{"actor":"SU:alice","verb":"post"}' '{"actor":"SU:nobody"}' \
//!     | cargo run --example raw_page                        # users in memory (alice)
//! cargo run --example raw_page -- redis://127.0.0.1:6379 < activities.ndjson > enriched.ndjson
//! ```
//!
//! A line that is not a JSON object is reported on standard error and left out.

use std::io::{BufRead, Write};

use enrich::{Depth, Enricher, NewUser, RawPage, StoreOptions, store};

/// Lines resolved together: one store call per page.
const PAGE_LINES: usize = 1_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory:".to_string());
    let enricher = Enricher::new(store::open(&url, &StoreOptions::new()).await?);
    if url == "memory:" {
        let alice = NewUser::new("alice", Some(serde_json::json!({"name": "Alice"})))?;
        enricher.users().add(&alice, true).await?;
    }

    let mut page = RawPage::new(Depth::TopLevel);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line_no = 0;
    let mut lines = std::io::stdin().lock().lines();
    loop {
        // Fill a page; a page is reused, buffers and all, from one to the next.
        page.clear();
        let mut ended = true;
        for line in lines.by_ref() {
            line_no += 1;
            if let Err(err) = page.push(line?.as_bytes()) {
                eprintln!("line {line_no}: {err}");
            }
            if page.len() == PAGE_LINES {
                ended = false;
                break;
            }
        }
        let enriched = enricher.enrich_page(&page).await?;
        let mut buf = Vec::new();
        for doc in 0..page.len() {
            enriched.write(doc, &mut buf);
            buf.push(b'\n');
        }
        out.write_all(&buf)?;
        if ended {
            break;
        }
    }
    out.flush()?;
    Ok(())
}
