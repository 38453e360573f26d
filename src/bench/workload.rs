//! The generated workload: users and feed pages from a seed, popularity following Zipf.

use serde::Serialize;
use serde_json::json;

use crate::error::Result;
use crate::store::{ImportUser, SharedStore};
use crate::user::{NewUser, Timestamp};

/// A small, fast, deterministic generator (SplitMix64): the same seed gives the same workload
/// on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws ranks 0..n with probability proportional to 1 / (rank + 1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A Zipf distribution over `n` ranks with exponent `s` (0 is uniform).
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf }
    }

    /// A rank.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let x = rng.next_f64();
        self.cdf.partition_point(|&p| p < x).min(self.cdf.len() - 1)
    }
}

/// What to generate and how to run it.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Users in the store.
    pub users: usize,
    /// Activities in all.
    pub activities: usize,
    /// Zipf exponent of actor popularity.
    pub zipf: f64,
    /// Activities per page.
    pub page: usize,
    /// Pages enriched at once.
    pub concurrency: usize,
    /// The seed.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            users: 10_000,
            activities: 100_000,
            zipf: 1.0,
            page: 25,
            concurrency: 8,
            seed: 42,
        }
    }
}

/// The share of references that name users that were never created.
const MISSING_SHARE: f64 = 0.02;

impl Workload {
    /// The users, `u0`…, each with a little data.
    pub fn user_lines(&self) -> Vec<ImportUser> {
        let at = Timestamp::parse("2021-04-13T22:53:19.670051Z").expect("a valid timestamp");
        (0..self.users)
            .map(|i| {
                let data = json!({
                    "name": format!("User {i}"),
                    "avatar": format!("https://cdn.example.com/avatars/{i}.png"),
                    "followers": i * 7 % 1000,
                });
                let user =
                    NewUser::new(&format!("u{i}"), Some(data)).expect("generated users are valid");
                ImportUser::new(user, Some(at), Some(at)).expect("timestamps in order")
            })
            .collect()
    }

    /// The activities, as NDJSON lines: actor from the Zipf distribution, object and target
    /// uniform, a few references to users that do not exist.
    pub fn activity_lines(&self) -> Vec<String> {
        let mut rng = Rng::new(self.seed);
        let zipf = Zipf::new(self.users.max(1), self.zipf);
        let pick = |rng: &mut Rng, popular: bool| {
            if rng.next_f64() < MISSING_SHARE {
                format!("SU:missing{}", rng.next_u64() % 1000)
            } else if popular {
                format!("SU:u{}", zipf.sample(rng))
            } else {
                format!("SU:u{}", rng.next_u64() % self.users.max(1) as u64)
            }
        };
        (0..self.activities)
            .map(|i| {
                let actor = pick(&mut rng, true);
                let object = pick(&mut rng, false);
                let target = pick(&mut rng, true);
                json!({
                    "id": format!("a{i}"),
                    "actor": actor,
                    "verb": "post",
                    "object": object,
                    "target": target,
                    "foreign_id": format!("post:{i}"),
                    "time": "2021-05-14T14:51:13.767221",
                })
                .to_string()
            })
            .collect()
    }

    /// The activity lines cut into pages.
    pub fn pages(&self) -> Vec<Vec<String>> {
        self.activity_lines()
            .chunks(self.page.max(1))
            .map(|c| c.to_vec())
            .collect()
    }
}

/// Writes the workload's users into `store`.
pub async fn load_users(store: &SharedStore, workload: &Workload) -> Result<()> {
    for batch in workload.user_lines().chunks(crate::batch::IMPORT_BATCH) {
        store.import(batch, true).await?;
    }
    Ok(())
}
