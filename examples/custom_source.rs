//! An enricher over a service's own database, through [`UserSource`]: the service keeps users
//! as rows of its own (here a table in memory standing in for SQL), and the enricher puts its
//! L1, the coalescing of loads in flight and the caching of misses around one batched query.
//!
//! ```sh
//! cargo run --example custom_source
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use enrich::{
    Depth, Enricher, Error, ErrorKind, Timestamp, UserId, UserJson, UserSource, async_trait,
};
use serde_json::{Value, json};

/// A row of the service's `accounts` table.
#[derive(Debug, Clone)]
struct Account {
    profile: Value,
    created: SystemTime,
    updated: SystemTime,
}

/// The service's database: `SELECT id, profile, created, updated FROM accounts`.
#[derive(Debug, Default)]
struct Accounts {
    table: RwLock<HashMap<String, Account>>,
}

impl Account {
    /// The row as the user an enrichment embeds.
    fn to_user(&self, id: &UserId) -> enrich::Result<UserJson> {
        let created = Timestamp::try_from(self.created)?;
        let updated = Timestamp::try_from(self.updated)?;
        UserJson::new(id, self.profile.clone(), created, updated)
    }
}

impl Accounts {
    /// `INSERT … ON CONFLICT (id) DO UPDATE`, returning the row.
    fn upsert(&self, id: &str, profile: Value) -> Account {
        let now = SystemTime::now();
        let mut table = self.table.write().unwrap();
        let created = table.get(id).map_or(now, |row| row.created);
        let row = Account {
            profile,
            created,
            updated: now,
        };
        table.insert(id.to_string(), row.clone());
        row
    }
}

#[async_trait]
impl UserSource for Accounts {
    /// One query for the whole batch (`WHERE id = ANY($1)`), one answer per id, in order.
    async fn get_many(&self, ids: &[UserId]) -> enrich::Result<Vec<Option<UserJson>>> {
        // A database that cannot be reached is a fault, never "no such user".
        let table = self
            .table
            .read()
            .map_err(|_| Error::new(ErrorKind::Unavailable, "accounts: the table is poisoned"))?;
        ids.iter()
            .map(|id| {
                table
                    .get(id.as_str())
                    .map(|row| row.to_user(id))
                    .transpose()
            })
            .collect()
    }

    fn describe(&self) -> String {
        "accounts table".to_string()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> enrich::Result<()> {
    let accounts = Arc::new(Accounts::default());
    accounts.upsert("alice", json!({"name": "Alice"}));
    accounts.upsert("bob", json!({"name": "Bob"}));

    // Read-only: the service writes its rows itself. At most 500 ids per query.
    let enricher = Enricher::source_builder(accounts.clone())
        .max_batch_size(500)
        .build();

    let mut page = vec![
        json!({"actor": "SU:alice", "verb": "post", "object": "SO:post:1"}),
        json!({"actor": "SU:bob", "verb": "like", "object": "SU:alice"}),
        json!({"actor": "SU:carol", "verb": "follow", "object": "SU:bob"}),
    ];
    let stats = enricher.enrich_values(&mut page, Depth::TopLevel).await?;
    println!("{}", serde_json::to_string_pretty(&page).unwrap());
    println!("{stats:?}");

    // A write by the service: the enricher must be told (no announcements from this source).
    accounts.upsert("alice", json!({"name": "Alice Liddell"}));
    enricher.invalidate("alice");
    let alice = enricher.get(&UserId::parse("alice")?).await?;
    println!("after the write: {}", alice.expect("alice exists"));

    // Or handed what was written, so that the next read needs no query at all.
    let carol = UserId::parse("carol")?;
    let row = accounts.upsert("carol", json!({"name": "Carol"}));
    enricher.prime(row.to_user(&carol)?);
    let found = enricher.get_many(&[carol, UserId::parse("dave")?]).await?;
    println!(
        "carol (primed): {}; dave: {:?}",
        found[0].as_ref().expect("carol exists"),
        found[1]
    );
    Ok(())
}
